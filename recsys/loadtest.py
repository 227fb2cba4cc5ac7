"""`recsys loadtest`: closed-loop load on RankingService.Recommend over real gRPC.

N client threads each send requests back to back (concurrency N) over one channel until
the request count is reached; a mix of known and cold users. Latency percentiles come from
every request's wall time; errors are counted by gRPC status code. (Open-loop mode, HDR
histograms and plots come with the operations issue.)
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import grpc
import numpy as np

from recsys.v1 import ranking_pb2, ranking_pb2_grpc


def run_closed_loop(address: str, known_users: list[str], concurrency: int, requests: int, k: int,
                    cold_share: float = 0.1, seed: int = 0) -> dict:
    """`known_users`: ids to draw from (e.g. a bundle's users); a `cold_share` of requests
    use fresh ids the system has never seen."""
    rng = np.random.default_rng(seed)
    user_ids = [
        f"cold-{i}" if rng.random() < cold_share or not known_users
        else known_users[int(rng.integers(0, len(known_users)))]
        for i in range(requests)
    ]
    latencies = np.zeros(requests, dtype=np.float64)
    errors: Counter[str] = Counter()
    degraded = 0
    next_index = 0
    lock = threading.Lock()
    channel = grpc.insecure_channel(address)
    stub = ranking_pb2_grpc.RankingServiceStub(channel)

    def worker() -> None:
        nonlocal next_index, degraded
        while True:
            with lock:
                i = next_index
                next_index += 1
            if i >= requests:
                return
            t = time.perf_counter()
            try:
                resp = stub.Recommend(ranking_pb2.RecommendRequest(user_id=user_ids[i], k=k), timeout=5.0)
                if resp.degraded:
                    with lock:
                        degraded += 1
            except grpc.RpcError as e:
                with lock:
                    errors[e.code().name] += 1
            latencies[i] = time.perf_counter() - t

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - started
    channel.close()
    ms = latencies * 1000
    return {
        "requests": requests,
        "concurrency": concurrency,
        "cold_share": cold_share,
        "seconds": round(elapsed, 3),
        "rps": round(requests / elapsed, 1),
        "latency_ms": {p: round(float(np.percentile(ms, q)), 3)
                       for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9), ("max", 100))},
        "errors": dict(errors),
        "degraded": degraded,
    }
