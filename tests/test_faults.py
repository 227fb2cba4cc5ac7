"""Fault injection over real processes on loopback, each under a closed-loop load of
Recommend calls: a hot bundle swap (then two broken versions), kill -9 of the candidate
tier and its restart, SIGTERM of the ranking tier with calls in flight. docs/RELIABILITY.md
lists each fault with what the system does and this file's test that proves it."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsys.bundle import resolve_version_dir, set_latest
from recsys.procs import ServiceProcess, start_service
from recsys.v1 import candidate_pb2, candidate_pb2_grpc, ranking_pb2, ranking_pb2_grpc
from tests.bundle_faults import copy_root, publish

pytestmark = pytest.mark.slow

RELOAD_S = "0.2"
BREAKER_ENV = {"RECSYS_BREAKER_FAILURES": "3", "RECSYS_BREAKER_COOLDOWN_MS": "300"}


@dataclass
class Load:
    """Closed-loop Recommend calls from `threads` threads until stopped; every outcome kept."""

    address: str
    users: list[str]
    threads: int = 3
    results: list[tuple[int, float, str, bool, str, str]] = field(default_factory=list)  # thread, t, code, degraded, reason, version
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> "Load":
        self.channel = grpc.insecure_channel(self.address)
        stub = ranking_pb2_grpc.RankingServiceStub(self.channel)
        self.workers = [threading.Thread(target=self._run, args=(t, stub), daemon=True) for t in range(self.threads)]
        for w in self.workers:
            w.start()
        return self

    def _run(self, t: int, stub) -> None:
        n = 0
        while not self._stop.is_set():
            user = self.users[(t * 7919 + n) % len(self.users)]
            n += 1
            try:
                r = stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=5), timeout=10)
                row = (t, time.monotonic(), "OK", r.degraded, r.degraded_reason, r.bundle_version)
            except grpc.RpcError as e:
                row = (t, time.monotonic(), e.code().name, False, e.details() or "", "")
            with self._lock:
                self.results.append(row)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for w in self.workers:
            w.join(timeout=15)
        self.channel.close()

    def since(self, t0: float) -> list[tuple]:
        with self._lock:
            return [r for r in self.results if r[1] >= t0]

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        while time.monotonic() < deadline:
            if any(predicate(r) for r in self.since(t0)):
                return
            time.sleep(0.05)
        raise AssertionError(f"no response {what} within {timeout}s; last: {self.results[-3:]}")

    def failures(self) -> list[tuple]:
        with self._lock:
            return [r for r in self.results if r[2] != "OK"]


def health_status(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


@pytest.fixture(scope="module")
def stack(bundle_root, tmp_path_factory):
    """A private bundle root (the hot-swap test publishes into it), one candidate replica
    and one ranking replica, both polling LATEST every 0.2 s; the ranking replica has a
    breaker (3 failures, 0.3 s cooldown)."""
    work = tmp_path_factory.mktemp("faults")
    root = copy_root(bundle_root, work / "bundles")
    procs: dict[str, ServiceProcess] = {}
    procs["candidate"] = start_service("candidate", ["--bundle", str(root), "--reload-interval-s", RELOAD_S],
                                       work / "candidate")
    try:
        procs["ranking"] = start_service(
            "ranking", ["--bundle", str(root), "--candidate-address", procs["candidate"].address,
                        "--event-db", str(work / "events.sqlite3"), "--reload-interval-s", RELOAD_S,
                        "--retrieve-timeout-ms", "2000"],
            work / "ranking", env=BREAKER_ENV)
        yield root, procs, work
    finally:
        for p in reversed(procs.values()):  # front tier first: its health watches would hold the drain
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGCONT)
            p.stop()


def test_hot_swap_under_load_then_broken_versions_are_refused(stack, bundle):
    root, procs, _ = stack
    first_dir = resolve_version_dir(root)
    v1 = first_dir.name
    with Load(procs["ranking"].address, bundle.user_ids) as load:
        load.wait_for(lambda r: r[5] == v1, 20, f"naming {v1}")
        publish(root, "v2", base=first_dir)
        load.wait_for(lambda r: r[5] == "v2", 20, "naming v2")
        swapped = time.monotonic()
        with grpc.insecure_channel(procs["candidate"].address) as ch:
            stub = candidate_pb2_grpc.CandidateServiceStub(ch)
            deadline = time.monotonic() + 20
            while stub.Retrieve(candidate_pb2.RetrieveRequest(num_candidates=5), timeout=10).bundle_version != "v2":
                assert time.monotonic() < deadline, "candidate tier never served v2"
                time.sleep(0.1)
        publish(root, "bad-checksum", "checksum", base=first_dir)
        time.sleep(1.0)  # five polls
        publish(root, "bad-onnx", "onnx_dim", base=first_dir)
        time.sleep(1.0)
        after = [r for r in load.since(swapped + 0.5)]
    set_latest(root, "v2")  # what an operator does after a bad publish; later tests start from it
    assert not load.failures(), f"calls failed during the swap: {load.failures()[:5]}"
    assert {r[5] for r in load.results} <= {v1, "v2"}, {r[5] for r in load.results}
    for t in range(load.threads):  # per caller, versions never go backwards after the swap
        seq = [r[5] for r in load.results if r[0] == t]
        assert seq == sorted(seq, key=lambda v: v == "v2"), f"thread {t} went back to {v1} after v2"
    assert after and all(r[5] == "v2" for r in after), "broken versions must leave v2 serving"
    for kind in ("candidate", "ranking"):
        assert health_status(procs[kind].address) == health_pb2.HealthCheckResponse.SERVING
        text = procs[kind].log_path.read_text()
        for bad in ("bad-checksum", "bad-onnx"):
            assert f"refused {bad}" in text, f"{kind} did not log refusing {bad}:\n{procs[kind].log_tail()}"
    print(f"hot swap: {len(load.results)} calls, 0 failed, "
          f"{sum(r[3] for r in load.results)} degraded, versions {v1} -> v2, 2 broken versions refused")


def test_kill_9_of_the_candidate_tier_under_load_then_restart(stack, bundle):
    root, procs, work = stack
    cand = procs["candidate"]
    port = cand.port
    with Load(procs["ranking"].address, bundle.user_ids) as load:
        load.wait_for(lambda r: r[2] == "OK" and not r[3], 20, "non-degraded")
        cand.proc.kill()  # SIGKILL: no drain, connections reset
        cand.proc.wait()
        killed = time.monotonic()
        load.wait_for(lambda r: r[4].startswith("CIRCUIT_OPEN"), 20, "from the open breaker")
        time.sleep(0.5)
        procs["candidate"] = start_service(
            "candidate", ["--bundle", str(root), "--port", str(port),
                          "--reload-interval-s", RELOAD_S], work / "candidate-restarted")
        restarted = time.monotonic()
        load.wait_for(lambda r: r[2] == "OK" and not r[3], 30, "non-degraded after the restart")
        back = time.monotonic() - restarted
    down = [r for r in load.results if killed <= r[1] < restarted]
    degraded = [r for r in down if r[3]]
    assert not load.failures(), f"Recommend calls failed: {load.failures()[:5]}"
    assert down and len(degraded) == len(down), "every answer while the tier was down is degraded, none failed"
    reasons = {r[4].split(":", 1)[0] for r in degraded}
    assert "CIRCUIT_OPEN" in reasons, reasons
    print(f"kill -9: {len(load.results)} calls, 0 failed, {len(degraded)} degraded while down "
          f"(reasons {sorted(reasons)}), non-degraded again {back:.1f}s after restart")


def test_sigterm_with_calls_in_flight_drains_and_exits_0(stack, bundle):
    """Calls are held in flight by a frozen candidate tier (each waits for its Retrieve
    deadline, then answers from the fallback); SIGTERM then: health watchers see
    NOT_SERVING, every in-flight call completes OK, new calls are refused, exit 0 within
    the grace period."""
    root, procs, work = stack
    grace_s = 5.0
    rank = start_service(
        "ranking", ["--bundle", str(root), "--candidate-address", procs["candidate"].address,
                    "--event-db", str(work / "events-sigterm.sqlite3"), "--retrieve-timeout-ms", "1500"],
        work / "ranking-sigterm", env={"RECSYS_GRACE_S": str(grace_s), "RECSYS_BREAKER_FAILURES": "0"})
    cand = procs["candidate"]
    channel = grpc.insecure_channel(rank.address)
    try:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        stub.Recommend(ranking_pb2.RecommendRequest(user_id=bundle.user_ids[0], k=5), timeout=10)
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        cand.proc.send_signal(signal.SIGSTOP)
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(stub.Recommend, ranking_pb2.RecommendRequest(user_id=u, k=5), timeout=10)
                       for u in bundle.user_ids[:6]]
            time.sleep(0.5)  # all six are on the server, waiting on Retrieve
            t0 = time.monotonic()
            rank.proc.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # an open Watch is an in-flight call too: it would hold the drain to the grace end
            time.sleep(0.2)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Recommend(ranking_pb2.RecommendRequest(user_id="late", k=5), timeout=5)
            answers = [f.result() for f in futures]
        code = rank.proc.wait(grace_s + 5)
        exit_s = time.monotonic() - t0
    finally:
        cand.proc.send_signal(signal.SIGCONT)
        channel.close()
        if rank.proc.poll() is None:
            rank.proc.kill()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
    assert len(answers) == 6 and all(len(a.items) == 5 and a.degraded for a in answers), answers
    assert code == 0 and exit_s < grace_s, f"exit {code} after {exit_s:.1f}s (grace {grace_s}s)"
    print(f"SIGTERM: 6 in-flight calls answered, new call UNAVAILABLE, exit 0 after {exit_s:.1f}s")


def test_sigterm_to_the_candidate_tier_watched_by_a_ranking_replica_drains_fast_under_load(stack, bundle):
    """The ranking replica's channel keeps a health Watch open on the candidate replica
    (client-side health checking). SIGTERM to the candidate: the drain sends NOT_SERVING
    and ends that stream (recsys/health.py), so the candidate exits 0 long before its grace
    period (an open stream is an in-flight call: before, it held the drain to the end);
    meanwhile every Recommend answers OK, degraded once the tier is gone."""
    root, _, work = stack
    grace_s = 20.0
    cand = start_service("candidate", ["--bundle", str(root)], work / "candidate-drain",
                         env={"RECSYS_GRACE_S": str(grace_s)})
    rank = None
    try:
        rank = start_service(
            "ranking", ["--bundle", str(root), "--candidate-address", cand.address,
                        "--event-db", str(work / "events-drain.sqlite3"), "--retrieve-timeout-ms", "2000"],
            work / "ranking-drain", env={"RECSYS_BREAKER_FAILURES": "0"})
        with Load(rank.address, bundle.user_ids) as load:
            load.wait_for(lambda r: r[2] == "OK" and not r[3], 30, "non-degraded (the hop and its Watch are up)")
            t0 = time.monotonic()
            cand.proc.send_signal(signal.SIGTERM)
            code = cand.proc.wait(grace_s + 10)
            exit_s = time.monotonic() - t0
            load.wait_for(lambda r: r[2] == "OK" and r[3], 30, "degraded after the candidate tier left")
    finally:
        if rank is not None:
            rank.stop()
        if cand.proc.poll() is None:
            cand.proc.kill()
    assert code == 0, f"exit {code}:\n{cand.log_tail()}"
    assert exit_s < grace_s / 2, f"drain took {exit_s:.1f}s of the {grace_s}s grace: a Watch stream held it"
    assert not load.failures(), f"Recommend calls failed: {load.failures()[:5]}"
    print(f"candidate SIGTERM: {len(load.results)} calls, 0 failed, exit 0 after {exit_s:.1f}s (grace {grace_s:.0f}s)")
