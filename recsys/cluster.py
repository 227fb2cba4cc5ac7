"""A scaled-out topology on one machine: several replicas of each service on loopback.

Every replica is a real `recsys serve` process (recsys.procs.start_service, port 0,
health-checked until SERVING). Each ranking replica reaches the candidate tier through
one channel whose target lists every candidate replica (`ipv4:127.0.0.1:p1,127.0.0.1:p2`)
and whose service config (recsys.grpc_server.CLIENT_SERVICE_CONFIG) picks round_robin with
client-side health checks, so calls spread over the replicas and skip one that is down or
NOT_SERVING. Ranking replicas each keep their own SQLite event store: in front of them a
client balances the same way (`ranking_target`), which is also how `recsys loadtest`
could be pointed at them. Each replica can expose /metrics on its own port.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from recsys.procs import ServiceProcess, start_service


def free_port() -> int:
    """A currently free loopback port (for the metrics endpoints, which cannot report back
    the port they bound; a race with another process is possible but harmless here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ipv4_target(services: list[ServiceProcess]) -> str:
    """gRPC's static multi-address target: every replica, one channel."""
    return "ipv4:" + ",".join(s.address for s in services)


@dataclass
class Cluster:
    candidates: list[ServiceProcess] = field(default_factory=list)
    rankings: list[ServiceProcess] = field(default_factory=list)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # "candidate-0" -> port

    @property
    def candidate_target(self) -> str:
        return ipv4_target(self.candidates)

    @property
    def ranking_target(self) -> str:
        return ipv4_target(self.rankings)

    def stop(self) -> dict[str, int]:
        """SIGTERM every replica, front tier first; exit codes by replica name."""
        codes = {}
        for tier, procs in (("ranking", self.rankings), ("candidate", self.candidates)):
            for i, p in enumerate(procs):
                codes[f"{tier}-{i}"] = p.stop()
        return codes


def start_cluster(
    bundle: str | Path,
    workdir: str | Path,
    candidates: int = 2,
    rankings: int = 1,
    metrics: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Cluster:
    """Start `candidates` candidate replicas, then `rankings` ranking replicas pointed at
    all of them; returns when every replica is SERVING (stops what it started on failure)."""
    if not (1 <= candidates <= 16 and 1 <= rankings <= 16):
        raise ValueError(f"replicas: candidates={candidates}, rankings={rankings} (1..16 each)")
    workdir = Path(workdir)
    cluster = Cluster()

    def start_tier(kind: str, n: int, args: list[str]) -> list[ServiceProcess]:
        jobs = []
        for i in range(n):
            extra = list(args)
            if kind == "ranking":
                extra += ["--event-db", str(workdir / f"ranking-{i}" / "events.sqlite3")]
            if metrics:
                cluster.metrics_ports[f"{kind}-{i}"] = port = free_port()
                extra += ["--metrics-port", str(port)]
            jobs.append((kind, extra, workdir / f"{kind}-{i}", extra_env))
        # replicas of one tier start in parallel (each loads the bundle and warms up)
        with ThreadPoolExecutor(max_workers=n) as pool:
            futures = [pool.submit(start_service, *job) for job in jobs]
            started, failure = [], None
            for f in futures:
                try:
                    started.append(f.result())
                except Exception as e:  # keep collecting, so every started replica is stopped
                    failure = failure or e
        getattr(cluster, "candidates" if kind == "candidate" else "rankings").extend(started)
        if failure is not None:
            raise failure
        return started

    try:
        start_tier("candidate", candidates, ["--bundle", str(bundle)])
        start_tier("ranking", rankings, ["--bundle", str(bundle), "--candidate-address", cluster.candidate_target])
    except BaseException:
        cluster.stop()
        raise
    return cluster
