"""LogEvents throughput and latency on loopback, per event-store backend, against a baseline.

For batch sizes 1 and 100, closed loop at a fixed client concurrency for a fixed time:
  baseline  a bare gRPC echo server (generic handler, its own process, same handler thread
            count) answering /recsys.v1.RankingService/LogEvents with a fixed response:
            the same request bytes, the same client code, no validation and no store;
  sqlite    `recsys serve ranking --event-db FILE` (WAL, synchronous=FULL), FILE in --dir;
  redis     `recsys serve ranking --event-store-url ...` against a redis-server started here
            with appendonly yes, appendfsync always (its AOF in --dir).
A second table calls each store's `append` directly (one thread, the same batches), so the
gRPC + validation share of a LogEvents call is visible beside the store's own.
Each row prints batches/s, events/s, p50 and p99 in ms, and throughput and p99 as ratios to
the baseline of the same batch size. Every batch carries fresh idempotency keys, so every
event is a real durable write (an fsync per batch in both backends).

    .venv/bin/python bench/bench_events.py --bundle var/demo/bundles [--seconds 5 --concurrency 4]

--dir should be on the disk you care about: fsync on tmpfs is free and flatters both stores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from recsys.numba_cache import default_cache_dir  # noqa: E402

os.environ.setdefault("NUMBA_CACHE_DIR", default_cache_dir(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from recsys.v1 import ranking_pb2  # noqa: E402

LOG_EVENTS = "/recsys.v1.RankingService/LogEvents"


# ------------------------------------------------------------------------------ baseline


def serve_echo(port_file: str, workers: int) -> None:
    """A generic gRPC server that answers LogEvents with fixed bytes (run in a child)."""
    reply = ranking_pb2.LogEventsResponse(stored=100).SerializeToString()
    handler = grpc.method_handlers_generic_handler(
        "recsys.v1.RankingService",
        {"LogEvents": grpc.unary_unary_rpc_method_handler(lambda request, context: reply)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    Path(port_file).write_text(str(port))
    server.wait_for_termination()


def start_echo(workers: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    port_file = tmp / "echo.port"
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'bench')!r}); "
            f"import bench_events; bench_events.serve_echo({str(port_file)!r}, {workers})")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("echo server did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text()}"


# ------------------------------------------------------------------------------ load


def make_batch(prefix: str, n: int, batch_size: int, now_ms: int) -> bytes:
    """One serialized request; keys unique per (prefix, n) so every event is a new write."""
    return ranking_pb2.LogEventsRequest(events=[
        ranking_pb2.Event(idempotency_key=f"{prefix}-{n}-{j}", user_id=f"bench-user-{(n + j) % 1000}",
                          item_id=f"item-{j % 300}", type=ranking_pb2.EVENT_TYPE_CLICK, timestamp_ms=now_ms)
        for j in range(batch_size)
    ]).SerializeToString()


def run_load(address: str, name: str, batch_size: int, concurrency: int, seconds: float,
             warmup_s: float = 1.0) -> dict:
    """Closed loop: `concurrency` threads each send a batch, wait for the ack, repeat."""
    now_ms = int(time.time() * 1000)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start = time.monotonic()
    t_measure, t_end = start + warmup_s, start + warmup_s + seconds
    channel = grpc.insecure_channel(address)
    call = channel.unary_unary(LOG_EVENTS)  # bytes in, bytes out: the same client for every target

    def worker(t: int) -> None:
        n = 0
        while True:
            request = make_batch(f"{name}-{batch_size}-{t}", n, batch_size, now_ms)
            n += 1
            t0 = time.monotonic()
            if t0 >= t_end:
                return
            try:
                call(request, timeout=30)
            except grpc.RpcError:
                errors[t] += 1
                continue
            t1 = time.monotonic()
            if t0 >= t_measure:
                latencies[t].append(t1 - t0)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    channel.close()
    lat = np.concatenate([np.asarray(x) for x in latencies]) * 1000.0
    batches = len(lat) / seconds
    return {
        "batches_per_s": batches,
        "events_per_s": batches * batch_size,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "errors": sum(errors),
    }


def run_store(store, name: str, batch_size: int, seconds: float) -> dict:
    """`store.append` in a loop on one thread, fresh keys each batch."""
    from ranking_svc.events import StoredEvent

    now_ms = int(time.time() * 1000)
    lat: list[float] = []
    n = 0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        batch = [StoredEvent(f"{name}-direct-{batch_size}-{n}-{j}", f"bench-user-{(n + j) % 1000}",
                             f"item-{j % 300}", "click", 1.0, now_ms) for j in range(batch_size)]
        n += 1
        t0 = time.monotonic()
        store.append(batch)
        lat.append(time.monotonic() - t0)
    ms = np.asarray(lat) * 1000.0
    return {"batches_per_s": len(ms) / seconds, "events_per_s": len(ms) * batch_size / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


# ------------------------------------------------------------------------------ main


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    from tests.redis_server import DURABLE_ARGS, free_port

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not on PATH (apt-get install redis-server), or pass --backends sqlite")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                             "--logfile", str(directory / "redis.log"), *DURABLE_ARGS])
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="bundle root the ranking service loads")
    parser.add_argument("--dir", default=str(ROOT / "var" / "bench-events"),
                        help="where the SQLite file and the Redis AOF go (a real disk)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=8, help="handler threads, service and echo alike")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"])
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    from recsys.procs import start_service

    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base))
    results: dict = {"concurrency": args.concurrency, "seconds": args.seconds, "rows": []}
    echo, echo_addr = start_echo(args.workers, tmp)
    baseline = {}
    try:
        for bs in args.batch_sizes:
            baseline[bs] = run_load(echo_addr, "echo", bs, args.concurrency, args.seconds)
    finally:
        echo.terminate()
        echo.wait()
    for backend in args.backends:
        redis_proc = None
        if backend == "sqlite":
            store_args = ["--event-db", str(tmp / "events.sqlite3")]
        else:
            (tmp / "redis").mkdir()
            redis_proc, url = start_redis(tmp / "redis")
            store_args = ["--event-store-url", url]
        rank = start_service("ranking", ["--bundle", args.bundle, "--candidate-address", "127.0.0.1:1",
                                         "--workers", str(args.workers), *store_args], tmp / "logs")
        try:
            if backend == "sqlite":
                from ranking_svc.events import SQLiteEventStore

                store = SQLiteEventStore(tmp / "direct.sqlite3")
            else:
                from ranking_svc.redis_events import RedisEventStore

                store = RedisEventStore(url, prefix="bench-direct")
            for bs in args.batch_sizes:
                results.setdefault("direct", []).append(
                    {"backend": backend, "batch": bs, **run_store(store, backend, bs, args.seconds / 2)})
            store.close()
            for bs in args.batch_sizes:
                r = run_load(rank.address, backend, bs, args.concurrency, args.seconds)
                b = baseline[bs]
                row = {"backend": backend, "batch": bs, **r, "baseline": b,
                       "throughput_ratio": r["batches_per_s"] / b["batches_per_s"],
                       "p99_ratio": r["p99_ms"] / b["p99_ms"]}
                results["rows"].append(row)
        finally:
            rank.stop()
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait()
    print(f"LogEvents, closed loop, concurrency {args.concurrency}, {args.seconds:g} s per row, "
          f"stores in {base}")
    print(f"{'target':<8} {'batch':>5} {'batches/s':>10} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'x echo rps':>10} {'x echo p99':>10} errors")
    for bs in args.batch_sizes:
        b = baseline[bs]
        print(f"{'echo':<8} {bs:>5} {b['batches_per_s']:>10.0f} {b['events_per_s']:>10.0f} {b['p50_ms']:>8.2f} "
              f"{b['p99_ms']:>8.2f} {1:>10.2f} {1:>10.2f} {b['errors']}")
        for row in results["rows"]:
            if row["batch"] == bs:
                print(f"{row['backend']:<8} {bs:>5} {row['batches_per_s']:>10.0f} {row['events_per_s']:>10.0f} "
                      f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['throughput_ratio']:>10.3f} "
                      f"{row['p99_ratio']:>10.1f} {row['errors']}")
    print("\nthe store's append alone (one thread, in this process):")
    print(f"{'store':<8} {'batch':>5} {'batches/s':>10} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for d in results.get("direct", []):
        print(f"{d['backend']:<8} {d['batch']:>5} {d['batches_per_s']:>10.0f} {d['events_per_s']:>10.0f} "
              f"{d['p50_ms']:>8.2f} {d['p99_ms']:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "baseline": baseline}, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
