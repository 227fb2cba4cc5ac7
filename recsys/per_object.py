"""Values derived once from an object that never changes after it is built (a bundle's
item id list, its id -> index map), kept for the last few such objects.

Both tiers build per-bundle lookup tables for their wire encoding and decoding
(candidate_svc/server.py, ranking_svc/wire.py) at start and on hot reload; a request then
finds its bundle's table by the object's identity. The object is held beside its value, so
its id() cannot be reused by another object while the entry lives.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class PerObject(Generic[K, V]):
    def __init__(self, build: Callable[[K], V], keep: int) -> None:
        self._build = build
        self._keep = keep
        self._entries: dict[int, tuple[K, V]] = {}
        self._lock = threading.Lock()

    def __call__(self, key: K) -> V:
        hit = self._entries.get(id(key))
        if hit is not None and hit[0] is key:
            return hit[1]
        value = self._build(key)  # a racing thread may build the same value: either is right
        with self._lock:
            while len(self._entries) >= self._keep:  # oldest first
                self._entries.pop(next(iter(self._entries)))
            self._entries[id(key)] = (key, value)
        return value
