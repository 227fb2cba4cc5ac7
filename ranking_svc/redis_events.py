"""The Redis event store: one store shared by several ranking replicas.

Same contract as `SQLiteEventStore` (ranking_svc/events.py). Layout under a key prefix P:

    P:keys          hash  idempotency key -> user id (the set of keys ever stored)
    P:seq           counter, one per stored event (insertion order)
    P:users         set of user ids with events (for export)
    P:user:<id>     sorted set, every member at score 0 so it sorts by bytes:
                    hex(timestamp_ms + 2^63) (16) | hex(seq) (16) | JSON of the event
    P:item:<id>     hash: clicks, impressions, trending, trending_ms (ranking_svc/events.py
                    explains the decay); updated by the same script as the event

One Lua script stores a batch atomically: an event whose key HSETNX finds already present
is a duplicate, the others get the next seq and join their user's set. Newest first is
then a reverse lexicographic range, and among equal timestamps the later insert comes
first, as SQLite's `seq`.

Durability is the server's: the store refuses to start unless Redis runs with
`appendonly yes`, `appendfsync always` and `no-appendfsync-on-rewrite no`, so the script's
effects are fsynced to the append-only file before Redis replies (and so before LogEvents
acknowledges), and with a `maxmemory-policy` that cannot evict our keys (`noeviction` or
a `volatile-*` policy: none of our keys has a TTL). A crash mid-write leaves at worst a
truncated, unacknowledged transaction at the end of the file, which Redis drops at load.
"""

from __future__ import annotations

import json
from typing import Iterator, Sequence

import redis

from ranking_svc.events import (
    TRENDING_HALF_LIFE_MS,
    EventStoreUnavailable,
    ItemStats,
    StoredEvent,
    stat_deltas,
    stats_from_rows,
)
from recsys.compute import COMPUTE

DEFAULT_PREFIX = "recsys:events"
_TS_OFFSET = 1 << 63  # timestamps may be negative; offset so hex order is numeric order

# KEYS: P:keys, P:seq, P:users, then one P:user:<id> per event (repeats allowed), then
# one P:item:<id> per event (P:item: alone for an event without an item).
# ARGV[1]: trending half-life in ms; then per event, 6 values: idempotency key, user id,
# ts_hex .. "|" .. payload, clicks, impressions, trends (0/1) .. ":" .. timestamp_ms.
_APPEND_LUA = """
local stored = 0
local half = tonumber(ARGV[1])
local n = (#ARGV - 1) / 6
for j = 1, n do
  local a = 1 + (j - 1) * 6
  if redis.call('HSETNX', KEYS[1], ARGV[a + 1], ARGV[a + 2]) == 1 then
    local seq = redis.call('INCR', KEYS[2])
    local body = ARGV[a + 3]
    redis.call('ZADD', KEYS[3 + j], 0, string.sub(body, 1, 16) .. string.format('%016x', seq) .. string.sub(body, 18))
    redis.call('SADD', KEYS[3], ARGV[a + 2])
    stored = stored + 1
    local clicks, impressions = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
    local sep = string.find(ARGV[a + 6], ':', 1, true)
    local trends = string.sub(ARGV[a + 6], 1, sep - 1) == '1'
    local t = tonumber(string.sub(ARGV[a + 6], sep + 1))
    local item = KEYS[3 + n + j]
    if clicks > 0 then redis.call('HINCRBY', item, 'clicks', clicks) end
    if impressions > 0 then redis.call('HINCRBY', item, 'impressions', impressions) end
    if trends then
      local old = redis.call('HMGET', item, 'trending', 'trending_ms')
      local value, t0 = tonumber(old[1]) or 0, tonumber(old[2]) or t
      if t >= t0 then
        value, t0 = value * 0.5 ^ ((t - t0) / half) + 1, t
      else
        value = value + 0.5 ^ ((t0 - t) / half)
      end
      redis.call('HSET', item, 'trending', string.format('%.17g', value), 'trending_ms', string.format('%.0f', t0))
    end
  end
end
return stored
"""

# setting -> (predicate on its value, what it must be): checked at connect.
DURABILITY_RULES = {
    "appendonly": (lambda v: v == "yes", "yes"),
    "appendfsync": (lambda v: v == "always", "always"),
    "no-appendfsync-on-rewrite": (lambda v: v == "no", "no"),
    "maxmemory-policy": (lambda v: v == "noeviction" or v.startswith("volatile-"), "noeviction or volatile-*"),
}


class RedisDurabilityError(RuntimeError):
    """The Redis server would acknowledge writes it could lose; the message names the setting."""


def _encode(e: StoredEvent) -> str:
    payload = json.dumps(
        [e.idempotency_key, e.user_id, e.item_id, e.event_type, e.value, e.timestamp_ms, e.query, e.variant],
        separators=(",", ":"), ensure_ascii=False,
    )
    return f"{e.timestamp_ms + _TS_OFFSET:016x}|{payload}"


def _decode(member: bytes) -> StoredEvent:
    key, user, item, kind, value, ts, query, variant = json.loads(member[32:])
    return StoredEvent(key, user, item, kind, float(value), int(ts), query, variant)


class RedisEventStore:
    """Events in Redis (see the module docstring for layout and durability rules). The
    client is thread-safe (a connection pool) and does not retry: a write that fails on the
    connection raises (LogEvents answers UNAVAILABLE) even if Redis ran the script before
    the reply was lost, and the caller's resend is safe because a batch is idempotent by
    its keys. A failed read raises EventStoreUnavailable (Recommend answers UNAVAILABLE)."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, check_durability: bool = True,
                 socket_timeout_s: float = 5.0) -> None:
        self.url = url
        self.prefix = prefix
        self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                            socket_connect_timeout=socket_timeout_s)
        try:
            if check_durability:
                self._check_durability()
            self._append = self._client.register_script(_APPEND_LUA)
        except BaseException:
            self._client.close()
            raise

    def _check_durability(self) -> None:
        where = f"redis event store at {redact(self.url)}"
        try:
            config = {}
            for name in DURABILITY_RULES:
                config.update({_str(k): _str(v) for k, v in self._client.config_get(name).items()})
        except redis.ResponseError as e:  # CONFIG renamed or disabled (some managed services)
            raise RedisDurabilityError(f"{where}: cannot read the server configuration ({e}); "
                                       f"the store must verify {sorted(DURABILITY_RULES)}") from None
        except redis.RedisError as e:
            raise RedisDurabilityError(f"{where}: cannot connect: {type(e).__name__}: {e}") from None
        for name, (ok, wanted) in DURABILITY_RULES.items():
            value = config.get(name, "")
            if not ok(value):
                raise RedisDurabilityError(
                    f"{where}: {name} is {value!r}, must be {wanted} so an acknowledged event "
                    f"is on disk (set `{name} {wanted.split()[0]}` in redis.conf or with CONFIG SET)"
                )

    def _user_key(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}"

    def append(self, events: Sequence[StoredEvent]) -> tuple[int, int]:
        if not events:
            return 0, 0
        keys = [f"{self.prefix}:keys", f"{self.prefix}:seq", f"{self.prefix}:users"]
        keys += [self._user_key(e.user_id) for e in events]
        keys += [self._item_key(e.item_id) for e in events]
        args: list[str] = [str(TRENDING_HALF_LIFE_MS)]
        for e in events:
            clicks, impressions, trends = stat_deltas(e) if e.item_id else (0, 0, False)
            args += [e.idempotency_key, e.user_id, _encode(e), str(clicks), str(impressions),
                     f"{int(trends)}:{e.timestamp_ms}"]
        stored = int(self._append(keys=keys, args=args))
        return stored, len(events) - stored

    def _item_key(self, item_id: str) -> str:
        return f"{self.prefix}:item:{item_id}"

    def item_stats(self, item_ids: Sequence[str], now_ms: int) -> ItemStats:
        fields = ("clicks", "impressions", "trending", "trending_ms")
        try:
            pipe = self._client.pipeline(transaction=False)
            for item in item_ids:
                pipe.hmget(self._item_key(item), *fields)
            rows = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise EventStoreUnavailable(f"redis: {type(e).__name__}: {e}") from None
        found = {item: tuple(float(v or 0) for v in row[:3]) + (int(float(row[3] or 0)),)
                 for item, row in zip(item_ids, rows) if any(v is not None for v in row)}
        return stats_from_rows(item_ids, found, now_ms)

    def delete_before(self, cutoff_ms: int, batch: int = 1000) -> Iterator[list[StoredEvent]]:
        """User by user: the user's members below the cutoff, in batches (a member's bytes
        start with its timestamp, so they are one lexicographic range)."""
        bound = b"[" + f"{cutoff_ms + _TS_OFFSET:016x}".encode()
        for user in list(self._client.sscan_iter(f"{self.prefix}:users", count=500)):
            key = self._user_key(_str(user))
            while True:
                members = self._client.zrange(key, "-", bound, bylex=True, offset=0, num=batch)
                if not members:
                    break
                old = [_decode(m) for m in members]
                yield old
                pipe = self._client.pipeline(transaction=True)
                pipe.zrem(key, *members)
                pipe.hdel(f"{self.prefix}:keys", *[e.idempotency_key for e in old])
                pipe.execute()

    def user_events(self, user_id: str, limit: int) -> list[StoredEvent]:
        if limit < 1:
            return []
        try:
            with COMPUTE.released():  # a network round trip: another request computes meanwhile
                members = self._client.zrange(self._user_key(user_id), "+", "-", desc=True, bylex=True,
                                              offset=0, num=limit)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise EventStoreUnavailable(f"redis: {type(e).__name__}: {e}") from None
        return [_decode(m) for m in members]

    def all_events(self, batch_users: int = 500) -> Iterator[StoredEvent]:
        """Every stored event, user by user, oldest first within a user (for export)."""
        for user in self._client.sscan_iter(f"{self.prefix}:users", count=batch_users):
            for m in self._client.zrange(self._user_key(_str(user)), "-", "+", bylex=True):
                yield _decode(m)

    def close(self) -> None:
        self._client.close()


def _str(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
