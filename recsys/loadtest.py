"""`recsys loadtest`: load on RankingService.Recommend over real gRPC (loopback only).

Two modes, both bounded by a duration and a request count:

- **closed loop** (`concurrency=N`): N requests in flight per client process, each sent as
  soon as the previous one returns. Measures capacity; hides queueing from the latency.
- **open loop** (`rate=R`): request i is *scheduled* at `start + i/R` whatever happened
  to earlier ones, and its latency is measured from that intended time, not from when the
  client got round to sending it. A stalled server therefore shows up in the percentiles
  instead of silently slowing the client down (coordinated omission).

Each client process runs one asyncio loop over one `grpc.aio` channel and records
latencies in microseconds into an HDR histogram (1 us .. 60 s, 3 significant digits), one
for the whole run and one per second for the plot; the parent merges the encoded
histograms. Requests whose intended start falls inside the warm-up are sent but not
recorded. The user mix is drawn per request from a bundle: known users, heavy users (the
top decile by training history), cold users (unknown id with demographics) and new users
(unknown id, nothing else).
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HIGHEST_US = 60_000_000
SIG_DIGITS = 3
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
DEFAULT_MIX = {"known": 0.7, "heavy": 0.1, "cold": 0.1, "new": 0.1}
MAX_INFLIGHT = 4096  # open loop: past this many outstanding calls the scheduler waits
MAX_SECONDS = 3600.0
MAX_REQUESTS = 10_000_000


@dataclass(frozen=True)
class UserPool:
    """Ids to draw from: `known` (every bundle user) and `heavy` (the longest histories)."""

    known: tuple[str, ...] = ()
    heavy: tuple[str, ...] = ()
    regions: tuple[str, ...] = ("",)
    items: tuple[str, ...] = ()  # item ids for LogEvents (catalog order)

    @classmethod
    def from_bundle(cls, path: str | Path, heavy_share: float = 0.1) -> "UserPool":
        """Reads users.json and the history index only (no model loading, no checksums)."""
        from recsys.bundle import resolve_version_dir

        vdir = resolve_version_dir(path)
        users = json.loads((vdir / "users.json").read_text())
        ids = list(users["user_ids"])
        indptr = np.load(vdir / "user_seen_indptr.npy")
        sizes = np.diff(indptr)[: len(ids)]
        n_heavy = max(1, int(len(ids) * heavy_share)) if ids else 0
        heavy_rows = np.argsort(-sizes, kind="stable")[:n_heavy]
        regions = sorted({str(r) for r in users.get("region", []) if r}) or [""]
        items = json.loads((vdir / "catalog.json").read_text()).get("item_ids", [])
        return cls(tuple(ids), tuple(ids[int(r)] for r in heavy_rows), tuple(regions), tuple(items))


@dataclass(frozen=True)
class LoadSpec:
    address: str
    concurrency: int = 0  # closed loop when > 0
    rate: float = 0.0  # open loop (requests per second, all processes together) when > 0
    duration_s: float = 10.0
    requests: int = 0  # stop after this many recorded requests (0 = duration only)
    warmup_s: float = 1.0
    processes: int = 1
    k: int = 10
    timeout_s: float = 5.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    events_share: float = 0.0  # share of calls that are LogEvents (1..3 events) instead of Recommend
    seed: int = 0

    def validate(self) -> "LoadSpec":
        if (self.concurrency > 0) == (self.rate > 0):
            raise ValueError("give exactly one of concurrency (closed loop) or rate (open loop)")
        target = self.address.removeprefix("ipv4:")  # one address, or gRPC's list of replicas
        if any(a.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost") for a in target.split(",")):
            raise ValueError(f"address: {self.address!r} is not loopback (load tests stay on this machine)")
        if not 0 < self.duration_s <= MAX_SECONDS:
            raise ValueError(f"duration_s: {self.duration_s} out of range (0, {MAX_SECONDS}]")
        if not 0 <= self.requests <= MAX_REQUESTS:
            raise ValueError(f"requests: {self.requests} out of range 0..{MAX_REQUESTS}")
        if not 0 <= self.warmup_s <= MAX_SECONDS:
            raise ValueError(f"warmup_s: {self.warmup_s} out of range")
        if not 1 <= self.processes <= 64:
            raise ValueError(f"processes: {self.processes} out of range 1..64")
        if self.concurrency > 10_000:
            raise ValueError(f"concurrency: {self.concurrency} out of range 1..10000")
        if not 0.0 <= self.events_share <= 1.0:
            raise ValueError(f"events_share: {self.events_share} out of range 0..1")
        if self.rate > 100_000:
            raise ValueError(f"rate: {self.rate} out of range (0, 100000]")
        unknown = set(self.mix) - set(DEFAULT_MIX)
        if unknown or sum(self.mix.values()) <= 0 or min(self.mix.values(), default=0) < 0:
            raise ValueError(f"mix: {self.mix} (kinds {sorted(DEFAULT_MIX)}, non-negative, sum > 0)")
        return self


def parse_mix(text: str) -> dict[str, float]:
    """'known=0.7,heavy=0.1,cold=0.1,new=0.1' -> dict (missing kinds get 0)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, share = part.partition("=")
        if not sep or kind not in DEFAULT_MIX:
            raise ValueError(f"mix: expected KIND=SHARE with KIND in {sorted(DEFAULT_MIX)}, got {part!r}")
        out[kind] = float(share)
    return out


def _histogram():
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, HIGHEST_US, SIG_DIGITS)


def _percentiles_ms(hist) -> dict[str, float]:
    if hist.get_total_count() == 0:
        return {name: 0.0 for name, _ in PERCENTILES} | {"max": 0.0, "mean": 0.0}
    out = {name: round(hist.get_value_at_percentile(q) / 1000, 3) for name, q in PERCENTILES}
    out["max"] = round(hist.get_max_value() / 1000, 3)
    out["mean"] = round(hist.get_mean_value() / 1000, 3)
    return out


# ---- one client process ------------------------------------------------------------------
class _Requests:
    """Draws (user id, features) per the mix; deterministic per (seed, process)."""

    def __init__(self, pool: UserPool, mix: dict[str, float], seed: int, proc: int) -> None:
        self.rng = np.random.default_rng([seed, proc])
        kinds = [k for k in DEFAULT_MIX if mix.get(k, 0) > 0]
        if not pool.known:  # nothing to draw known/heavy users from: everyone is new
            kinds = [k for k in kinds if k in ("cold", "new")] or ["new"]
        weights = np.array([mix.get(k, 1.0) for k in kinds], dtype=np.float64)
        self.kinds, self.p = kinds, weights / weights.sum()
        self.pool, self.proc, self.n = pool, proc, 0
        # distinct per run so reruns against one event store are new users and new events
        self.run = uuid.uuid4().hex[:8]

    def events(self, user_id: str):
        """A LogEvents batch of 1..3 click/like/impression events for this user."""
        from recsys.v1 import ranking_pb2

        kinds = (ranking_pb2.EVENT_TYPE_IMPRESSION, ranking_pb2.EVENT_TYPE_CLICK, ranking_pb2.EVENT_TYPE_LIKE)
        now_ms = int(time.time() * 1000)
        batch = []
        for j in range(int(self.rng.integers(1, 4))):
            item = (self.pool.items[int(self.rng.integers(len(self.pool.items)))] if self.pool.items
                    else f"lt-item-{int(self.rng.integers(1000))}")
            batch.append(ranking_pb2.Event(
                idempotency_key=f"lt-{self.run}-{self.proc}-{self.n}-{j}", user_id=user_id, item_id=item,
                type=kinds[int(self.rng.integers(len(kinds)))], timestamp_ms=now_ms))
        return ranking_pb2.LogEventsRequest(events=batch)

    def next(self):
        from recsys.v1 import common_pb2

        kind = self.kinds[int(self.rng.choice(len(self.kinds), p=self.p))]
        self.n += 1
        if kind == "known":
            return kind, self.pool.known[int(self.rng.integers(len(self.pool.known)))], None
        if kind == "heavy":
            return kind, self.pool.heavy[int(self.rng.integers(len(self.pool.heavy)))], None
        uid = f"lt-{kind}-{self.run}-{self.proc}-{self.n}"
        if kind == "cold":
            region = self.pool.regions[int(self.rng.integers(len(self.pool.regions)))]
            return kind, uid, common_pb2.UserFeatures(age=int(self.rng.integers(18, 70)), region=region)
        return kind, uid, None


async def _drive(spec: LoadSpec, pool: UserPool, proc: int, start_wall: float, progress) -> dict[str, Any]:
    import grpc

    from recsys.v1 import ranking_pb2, ranking_pb2_grpc

    overall = _histogram()
    per_second: dict[int, Any] = {}
    per_method: dict[str, Any] = {}
    errors: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    degraded = 0
    recorded = 0
    draw = _Requests(pool, spec.mix, spec.seed, proc)
    # Both bounds are per process: each process gets its share of the requests and rate.
    quota = math.ceil(spec.requests / spec.processes) if spec.requests else 0
    rate = spec.rate / spec.processes
    loop = asyncio.get_running_loop()
    t0 = loop.time() + (start_wall - time.time())  # the common start, on this loop's clock
    warm_end = t0 + spec.warmup_s
    end = warm_end + spec.duration_s
    done = asyncio.Event()

    from recsys.grpc_server import client_channel_options

    # retries off: the load generator must count every failed attempt, not what a retry hid
    options = [*client_channel_options(), ("grpc.enable_retries", 0)]
    async with grpc.aio.insecure_channel(spec.address, options=options) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        await asyncio.wait_for(channel.channel_ready(), timeout=30)

        async def call(intended: float) -> None:
            nonlocal degraded, recorded
            kind, uid, features = draw.next()
            code = "OK"
            is_degraded = False
            method = "LogEvents" if spec.events_share and draw.rng.random() < spec.events_share else "Recommend"
            try:
                if method == "LogEvents":
                    await stub.LogEvents(draw.events(uid), timeout=spec.timeout_s)
                else:
                    req = ranking_pb2.RecommendRequest(user_id=uid, k=spec.k, features=features)
                    resp = await stub.Recommend(req, timeout=spec.timeout_s)
                    is_degraded = resp.degraded
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            finished = loop.time()
            if intended < warm_end or done.is_set():
                return
            latency_us = max(1, min(HIGHEST_US, int((finished - intended) * 1e6)))
            overall.record_value(latency_us)
            second = int(finished - warm_end)
            if second not in per_second:
                per_second[second] = _histogram()
            per_second[second].record_value(latency_us)
            if method not in per_method:
                per_method[method] = _histogram()
            per_method[method].record_value(latency_us)
            recorded += 1
            kinds[kind] += 1
            progress.add(code != "OK")
            if code != "OK":
                errors[code] += 1
            elif is_degraded:
                degraded += 1
            if quota and recorded >= quota:
                done.set()

        await asyncio.sleep(max(0.0, t0 - loop.time()))
        if spec.concurrency:
            async def closed_worker() -> None:
                while not done.is_set() and loop.time() < end:
                    await call(loop.time())

            await asyncio.wait_for(
                asyncio.gather(*(closed_worker() for _ in range(spec.concurrency))),
                timeout=spec.warmup_s + spec.duration_s + spec.timeout_s + 5,
            )
        else:
            inflight = asyncio.Semaphore(MAX_INFLIGHT)
            tasks: set[asyncio.Task] = set()
            i = 0
            while not done.is_set():
                intended = t0 + i / rate
                if intended >= end:
                    break
                delay = intended - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await inflight.acquire()  # latency still counts from `intended`

                async def one(at: float = intended) -> None:
                    try:
                        await call(at)
                    finally:
                        inflight.release()

                task = asyncio.ensure_future(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if tasks:
                await asyncio.wait(tasks, timeout=spec.timeout_s + 5)
    elapsed = min(loop.time(), end) - warm_end
    return {
        "recorded": recorded,
        "elapsed_s": max(elapsed, 1e-9),
        "errors": dict(errors),
        "degraded": degraded,
        "kinds": dict(kinds),
        "histogram": overall.encode(),
        "per_second": {s: h.encode() for s, h in sorted(per_second.items())},
        "per_method": {m: h.encode() for m, h in per_method.items()},
    }


class _Progress:
    """Completed / failed counters shared with the parent (a plain object in-process)."""

    def __init__(self, shared=None) -> None:
        self.shared = shared
        self.done = 0
        self.failed = 0

    def add(self, failed: bool) -> None:
        if self.shared is not None:
            with self.shared.get_lock():
                self.shared[0] += 1
                self.shared[1] += int(failed)
        else:
            self.done += 1
            self.failed += int(failed)

    def read(self) -> tuple[int, int]:
        if self.shared is not None:
            return int(self.shared[0]), int(self.shared[1])
        return self.done, self.failed


def _process_main(spec: LoadSpec, pool: UserPool, proc: int, start_wall: float, shared, results) -> None:
    try:
        out = asyncio.run(_drive(spec, pool, proc, start_wall, _Progress(shared)))
    except Exception as e:  # reported to the parent, which raises
        out = {"failure": f"{type(e).__name__}: {e}"}
    results.put((proc, out))


# ---- the parent ---------------------------------------------------------------------------
def run(spec: LoadSpec, pool: UserPool = UserPool(), progress: bool = False) -> dict[str, Any]:
    """Run one load and return the report (see `merge`)."""
    spec.validate()
    start_lead = 0.3 if spec.processes == 1 else 3.0  # spawned clients need time to import
    start_wall = time.time() + start_lead
    if spec.processes == 1:
        prog = _Progress()
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["out"] = asyncio.run(_drive(spec, pool, 0, start_wall, prog))
            except Exception as e:
                box["out"] = {"failure": f"{type(e).__name__}: {e}"}

        thread = threading.Thread(target=target, name="loadtest", daemon=True)
        thread.start()
        _watch(spec, start_wall, prog.read, lambda: not thread.is_alive(), progress)
        thread.join()
        parts = [box["out"]]
    else:
        ctx = mp.get_context("spawn")  # never fork a process that holds gRPC state
        shared = ctx.Array("q", 2)
        results = ctx.Queue()
        procs = [ctx.Process(target=_process_main, args=(spec, pool, i, start_wall, shared, results), daemon=True)
                 for i in range(spec.processes)]
        for p in procs:
            p.start()
        got: dict[int, dict] = {}
        limit = time.time() + start_lead + spec.warmup_s + spec.duration_s + spec.timeout_s + 60

        def finished() -> bool:
            while not results.empty():
                i, out = results.get()
                got[i] = out
            return len(got) == spec.processes or time.time() > limit

        _watch(spec, start_wall, lambda: (shared[0], shared[1]), finished, progress)
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        if len(got) < spec.processes:
            raise RuntimeError(f"only {len(got)} of {spec.processes} client processes reported")
        parts = [got[i] for i in sorted(got)]
    failures = [p["failure"] for p in parts if "failure" in p]
    if failures:
        raise RuntimeError(f"load client failed: {failures[0]}")
    return merge(spec, parts)


def _watch(spec: LoadSpec, start_wall: float, read, finished, enabled: bool) -> None:
    """The live progress line on stderr (one line per second when stderr is not a tty)."""
    tty = sys.stderr.isatty()
    last_done, last_t = 0, time.time()
    while not finished():
        time.sleep(0.02)
        now = time.time()
        if not enabled or now - last_t < (0.25 if tty else 1.0):
            continue
        done, failed = read()
        rps = (done - last_done) / max(now - last_t, 1e-9)
        last_done, last_t = done, now
        phase = "warm-up" if now < start_wall + spec.warmup_s else "measuring"
        line = (f"[{max(0.0, now - start_wall):6.1f}s {phase:>9}] recorded {done:>8}"
                f"  errors {failed:>6}  {rps:8.1f} rps")
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
    if enabled and tty:
        print(file=sys.stderr)


def merge(spec: LoadSpec, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the clients' counts and histograms into the JSON report."""
    from hdrh.histogram import HdrHistogram

    overall = _histogram()
    seconds: dict[int, Any] = {}
    methods: dict[str, Any] = {}
    errors: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for part in parts:
        overall.add(HdrHistogram.decode(part["histogram"]))
        for m, enc in part.get("per_method", {}).items():
            methods.setdefault(m, _histogram()).add(HdrHistogram.decode(enc))
        for s, enc in part["per_second"].items():
            seconds.setdefault(int(s), _histogram()).add(HdrHistogram.decode(enc))
        errors.update(part["errors"])
        kinds.update(part["kinds"])
    requests = sum(p["recorded"] for p in parts)
    elapsed = max(p["elapsed_s"] for p in parts)
    timeline = [{"second": s, "requests": h.get_total_count(), **_percentiles_ms(h)}
                for s, h in sorted(seconds.items())
                if s < max(1, int(spec.duration_s))]  # drop the partial bin of calls still in flight at the end
    return {
        "mode": "closed" if spec.concurrency else "open",
        "address": spec.address,
        "concurrency": spec.concurrency or None,
        "target_rps": spec.rate or None,
        "processes": spec.processes,
        "warmup_s": spec.warmup_s,
        "duration_s": round(elapsed, 3),
        "requests": requests,
        "rps": round(requests / elapsed, 1),  # answered, errors included (open loop: the offered rate)
        "ok_rps": round((requests - sum(errors.values())) / elapsed, 1),  # answered without an error
        "latency_ms": _percentiles_ms(overall),
        "errors": dict(sorted(errors.items())),
        "degraded": sum(p["degraded"] for p in parts),
        "mix": dict(sorted(kinds.items())),
        "by_method": {m: {"requests": h.get_total_count(), "latency_ms": _percentiles_ms(h)}
                      for m, h in sorted(methods.items())},
        "spec": {k: v for k, v in asdict(spec).items() if k != "address"},
        "timeline": timeline,
    }


def sweep(spec: LoadSpec, rates: list[float], pool: UserPool = UserPool(), progress: bool = False) -> dict[str, Any]:
    """Open-loop runs at each rate in turn: the throughput / latency curve."""
    from dataclasses import replace

    runs = []
    for rate in rates:
        if progress:
            print(f"-- sweep: {rate:g} rps", file=sys.stderr)
        runs.append(run(replace(spec, rate=rate, concurrency=0), pool, progress))
    return {"sweep": [{k: r[k] for k in ("target_rps", "rps", "ok_rps", "requests", "latency_ms", "errors",
                                         "degraded")}
                      for r in runs], "runs": runs}


# ---- report output ---------------------------------------------------------------------------
def summary(report: dict[str, Any]) -> str:
    """A human-readable block for stdout."""
    if "sweep" in report:
        lines = [f"{'target rps':>10} {'rps':>8} {'ok rps':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p999 ms':>8}"
                 f" {'errors':>7} {'degraded':>8}"]
        for r in report["sweep"]:
            lat = r["latency_ms"]
            lines.append(f"{r['target_rps']:>10g} {r['rps']:>8.1f} {r['ok_rps']:>8.1f} {lat['p50']:>8.2f} {lat['p90']:>8.2f}"
                         f" {lat['p99']:>8.2f} {lat['p999']:>8.2f} {sum(r['errors'].values()):>7}"
                         f" {r['degraded']:>8}")
        return "\n".join(lines)
    lat = report["latency_ms"]
    load = (f"concurrency {report['concurrency']}" if report["mode"] == "closed"
            else f"target {report['target_rps']:g} rps")
    return (f"{report['mode']} loop, {load}, {report['processes']} client process(es): "
            f"{report['requests']} requests in {report['duration_s']:.1f}s = {report['rps']:.1f} rps"
            f" ({report['ok_rps']:.1f} without error)\n"
            f"latency ms: p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}"
            f"  p99.9 {lat['p999']:.2f}  max {lat['max']:.2f}\n"
            f"errors: {report['errors'] or 'none'}  degraded: {report['degraded']}  mix: {report['mix']}")


def plot(report: dict[str, Any], path: str | Path) -> None:
    """PNG: latency percentiles per second (one run), or throughput vs latency (a sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "sweep" in report:
        fig, (curve, timeline) = plt.subplots(1, 2, figsize=(12, 4.5))
        rows = report["sweep"]
        achieved = [r["ok_rps"] for r in rows]
        for name in ("p50", "p90", "p99", "p999"):
            curve.plot(achieved, [r["latency_ms"][name] for r in rows], marker="o", label=name)
        for r in rows:
            curve.annotate(f"{r['target_rps']:g}", (r["ok_rps"], r["latency_ms"]["p99"]), fontsize=7,
                           textcoords="offset points", xytext=(3, 3))
        curve.set(xlabel="requests/s answered without error (labels: offered)", ylabel="latency ms", yscale="log",
                  title="throughput / latency (open loop)")
        curve.legend()
        curve.grid(alpha=0.3)
        _timeline(timeline, report["runs"][-1], "last rate of the sweep")
    else:
        fig, timeline = plt.subplots(figsize=(8, 4.5))
        _timeline(timeline, report, "")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _timeline(ax, report: dict[str, Any], note: str) -> None:
    rows = report["timeline"]
    xs = [r["second"] for r in rows]
    for name in ("p50", "p90", "p99", "p999"):
        ax.plot(xs, [r[name] for r in rows], label=name)
    ax.set(xlabel="second of the measured run", ylabel="latency ms", yscale="log",
           title=f"latency percentiles per second {note}".strip())
    rps = ax.twinx()
    rps.plot(xs, [r["requests"] for r in rows], color="grey", alpha=0.4, linestyle="--", label="requests/s")
    rps.set_ylabel("requests/s")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)


def write_json(report: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def run_closed_loop(address: str, known_users: list[str], concurrency: int, requests: int, k: int,
                    cold_share: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """A fixed number of closed-loop requests, no warm-up: known users plus a `cold_share`
    of never-seen ids (the shape the end-to-end tests use)."""
    pool = UserPool(tuple(known_users), tuple(known_users))
    spec = LoadSpec(address, concurrency=concurrency, requests=requests, duration_s=MAX_SECONDS / 4,
                    warmup_s=0.0, k=k, mix={"known": 1.0 - cold_share, "new": cold_share}, seed=seed)
    return run(spec, pool)
