"""No acknowledged event is lost, and none is stored twice, when a process dies mid-write.

The ranking service runs as a real process (its candidate tier is a dead port: LogEvents
never needs it). Writer threads send LogEvents batches with unique idempotency keys over
real gRPC and record which batches were acknowledged. At a seeded random moment the test
SIGKILLs a process (the ranking service, or for Redis the redis-server), restarts it on the
same store, and reads the store back through its own API: every acknowledged event must be
there exactly once. Then the batches that failed (in flight at the kill, or refused while
the store was down) are resent, as a client would on a lost ack: each ends up stored
exactly once, whether or not it had been committed before the kill.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from ranking_svc.events import SQLiteEventStore
from recsys.procs import start_service
from recsys.v1 import ranking_pb2, ranking_pb2_grpc

pytestmark = pytest.mark.slow

SEED = 20261127
WRITERS = 2
BATCH = 10
USERS = 5
DEAD_CANDIDATES = "127.0.0.1:1"  # nothing listens; LogEvents does not call the candidate tier


@dataclass
class Writer:
    """Sends batches until stopped; `acked` / `failed` hold the batches by outcome."""

    name: str
    address: str
    stop_on_error: bool
    acked: list[list[ranking_pb2.Event]] = field(default_factory=list)
    failed: list[list[ranking_pb2.Event]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def batch(self, b: int) -> list[ranking_pb2.Event]:
        now = int(time.time() * 1000)
        return [ranking_pb2.Event(idempotency_key=f"{self.name}-{b}-{j}", user_id=f"dur-user-{(b + j) % USERS}",
                                  item_id=f"item-{j}", type=ranking_pb2.EVENT_TYPE_CLICK, timestamp_ms=now)
                for j in range(BATCH)]

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            b = 0
            while not self.stop.is_set():
                events = self.batch(b)
                b += 1
                try:
                    ack = stub.LogEvents(ranking_pb2.LogEventsRequest(events=events), timeout=10)
                except grpc.RpcError:
                    self.failed.append(events)
                    if self.stop_on_error:
                        return
                    time.sleep(0.02)
                    continue
                if (ack.stored, ack.duplicates) != (BATCH, 0):
                    raise AssertionError(f"fresh batch acknowledged as {ack.stored} stored, {ack.duplicates} dup")
                self.acked.append(events)


def start_ranking(bundle_root: Path, logs: Path, store_args: list[str]):
    return start_service("ranking", ["--bundle", str(bundle_root), "--candidate-address", DEAD_CANDIDATES,
                                     *store_args], logs)


def stored_keys(open_store) -> Counter:
    store = open_store()
    try:
        return Counter(e.idempotency_key for u in range(USERS)
                       for e in store.user_events(f"dur-user-{u}", 100_000))
    finally:
        store.close()


def keys_of(batches: list[list[ranking_pb2.Event]]) -> list[str]:
    return [e.idempotency_key for batch in batches for e in batch]


def run_writers(address: str, stop_on_error: bool) -> tuple[list[Writer], list[threading.Thread]]:
    writers = [Writer(f"w{i}", address, stop_on_error) for i in range(WRITERS)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
    for t in threads:
        t.start()
    return writers, threads


def wait_for_acks(writers: list[Writer], n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(len(w.acked) for w in writers) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"writers got fewer than {n} acks in {timeout}s")
        time.sleep(0.01)


def check_and_resend(writers: list[Writer], open_store, address: str) -> None:
    acked = keys_of([b for w in writers for b in w.acked])
    failed = [b for w in writers for b in w.failed]
    have = stored_keys(open_store)
    lost = [k for k in acked if have[k] != 1]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged events missing or duplicated: {lost[:5]}"
    extra = set(have) - set(acked) - set(keys_of(failed))
    assert not extra, f"events nobody sent: {sorted(extra)[:5]}"
    assert all(n == 1 for n in have.values()), "an event stored twice"

    with grpc.insecure_channel(address) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        for batch in failed:  # a client retrying after a lost ack
            ack = stub.LogEvents(ranking_pb2.LogEventsRequest(events=batch), timeout=10)
            committed_before = sum(have[e.idempotency_key] for e in batch)
            assert (ack.stored, ack.duplicates) == (BATCH - committed_before, committed_before), (
                "a resent batch must store exactly what the store lacked"
            )
        if acked:  # and an acknowledged batch resent is all duplicates
            ack = stub.LogEvents(ranking_pb2.LogEventsRequest(events=writers[0].acked[0]), timeout=10)
            assert (ack.stored, ack.duplicates) == (0, BATCH)
    after = stored_keys(open_store)
    assert set(after) == set(acked) | set(keys_of(failed)) and all(n == 1 for n in after.values())


def kill_ranking_and_restart(bundle_root: Path, tmp_path: Path, store_args: list[str], open_store,
                             seed: int) -> None:
    rng = random.Random(seed)
    logs = tmp_path / "logs"
    rank = start_ranking(bundle_root, logs, store_args)
    try:
        writers, threads = run_writers(rank.address, stop_on_error=True)
        wait_for_acks(writers, 5)
        time.sleep(rng.uniform(0.0, 0.5))  # the random moment, seeded
        rank.proc.send_signal(signal.SIGKILL)
        rank.proc.wait(10)
        for t in threads:
            t.join(15)
        assert all(len(w.failed) == 1 for w in writers), "each writer stops at its first failed batch"
    finally:
        rank.stop()
    rank = start_ranking(bundle_root, logs, store_args)  # on the same store
    try:
        check_and_resend(writers, open_store, rank.address)
    finally:
        assert rank.stop() == 0


def test_sqlite_keeps_every_acknowledged_event_across_sigkill(bundle_root, tmp_path):
    path = tmp_path / "events.sqlite3"
    kill_ranking_and_restart(bundle_root, tmp_path, ["--event-db", str(path)],
                             lambda: SQLiteEventStore(path), SEED)


@pytest.mark.redis
def test_redis_keeps_every_acknowledged_event_across_sigkill_of_ranking(bundle_root, tmp_path):
    from ranking_svc.redis_events import RedisEventStore
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        kill_ranking_and_restart(bundle_root, tmp_path, ["--event-store-url", server.url],
                                 lambda: RedisEventStore(server.url), SEED + 1)
    finally:
        server.stop()


@pytest.mark.redis
def test_redis_keeps_every_acknowledged_event_across_sigkill_of_redis(bundle_root, tmp_path):
    from ranking_svc.redis_events import RedisEventStore
    from tests.redis_server import RedisServer

    rng = random.Random(SEED + 2)
    server = RedisServer(tmp_path / "redis").start()
    rank = None
    try:
        rank = start_ranking(bundle_root, tmp_path / "logs", ["--event-store-url", server.url])
        writers, threads = run_writers(rank.address, stop_on_error=False)
        wait_for_acks(writers, 5)
        time.sleep(rng.uniform(0.0, 0.5))
        server.kill()  # the store dies under the writers; ranking stays up and answers UNAVAILABLE
        with grpc.insecure_channel(rank.address) as channel, pytest.raises(grpc.RpcError) as err:
            ranking_pb2_grpc.RankingServiceStub(channel).Recommend(
                ranking_pb2.RecommendRequest(user_id="dur-user-0", k=5), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "event store" in err.value.details(), (
            err.value.code(), err.value.details())
        time.sleep(0.3)
        server.start()  # same port, same AOF directory
        acked_at_restart = sum(len(w.acked) for w in writers)
        wait_for_acks(writers, acked_at_restart + 5)  # ranking writes again without a restart
        for w in writers:
            w.stop.set()
        for t in threads:
            t.join(15)
        assert any(w.failed for w in writers), "no batch failed: the kill missed the writers"
        check_and_resend(writers, lambda: RedisEventStore(server.url), rank.address)
    finally:
        if rank is not None:
            assert rank.stop() == 0
        server.stop()
