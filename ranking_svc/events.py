"""The event store: where LogEvents writes and Recommend reads a user's recent events.

One small interface (`EventStore`); the embedded default is SQLite in WAL mode with
`synchronous=FULL`, so a batch is on disk (the WAL is fsynced at commit) before LogEvents
acknowledges it. `RedisEventStore` (ranking_svc/redis_events.py, imported only when a
Redis URL is configured) is the store several ranking replicas share. The idempotency key is the primary key: a retried batch is stored once.
Each event keeps the A/B variant that served it, so `click_rates` can compare variants.

Every stored (non-duplicate) event about an item also updates that item's online counters
in the same transaction (SQLite) or script (Redis): clicks (positive events, as training's
`item_clicks`), impressions (impression events) and a trending score decayed with
training's half-life (training/source_arrays.py). Trending is kept as (value, time of last
update) and decayed on update and on read, so no background job ages it:

    on an event at t >= t0:  value = value * 0.5 ** ((t - t0) / H) + 1,  t0 = t
    on an event at t <  t0:  value = value + 0.5 ** ((t0 - t) / H)       (late arrival)
    read at `now`:           value * 0.5 ** (max(0, now - t0) / H)
"""

from __future__ import annotations

import csv
import math
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from recsys.trending import TRENDING_HALF_LIFE_MS

EVENT_TYPES = ("impression", "click", "like", "dislike", "watch", "rating", "search")
POSITIVE_TYPES = ("click", "like", "watch")
NEGATIVE_TYPES = ("dislike",)


@dataclass(frozen=True)
class StoredEvent:
    idempotency_key: str
    user_id: str
    item_id: str
    event_type: str
    value: float
    timestamp_ms: int
    query: str = ""
    variant: str = ""  # the A/B variant whose answer led to the event

    @property
    def is_positive(self) -> bool:
        return self.event_type in POSITIVE_TYPES or (self.event_type == "rating" and self.value >= 4)

    @property
    def is_negative(self) -> bool:
        return self.event_type in NEGATIVE_TYPES or (self.event_type == "rating" and self.value <= 2)

    @property
    def marks_seen(self) -> bool:
        return self.event_type not in ("impression", "search")




@dataclass(frozen=True)
class ItemStats:
    """Online counters for the asked items, in the asked order (0 for an unknown item)."""

    clicks: list[float]
    impressions: list[float]
    trending: list[float]  # decayed to the `now_ms` asked for
    updated_ms: int = 0  # newest trending update among the asked items (0 = none)


def decay(value: float, from_ms: int, to_ms: int) -> float:
    """value * 0.5 ** (max(0, to - from) / H): a trending score carried forward in time."""
    return value * 0.5 ** (max(0, to_ms - from_ms) / TRENDING_HALF_LIFE_MS)


def add_event(value: float, t0_ms: int, t_ms: int) -> tuple[float, int]:
    """(value, t0) after one positive at t_ms (see the module docstring)."""
    if t_ms >= t0_ms:
        return decay(value, t0_ms, t_ms) + 1.0, t_ms
    return value + 0.5 ** ((t0_ms - t_ms) / TRENDING_HALF_LIFE_MS), t0_ms


def stat_deltas(e: "StoredEvent") -> tuple[int, int, bool]:
    """(clicks, impressions, counts toward trending) one event adds to its item."""
    positive = e.is_positive
    return int(positive), int(e.event_type == "impression"), positive


class EventStoreUnavailable(Exception):
    """The store cannot be reached (a network store's connection failed or timed out)."""


class EventStoreCorrupt(Exception):
    """The store's own integrity check failed at start-up (DATA_LOSS): the service must not
    become ready on it: it would answer without, or over, the users' real events."""


class EventStore(Protocol):
    def append(self, events: Sequence[StoredEvent]) -> tuple[int, int]:
        """Store durably; return (newly stored, duplicates by idempotency key)."""

    def user_events(self, user_id: str, limit: int) -> list[StoredEvent]:
        """The user's most recent events, newest first (by client timestamp)."""

    def all_events(self) -> Iterator[StoredEvent]:
        """Every stored event once (the full log, for export to training)."""

    def item_stats(self, item_ids: Sequence[str], now_ms: int) -> ItemStats:
        """Online clicks, impressions and trending (decayed to now_ms) per asked item."""

    def delete_before(self, cutoff_ms: int, batch: int = 1000) -> Iterator[list[StoredEvent]]:
        """Remove events with timestamp_ms < cutoff_ms, yielding each batch *before* it is
        deleted (so the caller can archive it first); item stats are kept."""

    def close(self) -> None: ...


class SQLiteEventStore:
    """SQLite WAL, synchronous=FULL. One writer connection behind a lock (SQLite allows
    one writer at a time anyway); readers use their own per-thread connections so reads
    never wait for a commit's fsync."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY,  -- insertion order: breaks timestamp ties (latest wins)
        idempotency_key TEXT NOT NULL UNIQUE,
        user_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        value REAL NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        query TEXT NOT NULL DEFAULT '',
        variant TEXT NOT NULL DEFAULT '',
        received_ms INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
    );
    CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, timestamp_ms, seq);
    CREATE INDEX IF NOT EXISTS events_by_time ON events (timestamp_ms);
    CREATE TABLE IF NOT EXISTS item_stats (
        item_id TEXT PRIMARY KEY,
        clicks REAL NOT NULL DEFAULT 0,
        impressions REAL NOT NULL DEFAULT 0,
        trending REAL NOT NULL DEFAULT 0,  -- decayed to trending_ms
        trending_ms INTEGER NOT NULL DEFAULT 0
    );
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._writer = self._connect_checked()
        had_stats = self._writer.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'item_stats'").fetchone()
        self._writer.executescript(self.SCHEMA)
        columns = {row[1] for row in self._writer.execute("PRAGMA table_info(events)")}
        if "variant" not in columns:  # a store created before variants were logged
            self._writer.execute("ALTER TABLE events ADD COLUMN variant TEXT NOT NULL DEFAULT ''")
        if not had_stats:  # a store from before item stats: count its events once
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for row in self._writer.execute(
                        "SELECT idempotency_key, user_id, item_id, event_type, value, timestamp_ms, query, variant"
                        " FROM events ORDER BY seq").fetchall():
                    self._fold(cur, StoredEvent(*row))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

    def _connect_checked(self) -> sqlite3.Connection:
        """The writer connection, after `PRAGMA quick_check` (every page and index, no
        cross-check of index contents: seconds for millions of rows) says the file is sound."""
        try:
            conn = self._connect()
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
        except sqlite3.DatabaseError as e:  # not a database at all, or a header beyond repair
            raise EventStoreCorrupt(f"DATA_LOSS: event store {self.path}: {e}") from None
        if problems != ["ok"]:
            conn.close()
            raise EventStoreCorrupt(f"DATA_LOSS: event store {self.path} failed quick_check: {'; '.join(problems)}")
        return conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._write_lock:
                self._readers.append(conn)
        return conn

    def append(self, events: Sequence[StoredEvent]) -> tuple[int, int]:
        rows = [
            (e.idempotency_key, e.user_id, e.item_id, e.event_type, e.value, e.timestamp_ms, e.query, e.variant)
            for e in events
        ]
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                self._batch_start = cur.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
                before = self._writer.total_changes
                cur.executemany(
                    "INSERT OR IGNORE INTO events (idempotency_key, user_id, item_id, event_type,"
                    " value, timestamp_ms, query, variant) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                stored = self._writer.total_changes - before
                if stored:
                    self._update_stats(cur, events)
                cur.execute("COMMIT")  # durable on return: WAL fsynced (synchronous=FULL)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return stored, len(rows) - stored

    def _update_stats(self, cur: sqlite3.Cursor, events: Sequence[StoredEvent]) -> None:
        """Inside append's transaction: fold the events this batch stored into item_stats.
        An event was stored by this batch iff its row is the first with its key, i.e. the
        row's fields are this event's (a duplicate key keeps the earlier event's row)."""
        seen: set[str] = set()
        for e in events:
            if not e.item_id or e.idempotency_key in seen:
                continue
            seen.add(e.idempotency_key)
            row = cur.execute("SELECT seq FROM events WHERE idempotency_key = ? AND seq > ?",
                              (e.idempotency_key, self._batch_start)).fetchone()
            if row is not None:  # else a duplicate of an earlier batch
                self._fold(cur, e)

    @staticmethod
    def _fold(cur: sqlite3.Cursor, e: StoredEvent) -> None:
        """One stored event into its item's row of item_stats."""
        clicks, impressions, trends = stat_deltas(e)
        if e.item_id and (clicks or impressions or trends):
            old = cur.execute("SELECT trending, trending_ms FROM item_stats WHERE item_id = ?",
                              (e.item_id,)).fetchone()
            value, t0 = old if old else (0.0, e.timestamp_ms)
            if trends:
                value, t0 = add_event(value, t0, e.timestamp_ms)
            cur.execute(
                "INSERT INTO item_stats (item_id, clicks, impressions, trending, trending_ms)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (item_id) DO UPDATE SET clicks = clicks + excluded.clicks,"
                " impressions = impressions + excluded.impressions, trending = excluded.trending,"
                " trending_ms = excluded.trending_ms",
                (e.item_id, clicks, impressions, value, t0),
            )

    def item_stats(self, item_ids: Sequence[str], now_ms: int) -> ItemStats:
        found: dict[str, tuple[float, float, float, int]] = {}
        ids = list(dict.fromkeys(item_ids))
        conn = self._reader()
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            for item, c, i, t, t0 in conn.execute(
                "SELECT item_id, clicks, impressions, trending, trending_ms FROM item_stats"
                f" WHERE item_id IN ({','.join('?' * len(chunk))})", chunk,
            ):
                found[item] = (c, i, t, t0)
        return stats_from_rows(item_ids, found, now_ms)

    def delete_before(self, cutoff_ms: int, batch: int = 1000) -> Iterator[list[StoredEvent]]:
        while True:
            rows = self._reader().execute(
                "SELECT seq, idempotency_key, user_id, item_id, event_type, value, timestamp_ms, query, variant"
                " FROM events WHERE timestamp_ms < ? ORDER BY seq LIMIT ?", (cutoff_ms, batch),
            ).fetchall()
            if not rows:
                return
            yield [StoredEvent(*row[1:]) for row in rows]
            with self._write_lock:
                cur = self._writer.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    cur.executemany("DELETE FROM events WHERE seq = ?", [(row[0],) for row in rows])
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise

    def user_events(self, user_id: str, limit: int) -> list[StoredEvent]:
        if limit < 1:
            return []
        try:
            rows = self._reader().execute(
                "SELECT idempotency_key, user_id, item_id, event_type, value, timestamp_ms, query, variant"
                " FROM events WHERE user_id = ? ORDER BY timestamp_ms DESC, seq DESC LIMIT ?",
                (user_id, limit),
            ).fetchall()
        except sqlite3.Error as e:  # Recommend answers UNAVAILABLE, as with Redis
            raise EventStoreUnavailable(f"sqlite: {type(e).__name__}: {e}") from None
        return [StoredEvent(*row) for row in rows]

    def all_events(self) -> Iterator[StoredEvent]:
        """Every stored event in insertion order (the full log, for export)."""
        conn = self._connect()
        try:
            yield from (StoredEvent(*row) for row in conn.execute(
                "SELECT idempotency_key, user_id, item_id, event_type, value, timestamp_ms, query, variant"
                " FROM events ORDER BY seq"))
        finally:
            conn.close()

    def close(self) -> None:
        with self._write_lock:
            self._writer.close()
            for conn in self._readers:
                conn.close()
            self._readers.clear()


class MemoryEventStore:
    """Events in a dict, lost on exit: for offline replay (evaluation's cold-start slice)
    and nothing that acknowledges a caller's write. Same contract as SQLiteEventStore."""

    def __init__(self) -> None:
        self._by_key: dict[str, StoredEvent] = {}
        self._by_user: dict[str, list[tuple[int, StoredEvent]]] = {}
        self._stats: dict[str, tuple[float, float, float, int]] = {}  # clicks, impressions, trending, t0
        self._seq = 0
        self._lock = threading.Lock()

    def append(self, events: Sequence[StoredEvent]) -> tuple[int, int]:
        stored = 0
        with self._lock:
            for e in events:
                if e.idempotency_key in self._by_key:
                    continue
                self._by_key[e.idempotency_key] = e
                self._seq += 1
                self._by_user.setdefault(e.user_id, []).append((self._seq, e))
                stored += 1
                clicks, impressions, trends = stat_deltas(e)
                if e.item_id and (clicks or impressions or trends):
                    c, i, value, t0 = self._stats.get(e.item_id, (0.0, 0.0, 0.0, e.timestamp_ms))
                    if trends:
                        value, t0 = add_event(value, t0, e.timestamp_ms)
                    self._stats[e.item_id] = (c + clicks, i + impressions, value, t0)
        return stored, len(events) - stored

    def item_stats(self, item_ids: Sequence[str], now_ms: int) -> ItemStats:
        with self._lock:
            found = {i: self._stats[i] for i in item_ids if i in self._stats}
        return stats_from_rows(item_ids, found, now_ms)

    def delete_before(self, cutoff_ms: int, batch: int = 1000) -> Iterator[list[StoredEvent]]:
        while True:
            with self._lock:
                old = [e for e in self._by_key.values() if e.timestamp_ms < cutoff_ms][:batch]
            if not old:
                return
            yield old
            with self._lock:
                gone = {e.idempotency_key for e in old}
                for e in old:
                    del self._by_key[e.idempotency_key]
                for user in {e.user_id for e in old}:
                    self._by_user[user] = [se for se in self._by_user[user] if se[1].idempotency_key not in gone]

    def user_events(self, user_id: str, limit: int) -> list[StoredEvent]:
        if limit < 1:
            return []
        with self._lock:
            events = list(self._by_user.get(user_id, ()))
        # newest first; among equal timestamps the later append first (as SQLite's seq)
        events.sort(key=lambda se: (se[1].timestamp_ms, se[0]), reverse=True)
        return [e for _, e in events[:limit]]

    def all_events(self) -> Iterator[StoredEvent]:
        with self._lock:
            events = list(self._by_key.values())
        return iter(events)

    def close(self) -> None:
        pass


def stats_from_rows(item_ids: Sequence[str], found: dict[str, tuple[float, float, float, int]], now_ms: int) -> ItemStats:
    """ItemStats in the asked order from {item: (clicks, impressions, trending, t0)}."""
    zero = (0.0, 0.0, 0.0, 0)
    rows = [found.get(i, zero) for i in item_ids]
    return ItemStats(
        clicks=[float(r[0]) for r in rows],
        impressions=[float(r[1]) for r in rows],
        trending=[decay(float(r[2]), int(r[3]), now_ms) for r in rows],
        updated_ms=max((int(r[3]) for r in rows if r[2] > 0), default=0),
    )


ARCHIVE_COLUMNS = ("idempotency_key", "user_id", "item_id", "event_type", "value", "timestamp_ms", "query",
                   "variant")


def compact(store: EventStore, cutoff_ms: int, archive: str | Path, batch: int = 1000) -> int:
    """Move events older than cutoff_ms to the CSV `archive` (appended; header when new),
    `batch` at a time: each batch is written and fsynced *before* the store deletes it, so
    a crash can at worst archive a batch twice (export drops repeated idempotency keys),
    never lose one. Item stats stay in the store. Returns the events moved."""
    path = Path(archive)
    path.parent.mkdir(parents=True, exist_ok=True)
    moved = 0
    with open(path, "a", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        if f.tell() == 0:
            out.writerow(ARCHIVE_COLUMNS)
        for chunk in store.delete_before(cutoff_ms, batch):
            out.writerows([getattr(e, c) for c in ARCHIVE_COLUMNS] for e in chunk)
            f.flush()
            os.fsync(f.fileno())
            moved += len(chunk)
    return moved


def read_archive(path: str | Path) -> Iterator[StoredEvent]:
    """The events of an archive written by `compact`, in file order."""
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            yield StoredEvent(row["idempotency_key"], row["user_id"], row["item_id"], row["event_type"],
                              float(row["value"]), int(row["timestamp_ms"]), row["query"], row["variant"])


def open_event_store(event_db: str, event_store_url: str = "") -> EventStore:
    """The configured store: Redis when `event_store_url` is set (redis-py is imported only
    then), else SQLite at `event_db`."""
    if event_store_url:
        from ranking_svc.redis_events import RedisEventStore

        return RedisEventStore(event_store_url)
    return SQLiteEventStore(event_db)


@dataclass(frozen=True)
class VariantReport:
    variant: str
    users: int  # distinct users with an impression
    impressions: int
    clicks: int

    @property
    def click_rate(self) -> float:
        """clicks / impressions (0 with no impressions)."""
        return self.clicks / self.impressions if self.impressions else 0.0

    def interval95(self) -> tuple[float, float]:
        """Wilson score interval of the click rate at 95%."""
        n, z = self.impressions, 1.959964
        if n == 0:
            return 0.0, 0.0
        p = min(1.0, self.click_rate)
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)


def click_rates(path: str | Path) -> list[VariantReport]:
    """Impressions and clicks per A/B variant in a SQLite event store (opened read-only)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no event store at {path}")
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
        variant = "variant" if "variant" in columns else "''"
        rows = conn.execute(
            f"SELECT {variant} AS v,"
            " COUNT(DISTINCT CASE WHEN event_type = 'impression' THEN user_id END),"
            " SUM(event_type = 'impression'), SUM(event_type = 'click')"
            " FROM events GROUP BY v ORDER BY v"
        ).fetchall()
    finally:
        conn.close()
    return [VariantReport(v, int(u or 0), int(i or 0), int(c or 0)) for v, u, i, c in rows]
