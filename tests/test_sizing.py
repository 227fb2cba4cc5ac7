"""recsys.sizing: the plan is arithmetic on a measurement, checked on numbers whose answer
is known by hand; the measurement reader is checked on a real bundle directory."""

from __future__ import annotations

import json

import pytest

from recsys import sizing
from recsys.cli import main

MIB = 1024 * 1024

MEASUREMENT = {
    "bundle_items": 1000,
    "bundle_bytes": 2_000_000,
    "bytes_per_item": 2000.0,
    "rss_bytes": {"candidate": 300 * MIB, "ranking": 200 * MIB},
    "cpu_s_per_request": {"candidate": 0.002, "ranking": 0.004},
    "wall_s": 10.0,
    "loadtest": {"mode": "closed", "concurrency": 4, "requests": 2000, "rps": 200.0,
                 "latency_ms": {"p50": 10.0, "p90": 15.0, "p99": 20.0, "p999": 30.0}, "errors": {}, "degraded": 0},
    "cpus": 2,
}


def test_plan_by_hand():
    result = sizing.plan(MEASUREMENT, items=1_000_000, qps=1000, target_utilization=0.5, min_replicas=2)
    cand, rank = result["tiers"]["candidate"], result["tiers"]["ranking"]
    # candidate: 0.5 / 0.002 = 250 qps per replica -> 1000 / 250 = 4 replicas
    assert cand["qps_per_replica_at_target"] == 250.0 and cand["replicas"] == 4
    # ranking: 0.5 / 0.004 = 125 qps per replica -> 8 replicas
    assert rank["qps_per_replica_at_target"] == 125.0 and rank["replicas"] == 8
    # memory: 300 MiB + 999_000 items * 2000 B = 300 MiB + 1905.4 MiB; * 1.25, up to 64 MiB
    expected = -(-((300 * MIB + 999_000 * 2000) * 1.25 / MIB) // 64) * 64
    assert cand["memory_per_replica_mib"] == expected
    assert cand["total_memory_mib"] == 4 * expected and cand["total_cpu"] == 4


def test_plan_floors_at_min_replicas_and_rejects_nonsense():
    result = sizing.plan(MEASUREMENT, items=10, qps=1, min_replicas=3)
    assert {t["replicas"] for t in result["tiers"].values()} == {3}
    with pytest.raises(ValueError):
        sizing.plan(MEASUREMENT, items=10, qps=0)
    with pytest.raises(ValueError):
        sizing.plan(MEASUREMENT, items=10, qps=5, target_utilization=1.5)


def test_bundle_bytes_reads_the_version_directory(bundle_root, bundle):
    total, n_items = sizing.bundle_bytes(bundle_root)
    assert n_items == bundle.n_items
    assert total == sum(p.stat().st_size for p in bundle.path.iterdir() if p.is_file())
    item_bytes, _ = sizing.bundle_bytes(bundle_root, items_only=True)
    per_user = sum(p.stat().st_size for p in bundle.path.iterdir() if sizing.is_per_user(p.name))
    assert per_user > 0 and item_bytes == total - per_user
    assert not sizing.is_per_user("user_tower.onnx"), "the user tower embeds item ids: it grows with items"


def test_cli_reuses_a_saved_measurement(tmp_path, capsys):
    saved = tmp_path / "m.json"
    saved.write_text(json.dumps({"measurement": MEASUREMENT}))
    out = tmp_path / "plan.json"
    assert main(["size", "--items", "5000", "--qps", "300", "--measurement", str(saved), "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["tiers"]["ranking"]["replicas"] == 2  # 0.6 / 0.004 = 150 qps each -> 2
    assert "ranking" in capsys.readouterr().out
