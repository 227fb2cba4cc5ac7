"""The client side of our channels (recsys/grpc_server.py): the retry policy and its
throttle, keepalive that agrees with the servers, outlier ejection across replicas, and the
metadata limit, each against tiny real servers on loopback built by `build_server` (so they
carry the production server options and health service)."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import grpc
import pytest

from recsys import grpc_server as gs
from recsys.grpc_server import Served, build_server, client_channel_options

pytestmark = pytest.mark.timeout(120)

C = grpc.StatusCode
RETRIEVE = "/recsys.v1.CandidateService/Retrieve"
RETRIEVE_BATCH = "/recsys.v1.CandidateService/RetrieveBatch"
NOT_IN_CONFIG = "/recsys.v1.CandidateService/NotIdempotent"


class Replica:
    """A candidate replica whose every method answers as `behave(attempt_number)` says:
    None = OK (the reply names the replica), a StatusCode = abort with it."""

    def __init__(self, name: str, behave: Callable[[int], C | None]) -> None:
        self.name = name
        self.behave = behave
        self.attempts = 0
        self.lock = threading.Lock()

    def handle(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self.lock:
            self.attempts += 1
            n = self.attempts
        code = self.behave(n)
        if code is not None:
            context.abort(code, f"{self.name}: attempt {n} refused with {code.name}")
        return self.name.encode()

    def register(self, server: grpc.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(self.handle)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "recsys.v1.CandidateService",
            {"Retrieve": handler, "RetrieveBatch": handler, "NotIdempotent": handler},
        )])


@contextmanager
def serving(*replicas: Replica) -> Iterator[list[Served]]:
    servers = []
    try:
        for r in replicas:
            s = build_server("127.0.0.1", 0, 2, [r.register], ["recsys.v1.CandidateService"])
            s.start()
            s.set_serving(True)
            servers.append(s)
        yield servers
    finally:
        for s in servers:
            s.server.stop(0).wait(10)


@contextmanager
def channel_to(*servers: Served) -> Iterator[grpc.Channel]:
    """A fresh channel per test: the retry throttle's tokens are per channel."""
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
    ch = grpc.insecure_channel(target, options=client_channel_options())
    try:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch
    finally:
        ch.close()


def call(ch: grpc.Channel, method: str = RETRIEVE, metadata=()) -> bytes:
    return ch.unary_unary(method)(b"", timeout=30, metadata=metadata)


# ---- retries ------------------------------------------------------------------------
def test_the_service_config_retries_only_idempotent_methods_on_unavailable_only():
    config = json.loads(gs.CLIENT_SERVICE_CONFIG)
    (method_config,) = config["methodConfig"]
    named = {f"/{n['service']}/{n['method']}" for n in method_config["name"]}
    assert named == {RETRIEVE, RETRIEVE_BATCH, "/recsys.v1.RankingService/Recommend",
                     "/recsys.v1.RankingService/LogEvents"}
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"], (
        "RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED retried would amplify an overload")
    assert 2 <= method_config["retryPolicy"]["maxAttempts"] <= 5  # gRPC caps attempts at 5
    assert set(config["retryThrottling"]) == {"maxTokens", "tokenRatio"}


@pytest.mark.parametrize("method", [RETRIEVE, RETRIEVE_BATCH])
def test_a_replica_failing_every_other_attempt_with_unavailable_is_retried_transparently(method):
    flaky = Replica("flaky", lambda n: C.UNAVAILABLE if n % 2 == 1 else None)
    with serving(flaky) as (server,), channel_to(server) as ch:
        answers = [call(ch, method) for _ in range(10)]
    assert answers == [b"flaky"] * 10, "every call must succeed on its retry"
    assert flaky.attempts == 20, f"each call is one failed attempt plus one retry, got {flaky.attempts} attempts"


@pytest.mark.parametrize("code", [C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED, C.DEADLINE_EXCEEDED, C.INTERNAL])
def test_a_non_retryable_code_is_not_retried(code):
    refusing = Replica("refusing", lambda n: code)
    with serving(refusing) as (server,), channel_to(server) as ch:
        with pytest.raises(grpc.RpcError) as err:
            call(ch)
    assert err.value.code() == code
    assert refusing.attempts == 1, f"{code.name} was tried {refusing.attempts} times; it must not be retried"


def test_a_method_without_a_retry_policy_is_not_retried():
    down = Replica("down", lambda n: C.UNAVAILABLE)
    with serving(down) as (server,), channel_to(server) as ch:
        with pytest.raises(grpc.RpcError) as err:
            call(ch, NOT_IN_CONFIG)
    assert err.value.code() == C.UNAVAILABLE and down.attempts == 1


def test_retry_throttling_stops_retries_against_a_replica_that_always_fails():
    calls = 30
    down = Replica("down", lambda n: C.UNAVAILABLE)
    with serving(down) as (server,), channel_to(server) as ch:
        codes = []
        for _ in range(calls):
            with pytest.raises(grpc.RpcError) as err:
                call(ch)
            codes.append(err.value.code())
    assert set(codes) == {C.UNAVAILABLE}
    max_attempts = gs.RETRY_POLICY["maxAttempts"]
    assert down.attempts > calls, "the first calls must have been retried"
    # unthrottled: calls x maxAttempts; the throttle allows retries only until the tokens
    # fall to maxTokens/2, i.e. about maxTokens/2 failed attempts in all
    budget = calls + gs.RETRY_THROTTLING["maxTokens"] // 2 + max_attempts
    assert down.attempts <= budget, (
        f"{down.attempts} attempts for {calls} calls: the throttle allows at most {budget} "
        f"(without it: {calls * max_attempts})")


# ---- keepalive ----------------------------------------------------------------------
def test_clients_never_ping_faster_than_servers_allow():
    client = dict(gs.client_keepalive_options())
    server = dict(gs.server_options())
    assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"], (
        f"client pings every {client['grpc.keepalive_time_ms']} ms, server allows one per "
        f"{server['grpc.http2.min_ping_interval_without_data_ms']} ms: GOAWAY too_many_pings")
    # pings without calls: sent by the client only if the server accepts them
    assert client["grpc.keepalive_permit_without_calls"] <= server["grpc.keepalive_permit_without_calls"]
    assert client["grpc.keepalive_timeout_ms"] < client["grpc.keepalive_time_ms"]
    assert server["grpc.http2.max_ping_strikes"] >= 1
    channel = dict(client_channel_options())
    assert all(channel[k] == v for k, v in client.items()), "client_channel_options must carry the keepalive"


@pytest.mark.parametrize("client_ms, server_min_ms, idle_s, same_connection", [
    (1000, 500, 3.5, True),  # agreeing, as ours: the idle connection survives
    (1000, 5000, 5.0, False),  # the client pings too fast: GOAWAY too_many_pings, a new connection
], ids=["agreeing", "client-too-fast"])
def test_an_idle_connection_longer_than_the_keepalive_time_stays_usable_on_the_same_connection(
        client_ms, server_min_ms, idle_s, same_connection):
    """Scaled down (gRPC's client sends keepalive pings at most once a second whatever the
    setting): idle for over 3 keepalive times, then call again. With the settings agreeing
    the call goes over the same TCP connection (the server sees the same client port); the
    second case shows the check catches a client pinging faster than the server allows
    (after MAX_PING_STRIKES bad pings the server sends GOAWAY and the client reconnects)."""
    peers: list[str] = []

    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        peers.append(context.peer())
        return b"ok"

    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(2), options=gs.server_keepalive_options(server_min_ms))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "t.Idle", {"Call": grpc.unary_unary_rpc_method_handler(handler)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=gs.client_keepalive_options(client_ms)) as ch:
            stub = ch.unary_unary("/t.Idle/Call")
            stub(b"", timeout=30)
            time.sleep(idle_s)
            assert stub(b"", timeout=30) == b"ok", "the call after the idle time must succeed either way"
    finally:
        server.stop(0).wait(10)
    assert len(peers) == 2
    assert (peers[0] == peers[1]) == same_connection, (
        f"client pings every {client_ms} ms, server allows one per {server_min_ms} ms: peers {peers}")


# ---- outlier ejection ---------------------------------------------------------------
def test_a_replica_that_keeps_failing_is_ejected_and_traffic_moves_to_the_healthy_one():
    """Two replicas, both SERVING on health (so health checking cannot help), one failing
    every call with UNAVAILABLE. Until the first detection interval has passed, a call whose
    attempt lands on the sick replica is retried on the good one while the retry throttle
    allows (round_robin sends every call's first attempt to the sick one here, so the
    throttle may run dry and a few calls fail); once outlier detection has ejected it, the
    sick replica gets no attempts at all and every call succeeds."""
    good = Replica("good", lambda n: None)
    sick = Replica("sick", lambda n: C.UNAVAILABLE)
    interval_s = float(gs.OUTLIER_DETECTION["interval"].rstrip("s"))
    with serving(good, sick) as servers, channel_to(*servers) as ch:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3 * interval_s:
            try:
                call(ch)
            except grpc.RpcError as e:
                assert e.code() == C.UNAVAILABLE, e
            time.sleep(0.05)
        sick_before, good_before = sick.attempts, good.attempts
        later = [call(ch) for _ in range(20)]
        sick_after, good_after = sick.attempts, good.attempts
    assert sick_before >= gs.OUTLIER_DETECTION["failurePercentageEjection"]["requestVolume"], (
        "round_robin must have tried the sick replica at first")
    assert later == [b"good"] * 20, "after the ejection every call must succeed"
    assert sick_after == sick_before, (
        f"the sick replica got {sick_after - sick_before} of 20 attempts after its ejection; expected 0")
    assert good_after - good_before == 20


# ---- metadata limit -----------------------------------------------------------------
def test_metadata_over_the_limit_is_refused_with_resource_exhausted_before_the_handler():
    ok = Replica("ok", lambda n: None)
    with serving(ok) as (server,), channel_to(server) as ch:
        assert call(ch, metadata=(("x-small", "a" * 1000),)) == b"ok"
        many = tuple((f"x-big-{i}", "a" * 1024) for i in range(gs.MAX_METADATA_BYTES // 1024 + 1))
        for metadata in (many, (("x-big", "a" * (gs.MAX_METADATA_BYTES + 1)),)):  # many values, or one
            with pytest.raises(grpc.RpcError) as err:
                call(ch, metadata=metadata)
            assert err.value.code() == C.RESOURCE_EXHAUSTED, err.value
            assert "metadata size exceeds" in err.value.details()
    assert ok.attempts == 1, "refused before the handler"
