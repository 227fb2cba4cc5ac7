"""recsys.loadtest against a real gRPC server whose answers are known by construction.

The fake RankingService answers each kind of user differently (cold -> RESOURCE_EXHAUSTED,
new -> degraded, everyone else OK), so the report's error and degraded counts must equal
the mix counts exactly; a server that stalls once shows what open loop measures and
closed loop hides (coordinated omission). The loadtest against the real services runs in
tests/test_cluster.py.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from recsys import loadtest as lt
from recsys.cli import main
from recsys.v1 import ranking_pb2, ranking_pb2_grpc

pytestmark = pytest.mark.timeout(120)


class FakeRanking(ranking_pb2_grpc.RankingServiceServicer):
    def __init__(self, stall_after_s: float | None = None, stall_s: float = 0.0) -> None:
        self.started = time.monotonic()
        self.stall_after_s, self.stall_s = stall_after_s, stall_s
        self.lock = threading.Lock()

    def Recommend(self, request, context):
        with self.lock:  # one request at a time, like one compute thread
            if self.stall_after_s is not None and time.monotonic() - self.started > self.stall_after_s:
                self.stall_after_s = None
                time.sleep(self.stall_s)
            time.sleep(0.001)
        if request.user_id.startswith("lt-cold-"):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "cold users are shed by this fake")
        return ranking_pb2.RecommendResponse(degraded=request.user_id.startswith("lt-new-"))

    def LogEvents(self, request, context):
        if request.events[0].user_id.startswith("lt-cold-"):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "cold users are shed by this fake")
        assert all(e.item_id in ITEMS and e.idempotency_key for e in request.events)
        return ranking_pb2.LogEventsResponse(stored=len(request.events))


def serve(servicer: FakeRanking):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def fake():
    servicer = FakeRanking()
    server, address = serve(servicer)
    yield address
    server.stop(0)


ITEMS = tuple(f"i{i}" for i in range(20))
POOL = lt.UserPool(known=tuple(f"u{i}" for i in range(50)), heavy=("u1", "u2"), regions=("north", "south"),
                   items=ITEMS)
REPORT_KEYS = {"requests", "rps", "latency_ms", "errors", "degraded", "mode", "processes", "timeline", "mix"}


def check_report(report: dict) -> None:
    assert REPORT_KEYS <= report.keys(), REPORT_KEYS - report.keys()
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"], lat
    assert report["requests"] > 0 and report["rps"] > 0
    mix = report["mix"]
    assert sum(mix.values()) == report["requests"]
    # by construction of FakeRanking: every cold request fails, every new one is degraded
    assert report["errors"] == ({"RESOURCE_EXHAUSTED": mix["cold"]} if mix.get("cold") else {}), report["errors"]
    assert report["degraded"] == mix.get("new", 0)


def test_spec_validation():
    with pytest.raises(ValueError, match="loopback"):
        lt.LoadSpec("10.0.0.1:50052", concurrency=1).validate()
    with pytest.raises(ValueError, match="loopback"):
        lt.LoadSpec("ipv4:127.0.0.1:1,10.0.0.2:2", concurrency=1).validate()
    with pytest.raises(ValueError, match="exactly one"):
        lt.LoadSpec("127.0.0.1:1", concurrency=2, rate=10).validate()
    with pytest.raises(ValueError, match="exactly one"):
        lt.LoadSpec("127.0.0.1:1").validate()
    with pytest.raises(ValueError, match="duration"):
        lt.LoadSpec("127.0.0.1:1", concurrency=1, duration_s=1e9).validate()
    lt.LoadSpec("ipv4:127.0.0.1:1,127.0.0.1:2", rate=5).validate()
    assert lt.parse_mix("known=0.5, new=0.5") == {"known": 0.5, "new": 0.5}
    with pytest.raises(ValueError):
        lt.parse_mix("vip=1")


def test_user_pool_from_bundle_marks_the_longest_histories_heavy(bundle, bundle_root):
    pool = lt.UserPool.from_bundle(bundle_root)
    assert pool.known == tuple(bundle.user_ids) and pool.items == tuple(bundle.item_ids)
    sizes = {u: len(bundle.user_seen.row(r)) for r, u in enumerate(bundle.user_ids)}
    threshold = sorted(sizes.values(), reverse=True)[len(pool.heavy) - 1]
    assert len(pool.heavy) == max(1, len(bundle.user_ids) // 10)
    assert all(sizes[u] >= threshold for u in pool.heavy)
    assert min(sizes[u] for u in pool.heavy) >= max(s for u, s in sizes.items() if u not in pool.heavy)


def test_merge_combines_histograms_exactly():
    """Two clients' histograms merged = one histogram of all values (HDR: 3 significant
    digits, so percentiles within 0.1%)."""
    rng = np.random.default_rng(0)
    values = rng.integers(500, 200_000, size=4000)  # microseconds
    parts = []
    for chunk in np.array_split(values, 2):
        h = lt._histogram()
        for v in chunk.tolist():
            h.record_value(v)
        parts.append({"recorded": len(chunk), "elapsed_s": 2.0, "errors": {"UNAVAILABLE": 1}, "degraded": 3,
                      "kinds": {"known": len(chunk)}, "histogram": h.encode(), "per_second": {0: h.encode()}})
    report = lt.merge(lt.LoadSpec("127.0.0.1:1", concurrency=1, duration_s=2), parts)
    assert report["requests"] == 4000 and report["rps"] == 2000.0
    assert report["errors"] == {"UNAVAILABLE": 2} and report["degraded"] == 6
    for name, q in lt.PERCENTILES:
        exact = np.percentile(values, q, method="inverted_cdf") / 1000
        assert report["latency_ms"][name] == pytest.approx(exact, rel=1e-3), (name, "within 0.1%")
    assert report["timeline"][0]["requests"] == 4000


def test_closed_loop_counts_match_the_mix(fake):
    spec = lt.LoadSpec(fake, concurrency=4, duration_s=1.5, warmup_s=0.3, seed=3)
    report = lt.run(spec, POOL)
    check_report(report)
    assert report["mode"] == "closed" and set(report["mix"]) == {"known", "heavy", "cold", "new"}


def test_events_share_sends_log_events(fake):
    report = lt.run(lt.LoadSpec(fake, concurrency=2, requests=200, duration_s=30, warmup_s=0,
                                events_share=0.3, mix={"known": 1.0}), POOL)
    by = report["by_method"]
    assert set(by) == {"Recommend", "LogEvents"} and by["Recommend"]["requests"] + by["LogEvents"]["requests"] == 200
    assert 30 <= by["LogEvents"]["requests"] <= 90, f"about 30% of 200: {by['LogEvents']['requests']}"
    assert report["errors"] == {}


def test_request_count_bounds_the_run(fake):
    report = lt.run(lt.LoadSpec(fake, concurrency=3, requests=57, duration_s=30, warmup_s=0), POOL)
    assert report["requests"] == 57
    check_report(report)


def test_open_loop_holds_the_rate(fake):
    report = lt.run(lt.LoadSpec(fake, rate=80, duration_s=2.0, warmup_s=0.3), POOL)
    check_report(report)
    assert report["mode"] == "open"
    assert report["requests"] == pytest.approx(160, abs=4), "80 rps for 2 s"


def test_open_loop_sees_a_stall_that_closed_loop_hides():
    """The server stalls once for 1 s. Closed loop (concurrency 1) waits politely: one slow
    request, p90 stays at the service time. Open loop keeps scheduling: every request
    scheduled during the stall is charged from its intended send time."""
    results = {}
    for mode, kw in (("closed", dict(concurrency=1)), ("open", dict(rate=50))):
        servicer = FakeRanking(stall_after_s=0.8, stall_s=1.0)
        server, address = serve(servicer)
        try:
            spec = lt.LoadSpec(address, duration_s=3.0, warmup_s=0.0, mix={"known": 1.0}, **kw)
            results[mode] = lt.run(spec, POOL)["latency_ms"]
        finally:
            server.stop(0)
    assert results["closed"]["max"] >= 900, results
    assert results["closed"]["p90"] < 50, f"closed-loop p90 {results['closed']['p90']} ms: the stall is one request"
    assert results["open"]["p90"] > 300, f"open-loop p90 {results['open']['p90']} ms must show the 1 s stall"


def test_cli_writes_json_and_png(fake, tmp_path, capsys):
    out, png = tmp_path / "report.json", tmp_path / "lat.png"
    code = main(["loadtest", "--address", fake, "--concurrency", "2", "--duration", "1", "--warmup", "0.2",
                 "--mix", "known=1", "--json", str(out), "--png", str(png), "-q"])
    assert code == 0
    report = json.loads(out.read_text())
    check_report(report)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "p99" in capsys.readouterr().out


def test_cli_sweep(fake, tmp_path):
    out, png = tmp_path / "sweep.json", tmp_path / "curve.png"
    code = main(["loadtest", "--address", fake, "--sweep", "40,80", "--duration", "1", "--warmup", "0.2",
                 "--json", str(out), "--png", str(png), "-q"])
    assert code == 1, "cold users are errors in this fake: the exit code says so"
    report = json.loads(out.read_text())
    assert [r["target_rps"] for r in report["sweep"]] == [40, 80]
    for run, rate in zip(report["runs"], (40, 80)):
        check_report(run)
        assert run["requests"] == pytest.approx(rate, abs=4), f"{rate} rps for 1 s"
    assert png.stat().st_size > 10_000


def test_two_client_processes_share_the_rate(fake):
    report = lt.run(lt.LoadSpec(fake, rate=60, duration_s=1.0, warmup_s=0.2, processes=2), POOL)
    check_report(report)
    assert report["processes"] == 2
    assert report["requests"] == pytest.approx(60, abs=3), "60 rps for 1 s, 30 from each process"
