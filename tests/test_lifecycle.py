"""Process lifecycle shared by both services (recsys/grpc_server.py, recsys/health.py):
health Check and Watch, a drain that ends Watch streams instead of waiting out the grace
period for them, and an exit that cannot hang on a handler thread that never returns."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.grpc_server import build_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


@pytest.fixture
def served():
    s = build_server("127.0.0.1", 0, 4, [], ["test.v1.Thing"])
    s.start()
    yield s
    s.server.stop(0).wait(5)


def test_check_knows_the_services_and_names_an_unknown_one(served):
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        assert stub.Check(health_pb2.HealthCheckRequest(service="test.v1.Thing"), timeout=5).status == NOT_SERVING
        served.set_serving(True)
        assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.value.details()


def test_watch_follows_changes_and_the_drain_ends_it_well_inside_the_grace_period(served):
    grace_s = 30.0
    seen: list[int] = []
    ended: list[grpc.StatusCode] = []
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        unknown = stub.Watch(health_pb2.HealthCheckRequest(service="later.v1.Svc"), timeout=60)

        def read() -> None:
            try:
                for msg in stream:
                    seen.append(msg.status)
                ended.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                ended.append(e.code())

        reader = threading.Thread(target=read)
        reader.start()
        assert next(unknown).status == SERVICE_UNKNOWN
        for _ in range(200):  # the first answer (NOT_SERVING) before anything changes
            if seen:
                break
            time.sleep(0.05)
        served.set_serving(True)
        served.health.set("later.v1.Svc", SERVING)
        assert next(unknown).status == SERVING
        for _ in range(100):
            if served.health.watchers == 2 and seen[-1:] == [SERVING]:
                break
            time.sleep(0.05)
        assert seen == [NOT_SERVING, SERVING] and served.health.watchers == 2
        t0 = time.monotonic()
        assert served.stop(grace_s)
        took = time.monotonic() - t0
        reader.join(10)
        assert next(unknown).status == NOT_SERVING
    assert took < grace_s / 3, f"the drain waited {took:.1f}s on health watchers"
    assert seen == [NOT_SERVING, SERVING, NOT_SERVING] and ended == [grpc.StatusCode.OK]
    assert served.health.watchers == 0
    served.health.set("", SERVING)
    assert served.health.status("") == NOT_SERVING, "NOT_SERVING for good once draining"


STUCK_SERVER = textwrap.dedent("""
    import sys, threading
    import grpc
    from recsys import grpc_server

    grpc_server.EXIT_WATCHDOG_S = 1.0
    forever = threading.Event()

    def stuck(request, context):  # a handler that never returns, whatever happens to its call
        forever.wait()
        return b""

    handler = grpc.method_handlers_generic_handler(
        "test.v1.Stuck", {"Call": grpc.unary_unary_rpc_method_handler(stuck)})
    served = grpc_server.build_server("127.0.0.1", 0, 2, [lambda s: s.add_generic_rpc_handlers((handler,))],
                                      ["test.v1.Stuck"])
    grpc_server.run_until_signal(served, grace_s=0.5, port_file=sys.argv[1])
""")


def test_sigterm_exits_even_when_a_handler_thread_never_returns(tmp_path: Path):
    port_file = tmp_path / "port"
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", STUCK_SERVER, str(port_file)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.05)
        with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as ch:
            call = ch.unary_unary("/test.v1.Stuck/Call")
            with pytest.raises(grpc.RpcError) as err:
                call(b"", timeout=0.5)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)  # grace 0.5 s + the 1 s watchdog; without the watchdog: never
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert code == 0, text
    assert "exit stuck" in text and "rpc" in text, text


def test_open_health_watch_streams_do_not_starve_the_workers():
    """Each client channel with health checking holds a Watch stream, and a sync server
    parks a thread on each: with one worker and three watchers, unary calls still answer."""
    s = build_server("127.0.0.1", 0, 1, [], ["test.v1.Thing"])
    s.start()
    s.set_serving(True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{s.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            streams = [stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60) for _ in range(3)]
            assert all(next(w).status == SERVING for w in streams)
            assert s.health.watchers == 3
            for _ in range(5):
                assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == SERVING
            for w in streams:
                w.cancel()
    finally:
        s.server.stop(0).wait(5)
