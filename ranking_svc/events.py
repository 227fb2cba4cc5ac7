"""The event store: where LogEvents writes and Recommend reads a user's recent events.

One small interface (`EventStore`); the embedded default is SQLite in WAL mode with
`synchronous=FULL`, so a batch is on disk (the WAL is fsynced at commit) before LogEvents
acknowledges it. `RedisEventStore` (ranking_svc/redis_events.py, imported only when a
Redis URL is configured) is the store several ranking replicas share. The idempotency key is the primary key: a retried batch is stored once.
Each event keeps the A/B variant that served it, so `click_rates` can compare variants.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

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


class EventStoreUnavailable(Exception):
    """The store cannot be reached (a network store's connection failed or timed out)."""


class EventStore(Protocol):
    def append(self, events: Sequence[StoredEvent]) -> tuple[int, int]:
        """Store durably; return (newly stored, duplicates by idempotency key)."""

    def user_events(self, user_id: str, limit: int) -> list[StoredEvent]:
        """The user's most recent events, newest first (by client timestamp)."""

    def all_events(self) -> Iterator[StoredEvent]:
        """Every stored event once (the full log, for export to training)."""

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
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._writer = self._connect()
        self._writer.executescript(self.SCHEMA)
        columns = {row[1] for row in self._writer.execute("PRAGMA table_info(events)")}
        if "variant" not in columns:  # a store created before variants were logged
            self._writer.execute("ALTER TABLE events ADD COLUMN variant TEXT NOT NULL DEFAULT ''")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

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
                before = self._writer.total_changes
                cur.executemany(
                    "INSERT OR IGNORE INTO events (idempotency_key, user_id, item_id, event_type,"
                    " value, timestamp_ms, query, variant) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                stored = self._writer.total_changes - before
                cur.execute("COMMIT")  # durable on return: WAL fsynced (synchronous=FULL)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return stored, len(rows) - stored

    def user_events(self, user_id: str, limit: int) -> list[StoredEvent]:
        if limit < 1:
            return []
        rows = self._reader().execute(
            "SELECT idempotency_key, user_id, item_id, event_type, value, timestamp_ms, query, variant"
            " FROM events WHERE user_id = ? ORDER BY timestamp_ms DESC, seq DESC LIMIT ?",
            (user_id, limit),
        ).fetchall()
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
        self._lock = threading.Lock()

    def append(self, events: Sequence[StoredEvent]) -> tuple[int, int]:
        stored = 0
        with self._lock:
            for e in events:
                if e.idempotency_key in self._by_key:
                    continue
                self._by_key[e.idempotency_key] = e
                self._by_user.setdefault(e.user_id, []).append((len(self._by_key), e))
                stored += 1
        return stored, len(events) - stored

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
