"""The scaled-out topology on loopback (recsys.cluster): two candidate replicas behind one
ranking replica's round_robin channel, every process real, with /metrics and JSON logs.

One module-scoped cluster serves every test here, in order: traffic spreads over both
candidate replicas; the request id of a Recommend shows up in a candidate replica's JSON
log; `recsys loadtest` runs against it and writes its report; one candidate replica is
killed and Recommend keeps answering from the other.
"""

from __future__ import annotations

import json
import re
import urllib.request

import grpc
import pytest

from recsys.cli import main
from recsys.cluster import start_cluster
from recsys.v1 import ranking_pb2, ranking_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CANDIDATE = "recsys.v1.CandidateService"


@pytest.fixture(scope="module")
def cluster(bundle_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster")
    c = start_cluster(bundle_root, work, candidates=2, rankings=1, metrics=True,
                      extra_env={"RECSYS_LOG_FORMAT": "json", "RECSYS_LOG_LEVEL": "DEBUG"})
    yield c
    c.stop()


@pytest.fixture(scope="module")
def ranking(cluster):
    with grpc.insecure_channel(cluster.rankings[0].address) as channel:
        yield ranking_pb2_grpc.RankingServiceStub(channel)


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def handled(text: str, method: str, code: str = "OK") -> float:
    m = re.search(rf'grpc_server_handled_total\{{grpc_code="{code}",grpc_method="{method}",'
                  rf'grpc_service="[^"]+",grpc_type="unary"\}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def recommend(ranking, user: str, rid: str | None = None) -> ranking_pb2.RecommendResponse:
    metadata = (("x-request-id", rid),) if rid else None
    return ranking.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=5), timeout=10, metadata=metadata)


def test_round_robin_spreads_retrieve_over_both_replicas(cluster, ranking, bundle):
    before = [handled(scrape(cluster.metrics_ports[f"candidate-{i}"]), "Retrieve") for i in range(2)]
    answers = [recommend(ranking, bundle.user_ids[i]) for i in range(20)]
    assert not any(a.degraded for a in answers), [a.degraded_reason for a in answers if a.degraded]
    after = [handled(scrape(cluster.metrics_ports[f"candidate-{i}"]), "Retrieve") for i in range(2)]
    calls = [a - b for a, b in zip(after, before)]
    assert sum(calls) == 20 and min(calls) >= 8, f"round_robin: Retrieve calls per replica {calls}"
    text = scrape(cluster.metrics_ports["ranking-0"])
    assert handled(text, "Recommend") >= 20
    assert f'recsys_bundle_info{{service="ranking",version="{bundle.version}"}} 1.0' in text
    assert "recsys_candidates_per_request_bucket" in scrape(cluster.metrics_ports["candidate-0"])


def test_request_id_reaches_the_candidate_tier_logs(cluster, ranking, bundle):
    rid = "it-trace-4242"
    for _ in range(2):  # round robin: two calls reach both replicas, one of them logs it
        recommend(ranking, bundle.user_ids[0], rid)
    lines = [json.loads(line)
             for c in [*cluster.candidates, *cluster.rankings]
             for line in c.log_path.read_text().splitlines() if line.startswith("{")]
    tagged = [(line["logger"], line.get("grpc_method", "")) for line in lines if line.get("request_id") == rid]
    assert ("recsys.access", f"/{CANDIDATE}/Retrieve") in tagged, tagged
    assert ("recsys.access", "/recsys.v1.RankingService/Recommend") in tagged, tagged


def test_loadtest_against_the_real_services(cluster, bundle_root, tmp_path):
    out, png = tmp_path / "lt.json", tmp_path / "lt.png"
    code = main(["loadtest", "--address", cluster.rankings[0].address, "--bundle", str(bundle_root),
                 "--rate", "40", "--duration", "2", "--warmup", "0.5", "--json", str(out), "--png", str(png), "-q"])
    report = json.loads(out.read_text())
    assert code == 0 and report["errors"] == {}, report["errors"]
    assert {"requests", "rps", "latency_ms", "errors", "degraded"} <= report.keys()
    assert set(report["latency_ms"]) >= {"p50", "p90", "p99", "p999"}
    assert report["requests"] == pytest.approx(80, abs=3), "open loop: 40 rps for 2 s"
    assert report["degraded"] == 0
    assert report["mix"].keys() == {"known", "heavy", "cold", "new"}
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_recommend_keeps_answering_when_a_candidate_replica_dies(cluster, ranking, bundle):
    victim, survivor = cluster.candidates
    victim.proc.kill()  # SIGKILL: no drain, no NOT_SERVING first
    victim.proc.wait(10)
    before = handled(scrape(cluster.metrics_ports["candidate-1"]), "Retrieve")
    answers = [recommend(ranking, bundle.user_ids[i]) for i in range(20)]  # no RpcError raised
    assert all(len(a.items) == 5 for a in answers)
    assert not any(a.degraded for a in answers[2:]), [a.degraded_reason for a in answers]
    after = handled(scrape(cluster.metrics_ports["candidate-1"]), "Retrieve")
    assert after - before >= 18, "the surviving replica takes the traffic"
    assert survivor.proc.poll() is None


def test_a_metrics_port_taken_before_the_replica_binds_it_is_replaced(bundle_root, tmp_path, monkeypatch):
    """free_port's answer can be taken by another socket before the replica binds it: the
    replica is started again on another port instead of failing the whole cluster."""
    import socket

    import recsys.cluster as cluster_mod

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    handed: list[int] = []
    real_free_port = cluster_mod.free_port

    def racing_free_port() -> int:
        handed.append(taken if not handed else real_free_port())
        return handed[-1]

    monkeypatch.setattr(cluster_mod, "free_port", racing_free_port)
    try:
        c = start_cluster(bundle_root, tmp_path, candidates=1, rankings=1, metrics=True)
    finally:
        squatter.close()
    try:
        assert handed[0] == taken and len(handed) == 3, handed  # candidate twice, ranking once
        assert c.metrics_ports["candidate-0"] == handed[1] != taken
        assert "grpc_server_started_total" in scrape(c.metrics_ports["candidate-0"])
    finally:
        c.stop()
