"""recsys.metrics and recsys.logs: the interceptor on a real gRPC server with a private
registry, so every count is exact; the request id across a real hop; JSON log lines.

The same interceptor inside the real services (both tiers, scraped over HTTP, request id
carried ranking -> candidate) is checked in tests/test_cluster.py.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from concurrent import futures

import grpc
import pytest
from prometheus_client import CollectorRegistry

from recsys import logs
from recsys.cluster import free_port
from recsys.metrics import Metrics, ServerInterceptor, start_http
from recsys.v1 import candidate_pb2, candidate_pb2_grpc, ranking_pb2, ranking_pb2_grpc

pytestmark = pytest.mark.timeout(60)

RANKING = "recsys.v1.RankingService"


class FakeRanking(ranking_pb2_grpc.RankingServiceServicer):
    """user 'bad' -> INVALID_ARGUMENT, 'boom' -> an escaped exception (UNKNOWN), 'down' ->
    a degraded answer; records the request id each call ran under."""

    def __init__(self) -> None:
        self.seen_ids: list[str] = []

    def Recommend(self, request, context):
        self.seen_ids.append(logs.current_request_id())
        if request.user_id == "bad":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id: bad")
        if request.user_id == "boom":
            raise RuntimeError("escaped")
        if request.user_id == "down":
            return ranking_pb2.RecommendResponse(degraded=True, degraded_reason="UNAVAILABLE: connection refused")
        return ranking_pb2.RecommendResponse(cold_start=request.user_id.startswith("new"))

    def LogEvents(self, request, context):
        return ranking_pb2.LogEventsResponse(stored=len(request.events) - 1, duplicates=1)


class FakeCandidate(candidate_pb2_grpc.CandidateServiceServicer):
    def __init__(self) -> None:
        self.seen_ids: list[str] = []

    def Retrieve(self, request, context):
        self.seen_ids.append(logs.current_request_id())
        resp = candidate_pb2.RetrieveResponse()
        for i in range(5):
            c = resp.candidates.add(item_id=f"i{i}")
            c.sources.add(source="two_tower")
            if i < 2:
                c.sources.add(source="popular")
        return resp


def serve(add, servicer, metrics: Metrics, service: str):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         interceptors=[ServerInterceptor(service, "v-test", metrics)])
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def registry():
    reg = CollectorRegistry()
    return reg, Metrics(reg)


def value(reg: CollectorRegistry, name: str, **labels) -> float:
    return reg.get_sample_value(name, labels) or 0.0


def test_counts_codes_latency_and_response_facts(registry):
    reg, metrics = registry
    servicer = FakeRanking()
    server, address = serve(ranking_pb2_grpc.add_RankingServiceServicer_to_server, servicer, metrics, "ranking")
    try:
        with grpc.insecure_channel(address) as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            for user in ("u1", "u2", "new1", "down"):
                stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=5), timeout=5)
            for user, code in (("bad", grpc.StatusCode.INVALID_ARGUMENT), ("boom", grpc.StatusCode.UNKNOWN)):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=5), timeout=5)
                assert err.value.code() == code
            events = [ranking_pb2.Event(idempotency_key=f"k{i}") for i in range(3)]
            stub.LogEvents(ranking_pb2.LogEventsRequest(events=events), timeout=5)
    finally:
        server.stop(0)
    base = dict(grpc_service=RANKING, grpc_method="Recommend", grpc_type="unary")
    assert value(reg, "grpc_server_started_total", **base) == 6
    assert value(reg, "grpc_server_handled_total", **base, grpc_code="OK") == 4
    assert value(reg, "grpc_server_handled_total", **base, grpc_code="INVALID_ARGUMENT") == 1
    assert value(reg, "grpc_server_handled_total", **base, grpc_code="UNKNOWN") == 1
    assert value(reg, "grpc_server_handling_seconds_count", **base) == 6
    assert value(reg, "recsys_fallback_total", reason="UNAVAILABLE") == 1
    assert value(reg, "recsys_cold_start_total") == 1
    assert value(reg, "recsys_event_write_seconds_count") == 1
    assert value(reg, "recsys_events_total", outcome="stored") == 2
    assert value(reg, "recsys_events_total", outcome="duplicate") == 1
    assert value(reg, "recsys_bundle_info", service="ranking", version="v-test") == 1


def test_request_id_generated_when_absent_and_carried_across_a_hop(registry):
    """ranking-like front (with the outgoing metadata helper) -> candidate-like back."""
    _, metrics = registry
    back = FakeCandidate()
    back_server, back_address = serve(candidate_pb2_grpc.add_CandidateServiceServicer_to_server, back, metrics,
                                      "candidate")
    back_channel = grpc.insecure_channel(back_address)
    back_stub = candidate_pb2_grpc.CandidateServiceStub(back_channel)

    class Front(FakeRanking):
        def Recommend(self, request, context):
            super().Recommend(request, context)
            back_stub.Retrieve(candidate_pb2.RetrieveRequest(num_candidates=5), timeout=5,
                               metadata=logs.outgoing_metadata())
            return ranking_pb2.RecommendResponse()

    front = Front()
    front_server, front_address = serve(ranking_pb2_grpc.add_RankingServiceServicer_to_server, front, metrics,
                                        "ranking")
    try:
        with grpc.insecure_channel(front_address) as ch:
            stub = ranking_pb2_grpc.RankingServiceStub(ch)
            stub.Recommend(ranking_pb2.RecommendRequest(user_id="u", k=1), timeout=5,
                           metadata=(("x-request-id", "trace-123"),))
            stub.Recommend(ranking_pb2.RecommendRequest(user_id="u", k=1), timeout=5)
            stub.Recommend(ranking_pb2.RecommendRequest(user_id="u", k=1), timeout=5,
                           metadata=(("x-request-id", "has space"),))  # not a token: replaced
    finally:
        front_server.stop(0)
        back_channel.close()
        back_server.stop(0)
    assert front.seen_ids[0] == "trace-123"
    assert len(front.seen_ids[1]) == 32 and front.seen_ids[1] != front.seen_ids[2] != "has space"
    assert back.seen_ids == front.seen_ids, "candidate sees the id ranking served under"
    assert logs.current_request_id() == "", "the id is unbound after the call"
    assert metrics.registry.get_sample_value("recsys_candidates_per_request_sum", {"source": "two_tower"}) == 15
    assert metrics.registry.get_sample_value("recsys_candidates_per_request_sum", {"source": "popular"}) == 6


def test_json_log_lines_carry_the_request_id():
    formatter = logs.JsonFormatter()
    record = logging.LogRecord("recsys.access", logging.DEBUG, __file__, 1, "rpc %s", ("x",), None)
    token = logs.bind_request_id("rid-9")
    try:
        logs.RequestIdFilter().filter(record)
    finally:
        logs.reset_request_id(token)
    record.grpc_code = "OK"
    line = json.loads(formatter.format(record))
    assert line["request_id"] == "rid-9" and line["msg"] == "rpc x" and line["grpc_code"] == "OK"
    assert line["level"] == "DEBUG" and line["ts"].endswith("Z")


def test_metrics_http_endpoint(registry):
    reg, metrics = registry
    metrics.bundle.labels("candidate", "v1").set(1)
    port = start_http("127.0.0.1", free_port(), reg)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'recsys_bundle_info{service="candidate",version="v1"} 1.0' in body
