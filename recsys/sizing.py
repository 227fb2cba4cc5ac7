"""`recsys size --items N --qps Q`: replicas, CPU and memory per tier for a target.

The inputs are measured, not assumed. `measure()` starts one replica of each service on
loopback, reads their resident memory, drives Recommend closed-loop with `recsys.loadtest`
and reads the CPU time each process used from /proc: CPU-seconds per request per tier is
what scaling out divides. The plan (`plan()`):

    replicas(tier) = max(min_replicas, ceil(Q * cpu_s_per_request(tier) / target_utilization))
    memory(tier)   = measured RSS + (N - measured items) * bundle bytes per item

Each replica is one compute thread and gets one CPU (docs/ARCHITECTURE.md). Memory is a
linear extrapolation in the catalogue size of what the bundle holds per item (embeddings,
factors, content vectors, ANN graph); per-user arrays and the event store are not scaled.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def is_per_user(name: str) -> bool:
    """Bundle files that grow with users, not items (histories, user factors, users.json)."""
    return (name.startswith("user_") and name.endswith(".npy")) or name in ("users.json", "mf_user_factors.npy")


def bundle_bytes(bundle: str | Path, items_only: bool = False) -> tuple[int, int]:
    """(bytes of the version directory, number of items); `items_only` leaves out the
    per-user files, so the bytes divided by the items is what one more item costs."""
    from recsys.bundle import resolve_version_dir

    vdir = resolve_version_dir(bundle)
    manifest = json.loads((vdir / "manifest.json").read_text())
    n_items = int(manifest.get("n_items") or len(json.loads((vdir / "catalog.json").read_text())["item_ids"]))
    files = [p for p in vdir.iterdir() if p.is_file() and not (items_only and is_per_user(p.name))]
    return sum(p.stat().st_size for p in files), n_items


def measure(bundle: str | Path, seconds: float = 8.0, concurrency: int = 4, warmup_s: float = 2.0) -> dict[str, Any]:
    """One candidate + one ranking replica on loopback under closed-loop load."""
    from recsys import loadtest as lt
    from recsys.procs import start_service

    total_bytes, n_items = bundle_bytes(bundle)
    item_bytes, _ = bundle_bytes(bundle, items_only=True)
    work = Path(tempfile.mkdtemp(prefix="recsys-size-"))
    # the graph walk, as a catalogue of the sizes planned for runs it (a small bundle would
    # otherwise be scanned: candidate_svc/sources/two_tower.py)
    cand = start_service("candidate", ["--bundle", str(bundle)], work, env={"RECSYS_ANN_SCAN_PER_RESULT": "0"})
    rank = None
    try:
        rank = start_service("ranking", ["--bundle", str(bundle), "--candidate-address", cand.address,
                                         "--event-db", str(work / "events.sqlite3")], work)
        pids = {"candidate": cand.proc.pid, "ranking": rank.proc.pid}
        spec = lt.LoadSpec(rank.address, concurrency=concurrency, duration_s=seconds, warmup_s=warmup_s)
        pool = lt.UserPool.from_bundle(bundle)
        # CPU is read around the whole run (warm-up included) and divided by every request
        # sent, so count those too: recorded requests scaled by the run's length.
        before = {t: _cpu_seconds(p) for t, p in pids.items()}
        t0 = time.monotonic()
        report = lt.run(spec, pool)
        wall = time.monotonic() - t0
        after = {t: _cpu_seconds(p) for t, p in pids.items()}
        rss = {t: _rss_bytes(p) for t, p in pids.items()}
    finally:
        for s in (rank, cand):
            if s is not None:
                s.stop()
    sent = report["requests"] * (warmup_s + report["duration_s"]) / report["duration_s"]
    return {
        "bundle_items": n_items,
        "bundle_bytes": total_bytes,
        "bytes_per_item": round(item_bytes / max(n_items, 1), 1),  # per-user files left out
        "rss_bytes": rss,
        "cpu_s_per_request": {t: round((after[t] - before[t]) / max(sent, 1), 6) for t in pids},
        "wall_s": round(wall, 2),
        "loadtest": {k: report[k] for k in ("mode", "concurrency", "requests", "rps", "latency_ms", "errors",
                                            "degraded")},
        "cpus": os.cpu_count(),
    }


def plan(measurement: dict[str, Any], items: int, qps: float, target_utilization: float = 0.6,
         min_replicas: int = 2, headroom: float = 1.25) -> dict[str, Any]:
    """Replicas and resources per tier from a measurement (see the module docstring)."""
    if not (items > 0 and qps > 0 and 0 < target_utilization <= 1 and min_replicas >= 1 and headroom >= 1):
        raise ValueError("items, qps > 0; 0 < target_utilization <= 1; min_replicas >= 1; headroom >= 1")
    tiers = {}
    extra_items = items - measurement["bundle_items"]
    for tier in ("candidate", "ranking"):
        cpu = measurement["cpu_s_per_request"][tier]
        per_replica_qps = target_utilization / cpu if cpu > 0 else float("inf")
        replicas = max(min_replicas, math.ceil(qps / per_replica_qps)) if cpu > 0 else min_replicas
        memory = measurement["rss_bytes"][tier] + max(0, extra_items) * measurement["bytes_per_item"]
        request_mib = math.ceil(memory * headroom / MIB / 64) * 64
        tiers[tier] = {
            "replicas": replicas,
            "qps_per_replica_at_target": round(per_replica_qps, 1),
            "cpu_per_replica": "1",
            "memory_per_replica_mib": request_mib,
            "total_cpu": replicas,
            "total_memory_mib": replicas * request_mib,
        }
    return {
        "target": {"items": items, "qps": qps, "target_utilization": target_utilization,
                   "min_replicas": min_replicas, "memory_headroom": headroom},
        "tiers": tiers,
        "measurement": measurement,
    }


def render(result: dict[str, Any]) -> str:
    t, m = result["target"], result["measurement"]
    lines = [
        f"target: {t['items']} items, {t['qps']:g} Recommend/s, CPU at {t['target_utilization']:.0%},"
        f" at least {t['min_replicas']} replicas per tier",
        f"measured: {m['bundle_items']} items ({m['bytes_per_item']:.0f} bundle bytes/item),"
        f" {m['loadtest']['rps']:.1f} rps closed-loop (concurrency {m['loadtest']['concurrency']},"
        f" p99 {m['loadtest']['latency_ms']['p99']:.1f} ms) on {m['cpus']} cores; CPU ms/request"
        f" candidate {m['cpu_s_per_request']['candidate'] * 1000:.2f}, ranking"
        f" {m['cpu_s_per_request']['ranking'] * 1000:.2f}",
        f"{'tier':<10} {'replicas':>8} {'qps/replica':>12} {'cpu each':>9} {'memory each':>12} {'total cpu':>10}"
        f" {'total memory':>13}",
    ]
    for name, r in result["tiers"].items():
        lines.append(f"{name:<10} {r['replicas']:>8} {r['qps_per_replica_at_target']:>12.1f} {r['cpu_per_replica']:>9}"
                     f" {r['memory_per_replica_mib']:>9} Mi {r['total_cpu']:>10} {r['total_memory_mib']:>10} Mi")
    return "\n".join(lines)
