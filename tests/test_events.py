"""The event store (ranking_svc/events.py): one contract, run against every implementation.

`TestEventStoreContract` is the interface every store must satisfy (SQLite on a real file
in tmp_path, Redis on a real redis-server, and the in-memory one); `TestSQLiteEventStore` adds what only the durable
store promises: data on disk across reopen, WAL + synchronous=FULL, and no lost writes
under concurrent writers and readers.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ranking_svc.events import (
    EVENT_TYPES,
    TRENDING_HALF_LIFE_MS,
    MemoryEventStore,
    SQLiteEventStore,
    StoredEvent,
)

# ------------------------------------------------------------------------------ helpers


def event(key: str, user: str = "u1", ts: int = 1_000, event_type: str = "click",
          value: float = 1.0, item: str = "i1", query: str = "") -> StoredEvent:
    return StoredEvent(
        idempotency_key=key, user_id=user, item_id=item, event_type=event_type,
        value=value, timestamp_ms=ts, query=query,
    )


_redis_prefixes = itertools.count()


def make_store(kind: str, tmp_path: Path, request=None):
    if kind == "sqlite":
        return SQLiteEventStore(tmp_path / "db" / "events.sqlite3")
    if kind == "memory":
        return MemoryEventStore()
    if kind == "redis":
        from ranking_svc.redis_events import RedisEventStore

        # one server per session; each test its own key prefix, so no test sees another's events
        server = request.getfixturevalue("redis_server")
        return RedisEventStore(server.url, prefix=f"test{next(_redis_prefixes)}")
    raise ValueError(kind)


@pytest.fixture(params=["sqlite", "memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request, tmp_path):
    s = make_store(request.param, tmp_path, request)
    yield s
    s.close()


# ------------------------------------------------------------------------------ contract


class TestEventStoreContract:
    def test_append_returns_stored_and_duplicates(self, store):
        assert store.append([event("a"), event("b"), event("c")]) == (3, 0)
        assert store.append([]) == (0, 0)

    def test_retried_batch_is_stored_once(self, store):
        batch = [event(f"k{i}", ts=1_000 + i) for i in range(5)]
        assert store.append(batch) == (5, 0)
        assert store.append(batch) == (0, 5), "a retried batch must be all duplicates"
        # a partly new retry stores only the new keys
        assert store.append(batch[:2] + [event("k5", ts=2_000)]) == (1, 2)
        assert len(store.user_events("u1", 100)) == 6

    def test_duplicates_inside_one_batch(self, store):
        batch = [event("x", ts=1), event("y", ts=2), event("x", ts=3), event("x", ts=4)]
        assert store.append(batch) == (2, 2)
        got = store.user_events("u1", 10)
        assert sorted(e.idempotency_key for e in got) == ["x", "y"]
        # the first occurrence of a key wins; later copies are ignored, not merged
        assert {e.idempotency_key: e.timestamp_ms for e in got}["x"] == 1

    def test_round_trip_keeps_every_field(self, store):
        e = event("q1", user="user-7", item="item-9", event_type="search", value=0.25,
                  ts=1_700_000_000_123, query="time travel")
        store.append([e])
        assert store.user_events("user-7", 1) == [e]

    def test_user_events_newest_first_by_timestamp(self, store):
        # appended out of time order, so insertion order cannot fake the answer
        stamps = [500, 100, 900, 300, 700, 200, 800]
        store.append([event(f"e{ts}", ts=ts) for ts in stamps])
        got = [e.timestamp_ms for e in store.user_events("u1", 100)]
        assert got == sorted(stamps, reverse=True)

    def test_user_events_respects_limit(self, store):
        store.append([event(f"e{ts}", ts=ts) for ts in range(10, 0, -1)])
        assert [e.timestamp_ms for e in store.user_events("u1", 3)] == [10, 9, 8]
        assert [e.timestamp_ms for e in store.user_events("u1", 1)] == [10]
        assert len(store.user_events("u1", 1_000)) == 10

    def test_user_events_only_that_user(self, store):
        store.append([
            event("a1", user="alice", ts=1), event("b1", user="bob", ts=2),
            event("a2", user="alice", ts=3), event("b2", user="bob", ts=4),
            event("c1", user="alice-2", ts=5),  # a prefix of no one: no LIKE matching
        ])
        assert [e.idempotency_key for e in store.user_events("alice", 10)] == ["a2", "a1"]
        assert [e.idempotency_key for e in store.user_events("bob", 10)] == ["b2", "b1"]
        assert store.user_events("nobody", 10) == []

    def test_all_events_holds_every_stored_event_once(self, store):
        batch = [event(f"k{i}", user=f"user{i % 3}", ts=i) for i in range(12)]
        store.append(batch + batch[:4])
        got = list(store.all_events())
        assert sorted(got, key=lambda e: e.timestamp_ms) == batch

    def test_item_stats_known_answer(self, store):
        day = 86_400_000
        half = TRENDING_HALF_LIFE_MS
        t1, t2 = 10 * day, 10 * day + half  # two clicks one half-life apart
        store.append([
            event("c1", item="hot", ts=t1), event("c2", item="hot", ts=t2, user="u2"),
            event("i1", item="hot", ts=t2, event_type="impression"),
            event("i2", item="hot", ts=t2, event_type="impression", user="u2"),
            event("i3", item="hot", ts=t2, event_type="impression", user="u3"),
            event("s1", item="", ts=t2, event_type="search", query="q"),  # no item: no stats
            event("l1", item="other", ts=t1, event_type="like"),
            event("d1", item="other", ts=t2, event_type="dislike"),  # neither click nor trending
        ])
        store.append([event("c1", item="hot", ts=t2)])  # a duplicate changes nothing
        now = t2 + 2 * half
        got = store.item_stats(["hot", "other", "never"], now)
        # hot: at t2 the value is 0.5 (t1 decayed one half-life) + 1 = 1.5; two half-lives on: 0.375
        expected_hot = (0.5 + 1.0) * 0.25
        expected_other = 0.5 ** 3  # one like three half-lives before `now`
        assert got.clicks == [2.0, 1.0, 0.0]
        assert got.impressions == [3.0, 0.0, 0.0]
        assert got.trending == pytest.approx([expected_hot, expected_other, 0.0], rel=1e-9), got.trending
        assert got.updated_ms == t2

    def test_item_stats_late_event_decays_to_the_newer_time(self, store):
        half = TRENDING_HALF_LIFE_MS
        store.append([event("new", item="x", ts=5 * half)])
        store.append([event("late", item="x", ts=4 * half)])  # arrives after a newer one
        assert store.item_stats(["x"], 5 * half).trending == pytest.approx([1.5], rel=1e-9)
        # read before the last update: no growth backwards in time
        assert store.item_stats(["x"], 0).trending == pytest.approx([1.5], rel=1e-9)

    def test_delete_before_yields_then_removes_old_events_keeping_stats(self, store):
        store.append([event(f"e{ts}", ts=ts, user=f"u{ts % 3}") for ts in range(1, 11)])
        before = store.item_stats(["i1"], 20)
        archived = [e for chunk in store.delete_before(6, batch=2) for e in chunk]
        assert sorted(e.timestamp_ms for e in archived) == [1, 2, 3, 4, 5]
        left = sorted(e.timestamp_ms for u in ("u0", "u1", "u2") for e in store.user_events(u, 100))
        assert left == [6, 7, 8, 9, 10]
        assert sorted(e.timestamp_ms for e in store.all_events()) == [6, 7, 8, 9, 10]
        assert store.item_stats(["i1"], 20) == before, "compaction must keep item stats"
        assert list(store.delete_before(6)) == []

    def test_same_key_for_another_user_is_a_duplicate(self, store):
        # the idempotency key alone identifies an event, whoever sends it
        assert store.append([event("k", user="alice")]) == (1, 0)
        assert store.append([event("k", user="bob")]) == (0, 1)
        assert store.user_events("bob", 10) == []


# ------------------------------------------------------------------------------ StoredEvent


# (event_type, value) -> (is_positive, is_negative, marks_seen)
EVENT_FLAGS = [
    ("impression", 1.0, (False, False, False)),
    ("search", 1.0, (False, False, False)),
    ("click", 1.0, (True, False, True)),
    ("like", 1.0, (True, False, True)),
    ("watch", 93.0, (True, False, True)),
    ("dislike", 1.0, (False, True, True)),
    ("rating", 5.0, (True, False, True)),
    ("rating", 4.0, (True, False, True)),   # boundary: >= 4 is positive
    ("rating", 3.5, (False, False, True)),
    ("rating", 3.0, (False, False, True)),
    ("rating", 2.5, (False, False, True)),
    ("rating", 2.0, (False, True, True)),   # boundary: <= 2 is negative
    ("rating", 0.5, (False, True, True)),
]


def test_event_flag_table_covers_every_event_type():
    assert {t for t, _, _ in EVENT_FLAGS} == set(EVENT_TYPES)


@pytest.mark.parametrize(("event_type", "value", "expected"), EVENT_FLAGS,
                         ids=[f"{t}-{v}" for t, v, _ in EVENT_FLAGS])
def test_stored_event_flags(event_type, value, expected):
    e = event("k", event_type=event_type, value=value)
    assert (e.is_positive, e.is_negative, e.marks_seen) == expected


# ------------------------------------------------------------------------------ SQLite only


class TestSQLiteEventStore:
    def test_data_survives_close_and_reopen(self, tmp_path):
        path = tmp_path / "events.sqlite3"
        first = SQLiteEventStore(path)
        batch = [event(f"e{i}", ts=i, value=float(i)) for i in range(20)]
        assert first.append(batch) == (20, 0)
        first.close()

        second = SQLiteEventStore(path)
        try:
            got = second.user_events("u1", 100)
            assert got == sorted(batch, key=lambda e: e.timestamp_ms, reverse=True)
            # the idempotency keys persisted too: a retry after restart is still a duplicate
            assert second.append(batch[:5]) == (0, 5)
        finally:
            second.close()

    def test_store_from_before_item_stats_is_counted_once_on_open(self, tmp_path):
        path = tmp_path / "events.sqlite3"
        s = SQLiteEventStore(path)
        s.append([event("a", ts=10), event("b", ts=10, user="u2"),
                  event("c", ts=10, event_type="impression")])
        expected = s.item_stats(["i1"], 10)
        s.close()
        conn = sqlite3.connect(path)
        conn.execute("DROP TABLE item_stats")  # as a store written by the previous version
        conn.commit()
        conn.close()
        for _ in range(2):  # rebuilt on the first open only
            s = SQLiteEventStore(path)
            assert s.item_stats(["i1"], 10) == expected
            s.close()
        assert expected.clicks == [2.0] and expected.impressions == [1.0]

    def test_wal_and_synchronous_full_on_every_connection(self, tmp_path):
        s = SQLiteEventStore(tmp_path / "events.sqlite3")
        try:
            s.append([event("a")])
            reader = s._reader()  # this thread's read connection
            seen: dict[str, sqlite3.Connection] = {"writer": s._writer, "reader": reader}
            other: list[sqlite3.Connection] = []
            t = threading.Thread(target=lambda: other.append(s._reader()))
            t.start()
            t.join()
            seen["reader (other thread)"] = other[0]
            assert other[0] is not reader, "each thread should get its own read connection"
            for name, conn in seen.items():
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal", name
                assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2, (
                    f"{name}: synchronous must be 2 (FULL) so an acknowledged batch is on disk"
                )
        finally:
            s.close()

    def test_concurrent_appends_and_reads_lose_nothing(self, tmp_path):
        path = tmp_path / "events.sqlite3"
        s = SQLiteEventStore(path)
        n_threads, n_batches, batch_size = 8, 50, 4
        start = threading.Barrier(n_threads)

        def worker(t: int) -> list[tuple[int, int]]:
            start.wait(timeout=30)  # all threads hit the store at once
            out = []
            for b in range(n_batches):
                batch = [event(f"t{t}-b{b}-{j}", user=f"user{t}", ts=b * batch_size + j)
                         for j in range(batch_size)]
                # every other batch is retried at once, as a client on a lost ack would
                out.append(s.append(batch))
                if b % 2:
                    out.append(s.append(batch))
                newest = s.user_events(f"user{t}", 5)[0].timestamp_ms
                if newest != b * batch_size + batch_size - 1:
                    raise AssertionError(f"thread {t} batch {b}: read ts {newest} after own write")
            return out

        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            futures = {t: pool.submit(worker, t) for t in range(n_threads)}
            results = {t: f.result(timeout=60) for t, f in futures.items()}  # re-raises
        s.close()

        expected_rows = n_threads * n_batches * batch_size
        for t, out in results.items():
            assert sum(stored for stored, _ in out) == n_batches * batch_size, f"thread {t}"
            assert sum(dup for _, dup in out) == (n_batches // 2) * batch_size, f"thread {t}"
        conn = sqlite3.connect(path)
        try:
            (rows,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
            per_user = dict(conn.execute("SELECT user_id, COUNT(*) FROM events GROUP BY user_id"))
        finally:
            conn.close()
        assert rows == expected_rows
        assert per_user == {f"user{t}": n_batches * batch_size for t in range(n_threads)}


# ------------------------------------------------------------------------------ Redis only


@pytest.mark.redis
class TestRedisEventStore:
    @pytest.mark.parametrize(("setting", "unsafe"), [
        ("appendfsync", "everysec"),  # up to a second of acknowledged events lost on a crash
        ("appendonly", "no"),  # nothing on disk at all
        ("no-appendfsync-on-rewrite", "yes"),  # no fsync while the AOF is rewritten
        ("maxmemory-policy", "allkeys-lru"),  # events evicted under memory pressure
    ])
    def test_refuses_a_server_that_could_lose_acknowledged_events(self, redis_server, setting, unsafe):
        import redis

        from ranking_svc.redis_events import RedisDurabilityError, RedisEventStore

        admin = redis.Redis.from_url(redis_server.url)
        safe = admin.config_get(setting)[setting]
        admin.config_set(setting, unsafe)
        try:
            with pytest.raises(RedisDurabilityError) as info:
                RedisEventStore(redis_server.url, prefix="refused")
            assert setting in str(info.value) and repr(unsafe) in str(info.value), str(info.value)
        finally:
            admin.config_set(setting, safe)
            admin.close()
        RedisEventStore(redis_server.url, prefix="accepted").close()  # restored: accepted again

    def test_acknowledged_events_survive_sigkill_of_redis(self, tmp_path):
        from ranking_svc.redis_events import RedisEventStore
        from tests.redis_server import RedisServer

        server = RedisServer(tmp_path / "redis").start()
        try:
            s = RedisEventStore(server.url)
            batch = [event(f"e{i}", ts=i % 7, value=float(i)) for i in range(50)]
            assert s.append(batch) == (50, 0)
            server.kill()  # no shutdown: only what appendfsync always put on disk survives
            server.start()
            got = s.user_events("u1", 100)  # the same client reconnects
            # newest first; equal timestamps: the later insert first
            assert got == sorted(batch, key=lambda e: (e.timestamp_ms, int(e.idempotency_key[1:])),
                                 reverse=True)
            assert s.append(batch[:5]) == (0, 5), "idempotency keys must survive the restart too"
            s.close()
        finally:
            server.stop()
