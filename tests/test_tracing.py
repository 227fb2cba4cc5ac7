"""recsys.tracing: one trace per Recommend across both tiers, and nothing at all when off.

Both services run in this process (create_server on port 0, a real gRPC channel between
them) with one in-memory exporter, so the spans of both tiers land in one list. The
tracing-off case runs the services in a fresh interpreter and checks that no
`opentelemetry` module was ever imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from recsys import tracing
from recsys.cluster import free_port
from recsys.config import CandidateConfig, RankingConfig
from recsys.v1 import ranking_pb2, ranking_pb2_grpc

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
RECOMMEND = "recsys.v1.RankingService/Recommend"
RETRIEVE = "recsys.v1.CandidateService/Retrieve"
STAGES = {"ranking.history", "ranking.score", "ranking.rules"}
# A caller's own trace, as an upstream service would send it.
CALLER_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7
CALLER_TRACEPARENT = f"00-{CALLER_TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"


@pytest.fixture(scope="module")
def otel():
    if not tracing.available():
        pytest.skip("opentelemetry-sdk is not installed (pip install -e '.[otel]'; CI gets it from the dev extra)")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    return InMemorySpanExporter()


def start_pair(bundle, tmp: Path, exporter, candidate_address: str | None = None):
    """Candidate (unless `candidate_address` points elsewhere) and ranking, in process,
    each with its own tracer (`exporter` None = as their config says: off)."""
    from candidate_svc.server import create_server as create_candidate
    from ranking_svc.server import create_server as create_ranking

    def tracer(name: str):
        return tracing.setup_tracing(name, exporter) if exporter is not None else None

    started = []
    if candidate_address is None:
        cand, _ = create_candidate(CandidateConfig(port=0), bundle, tracer=tracer("recsys-candidate"))
        cand.server.start()
        cand.set_serving(True)
        started.append(cand)
        candidate_address = f"127.0.0.1:{cand.port}"
    rank, ranker = create_ranking(
        RankingConfig(port=0, candidate_address=candidate_address, event_db=str(tmp / "events.sqlite3"),
                      retrieve_timeout_ms=3000),  # generous: a shared 2-core machine
        bundle, tracer=tracer("recsys-ranking"),
    )
    rank.server.start()
    rank.set_serving(True)
    started.append(rank)
    return started, rank.port, ranker


def stop(started, ranker) -> None:
    for served in reversed(started):
        served.stop(0)
    ranker.candidates.close()


def known_user(bundle) -> str:
    return bundle.user_ids[0]


@pytest.fixture(scope="module")
def traced(otel, bundle, tmp_path_factory):
    started, port, ranker = start_pair(bundle, tmp_path_factory.mktemp("traced"), otel)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield ranking_pb2_grpc.RankingServiceStub(channel), otel
    channel.close()
    stop(started, ranker)


def by_name(spans, name: str):
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"expected one {name} span, got {[s.name for s in spans]}"
    return found[0]


def test_recommend_is_one_trace_across_ranking_and_candidate(traced, bundle):
    from opentelemetry.trace import SpanKind, StatusCode

    stub, exporter = traced
    exporter.clear()
    resp = stub.Recommend(ranking_pb2.RecommendRequest(user_id=known_user(bundle), k=5), timeout=10,
                          metadata=(("x-request-id", "trace-e2e-1"),))
    assert not resp.degraded, resp.degraded_reason
    spans = exporter.get_finished_spans()
    ranking = by_name([s for s in spans if s.kind == SpanKind.SERVER], RECOMMEND)
    client = by_name([s for s in spans if s.kind == SpanKind.CLIENT], RETRIEVE)
    candidate = by_name([s for s in spans if s.kind == SpanKind.SERVER], RETRIEVE)

    trace_id = ranking.context.trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}, "every span of the call is in one trace"
    assert ranking.parent is None, "no traceparent from the caller: ranking starts the trace"
    assert client.parent.span_id == ranking.context.span_id
    assert candidate.parent.span_id == client.context.span_id and candidate.parent.is_remote, (
        "the candidate span is the child of ranking's Retrieve call, across the wire"
    )
    assert {s.name for s in spans if s.parent and s.parent.span_id == ranking.context.span_id} == {
        RETRIEVE, *STAGES}

    assert ranking.resource.attributes["service.name"] == "recsys-ranking"
    assert candidate.resource.attributes["service.name"] == "recsys-candidate"
    for span, service, method in ((ranking, "recsys.v1.RankingService", "Recommend"),
                                  (candidate, "recsys.v1.CandidateService", "Retrieve")):
        a = span.attributes
        assert (a["rpc.system"], a["rpc.service"], a["rpc.method"]) == ("grpc", service, method)
        assert a["rpc.grpc.status_code"] == 0
        assert a["recsys.request_id"] == "trace-e2e-1", "the request id is carried to both tiers"
        assert span.status.status_code == StatusCode.UNSET
    assert client.attributes["rpc.grpc.status_code"] == 0


def test_caller_traceparent_is_continued(traced, bundle):
    stub, exporter = traced
    exporter.clear()
    stub.Recommend(ranking_pb2.RecommendRequest(user_id=known_user(bundle), k=3), timeout=10,
                   metadata=(("traceparent", CALLER_TRACEPARENT),))
    spans = exporter.get_finished_spans()
    ranking = by_name(spans, RECOMMEND)
    assert ranking.parent is not None and ranking.parent.span_id == CALLER_SPAN_ID
    assert {s.context.trace_id for s in spans} == {CALLER_TRACE_ID}


def test_caller_error_is_recorded_but_not_a_server_fault(traced):
    from opentelemetry.trace import StatusCode

    stub, exporter = traced
    exporter.clear()
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(ranking_pb2.RecommendRequest(user_id="u1", k=0), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (span,) = exporter.get_finished_spans()
    assert span.name == RECOMMEND
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert span.status.status_code == StatusCode.UNSET, "INVALID_ARGUMENT is the caller's fault"


def test_failed_retrieve_is_an_error_on_the_client_span(otel, bundle, tmp_path):
    from opentelemetry.trace import SpanKind, StatusCode

    started, port, ranker = start_pair(bundle, tmp_path, otel, candidate_address=f"127.0.0.1:{free_port()}")
    try:
        otel.clear()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            resp = ranking_pb2_grpc.RankingServiceStub(channel).Recommend(
                ranking_pb2.RecommendRequest(user_id=known_user(bundle), k=3), timeout=10)
    finally:
        stop(started, ranker)
    assert resp.degraded, "nothing listens at the candidate address"
    spans = otel.get_finished_spans()
    client = by_name([s for s in spans if s.kind == SpanKind.CLIENT], RETRIEVE)
    assert client.status.status_code == StatusCode.ERROR
    assert client.attributes["rpc.grpc.status_code"] != 0
    ranking = by_name(spans, RECOMMEND)
    assert ranking.status.status_code == StatusCode.UNSET, "a degraded answer is still an answer"


def test_setup_tracing_modes(otel, caplog):
    assert tracing.setup_tracing("x", "off") is None
    assert tracing.setup_tracing("x", "") is None
    assert tracing.setup_tracing("x", "console") is not None
    with pytest.raises(ValueError, match="RECSYS_OTEL"):
        tracing.setup_tracing("x", "jaeger")
    try:
        import opentelemetry.exporter.otlp  # noqa: F401
    except ImportError:
        assert tracing.setup_tracing("x", "otlp") is None
        assert "opentelemetry-exporter-otlp is not installed" in caplog.text


# ---- off ---------------------------------------------------------------------------------
OFF_SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    import grpc
    from candidate_svc.server import create_server as create_candidate
    from ranking_svc.server import create_server as create_ranking
    from recsys import cli  # the serve flags are built without tracing too
    from recsys.bundle import load_bundle
    from recsys.config import CandidateConfig, RankingConfig, load
    from recsys.v1 import ranking_pb2, ranking_pb2_grpc

    cli.build_parser()
    bundle = load_bundle(sys.argv[1])
    cand, _ = create_candidate(load(CandidateConfig, {"port": 0}), bundle)
    cand.server.start(); cand.set_serving(True)
    rank, ranker = create_ranking(load(RankingConfig, {
        "port": 0, "candidate_address": f"127.0.0.1:{cand.port}", "retrieve_timeout_ms": 3000,
        "event_db": tempfile.mkdtemp() + "/events.sqlite3"}), bundle)
    rank.server.start(); rank.set_serving(True)
    with grpc.insecure_channel(f"127.0.0.1:{rank.port}") as ch:
        resp = ranking_pb2_grpc.RankingServiceStub(ch).Recommend(
            ranking_pb2.RecommendRequest(user_id=bundle.user_ids[0], k=5), timeout=10)
    rank.stop(0); cand.stop(0)
    print(json.dumps({"items": len(resp.items), "degraded": resp.degraded,
                      "otel": sorted(m for m, mod in sys.modules.items()
                                    if m.split(".")[0] == "opentelemetry" and mod is not None)}))
""")


@pytest.mark.parametrize("installed", [True, False], ids=["otel-installed", "otel-missing"])
def test_tracing_off_imports_no_opentelemetry(bundle_root, installed):
    """Serving with RECSYS_OTEL unset never imports opentelemetry; with RECSYS_OTEL=console
    and the packages missing it serves untraced (a warning, not a crash)."""
    env = {k: v for k, v in os.environ.items() if k != tracing.ENV}
    script = OFF_SCRIPT
    if not installed:
        env[tracing.ENV] = "console"
        script = "import sys; sys.modules['opentelemetry'] = None\n" + script
    proc = subprocess.run([sys.executable, "-c", script, str(bundle_root)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["items"] == 5 and not out["degraded"], out
    assert out["otel"] == [], f"tracing off must not import opentelemetry: {out['otel']}"
    if not installed:
        assert "opentelemetry-sdk is not installed" in proc.stderr and "tracing off" in proc.stderr
