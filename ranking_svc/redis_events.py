"""The Redis event store: one store shared by several ranking replicas.

Same contract as `SQLiteEventStore` (ranking_svc/events.py). Layout under a key prefix P:

    P:keys          hash  idempotency key -> user id (the set of keys ever stored)
    P:seq           counter, one per stored event (insertion order)
    P:users         set of user ids with events (for export)
    P:user:<id>     sorted set, every member at score 0 so it sorts by bytes:
                    hex(timestamp_ms + 2^63) (16) | hex(seq) (16) | JSON of the event

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

from ranking_svc.events import EventStoreUnavailable, StoredEvent

DEFAULT_PREFIX = "recsys:events"
_TS_OFFSET = 1 << 63  # timestamps may be negative; offset so hex order is numeric order

# KEYS: P:keys, P:seq, P:users, then one P:user:<id> per event (repeats allowed).
# ARGV: per event, 3 values: idempotency key, user id, ts_hex .. "|" .. payload.
_APPEND_LUA = """
local stored = 0
local n = #ARGV / 3
for j = 1, n do
  local a = (j - 1) * 3
  if redis.call('HSETNX', KEYS[1], ARGV[a + 1], ARGV[a + 2]) == 1 then
    local seq = redis.call('INCR', KEYS[2])
    local body = ARGV[a + 3]
    redis.call('ZADD', KEYS[3 + j], 0, string.sub(body, 1, 16) .. string.format('%016x', seq) .. string.sub(body, 18))
    redis.call('SADD', KEYS[3], ARGV[a + 2])
    stored = stored + 1
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
        args: list[str] = []
        for e in events:
            args += [e.idempotency_key, e.user_id, _encode(e)]
        stored = int(self._append(keys=keys, args=args))
        return stored, len(events) - stored

    def user_events(self, user_id: str, limit: int) -> list[StoredEvent]:
        if limit < 1:
            return []
        try:
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
