"""The ranking tier's cached copy of the event store's online trending.

`LiveTrending` reads `item_stats` for every bundle item at most once per `ttl_s` (lazily:
the first request that finds the copy stale refreshes it while concurrent requests keep
using the old copy), so the store sees one read per replica per TTL, not one per request.
A refresh blends the bundle's trending (as of the end of its training data) with the live
score, both decayed to the refresh time with training's half-life:

    trending(now) = bundle_trending * 0.5 ** ((now - time_max) / H) + live_trending(now)

and derives what depends on it: the `log_trending` column of the ranking features'
`item_static` matrix and the degraded fallback's trending order. Until the store holds a
live trending update the bundle's arrays are served unchanged. A failed refresh keeps the
previous copy (logged): stale trending is better than failing Recommend over it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ranking_svc.events import EventStore
from recsys.compute import COMPUTE
from recsys.trending import decayed

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 5.0
LOG_TRENDING = 1  # column of item_static (recsys.ranking_features.item_static)


@dataclass(frozen=True)
class TrendingSnapshot:
    trending: np.ndarray  # float64[n_items], blended as in the module docstring
    item_static: np.ndarray  # float32[n_items, 3], log_trending column replaced
    at_ms: int  # wall-clock time the blend was decayed to (0 = the bundle's own arrays)


class LiveTrending:
    def __init__(
        self,
        store: EventStore,
        item_ids: Sequence[str],
        bundle_trending: np.ndarray,
        bundle_static: np.ndarray,
        bundle_time_max_s: float,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.store = store
        self.item_ids = list(item_ids)
        self.bundle_trending = np.asarray(bundle_trending, dtype=np.float64)
        self.bundle_time_max_ms = int(bundle_time_max_s * 1000)
        self.ttl_s = ttl_s
        self.clock = clock
        self.wall_ms = wall_ms
        self.refreshes = 0
        self._lock = threading.Lock()
        self._next = 0.0  # monotonic time of the next refresh
        self._snapshot = TrendingSnapshot(self.bundle_trending, bundle_static, 0)

    def get(self) -> TrendingSnapshot:
        """The current copy, refreshed first if it is older than the TTL (by one caller)."""
        if self.clock() >= self._next and self._lock.acquire(blocking=False):
            try:
                if self.clock() >= self._next:
                    self._refresh()
            finally:
                self._lock.release()
        return self._snapshot

    def _refresh(self) -> None:
        self._next = self.clock() + self.ttl_s
        now_ms = self.wall_ms()
        try:
            with COMPUTE.released():  # a store read (Redis: a round trip): others compute meanwhile
                stats = self.store.item_stats(self.item_ids, now_ms)
        except Exception as e:  # keep serving the previous copy
            log.warning("live trending refresh failed (keeping the copy from %d): %s: %s",
                        self._snapshot.at_ms, type(e).__name__, e)
            return
        self.refreshes += 1
        if stats.updated_ms == 0:
            return  # nothing live yet: the bundle's arrays as trained
        # bundle_trending * 0.5 ** ((now - time_max) / H) + live(now)
        blended = decayed(self.bundle_trending, self.bundle_time_max_ms, now_ms) + np.asarray(stats.trending)
        static = self._snapshot.item_static.copy()
        static[:, LOG_TRENDING] = np.log1p(np.maximum(blended, 0.0))
        self._snapshot = TrendingSnapshot(blended, static, now_ms)
