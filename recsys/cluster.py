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

METRICS_PORT_ATTEMPTS = 3


def free_port() -> int:
    """A currently free loopback port (for the metrics endpoints, which cannot report back
    the port they bound). Another socket may take it before the replica binds it:
    start_cluster then starts that replica again on another port."""
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

    def start_replica(kind: str, i: int, args: list[str]) -> ServiceProcess:
        extra = list(args)
        if kind == "ranking":
            extra += ["--event-db", str(workdir / f"ranking-{i}" / "events.sqlite3")]
        for attempt in range(1, METRICS_PORT_ATTEMPTS + 1):
            port = free_port() if metrics else 0
            try:
                service = start_service(kind, extra + (["--metrics-port", str(port)] if metrics else []),
                                        workdir / f"{kind}-{i}", extra_env)
            except RuntimeError as e:  # the free port was taken before the replica bound it
                if metrics and attempt < METRICS_PORT_ATTEMPTS and "Address already in use" in str(e):
                    continue
                raise
            if metrics:
                cluster.metrics_ports[f"{kind}-{i}"] = port
            return service
        raise AssertionError("unreachable")

    def start_tier(kind: str, n: int, args: list[str]) -> list[ServiceProcess]:
        # replicas of one tier start in parallel (each loads the bundle and warms up)
        with ThreadPoolExecutor(max_workers=n) as pool:
            futures = [pool.submit(start_replica, kind, i, args) for i in range(n)]
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
