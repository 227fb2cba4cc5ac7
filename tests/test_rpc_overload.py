"""Load shedding (recsys/grpc_server.py, build_server's maximum_concurrent_rpcs): past the
limit a server refuses at once with RESOURCE_EXHAUSTED instead of queueing, and serves
again as soon as the calls it holds finish. A real server on loopback with one worker."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from recsys.grpc_server import WATCH_THREADS, build_server

pytestmark = pytest.mark.timeout(120)

C = grpc.StatusCode
WORKERS = 1
LIMIT = WORKERS * 16 + WATCH_THREADS  # build_server: maximum_concurrent_rpcs


def test_a_burst_beyond_the_concurrency_limit_is_refused_at_once_with_resource_exhausted():
    release = threading.Event()
    entered = []
    lock = threading.Lock()

    def hold(request: bytes, context: grpc.ServicerContext) -> bytes:
        with lock:
            entered.append(1)
        release.wait(60)
        return b"ok"

    def register(server: grpc.Server) -> None:
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "test.v1.Slow", {"Hold": grpc.unary_unary_rpc_method_handler(hold)})])

    served = build_server("127.0.0.1", 0, WORKERS, [register], ["test.v1.Slow"])
    served.start()
    served.set_serving(True)
    burst = LIMIT + 6
    try:
        # a plain channel: ours (client_channel_options) keeps a health Watch open, and that
        # stream holds one of the LIMIT slots too
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as ch:
            stub = ch.unary_unary("/test.v1.Slow/Hold")
            calls = [stub.future(b"", timeout=60) for _ in range(burst)]
            # The refusals come back while every admitted call is still held (`release`
            # unset): the server did not queue them behind the held ones.
            deadline = time.monotonic() + 30
            while sum(c.done() for c in calls) < burst - LIMIT and time.monotonic() < deadline:
                time.sleep(0.02)
            refused = [c for c in calls if c.done()]
            assert len(refused) == burst - LIMIT, f"{len(refused)} of {burst} answered while {LIMIT} are held"
            assert all(c.code() == C.RESOURCE_EXHAUSTED for c in refused), [c.code() for c in refused]
            assert len(entered) <= WORKERS + WATCH_THREADS, "only the pool's threads run handlers"
            release.set()
            held = [c for c in calls if c not in refused]
            assert all(c.result(timeout=60) == b"ok" for c in held), "every admitted call completes"
            assert stub(b"", timeout=30) == b"ok", "the server takes calls again once under its limit"
    finally:
        release.set()
        served.server.stop(0).wait(10)
