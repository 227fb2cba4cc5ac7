"""Live counts for the trending and fresh sources, from the ranking tier's event store.

When the candidate service is configured with the event store (CandidateConfig
`event_db` / `event_store_url`), `LiveSourceStats` reads the store's online item counters
(`item_stats`, see ranking_svc/events.py) at most once per `ttl_s`, lazily (the first
request that finds them stale rebuilds them; concurrent requests keep the old sources), and
rebuilds the two sources from the bundle's arrays plus the live counts:

    trending  bundle_trending * 0.5 ** ((now - time_max) / H) + live_trending(now)
    fresh     Beta(1 + clicks, 1 + impressions - clicks) with
              clicks = bundle item_clicks + live clicks,
              impressions = bundle item_impressions + live impressions

candidate_svc may not import ranking_svc, so the store arrives as any object with
`item_stats(item_ids, now_ms)` (the caller, recsys/cli.py, opens it). A failed read keeps
the previous sources (logged): serving stale counts beats failing Retrieve.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol, Sequence

import numpy as np

from candidate_svc.sources import FRESH, TRENDING, Source
from candidate_svc.sources.fresh import FreshSource
from candidate_svc.sources.ranked import trending
from recsys.compute import COMPUTE
from recsys.trending import decayed

log = logging.getLogger(__name__)



class ItemStatsReader(Protocol):
    def item_stats(self, item_ids: Sequence[str], now_ms: int):
        """An object with lists `clicks`, `impressions`, `trending` and int `updated_ms`."""


class LiveSourceStats:
    def __init__(
        self,
        reader: ItemStatsReader,
        item_ids: Sequence[str],
        extras: dict[str, np.ndarray],
        time_max_s: float,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.reader = reader
        self.item_ids = list(item_ids)
        n = len(self.item_ids)
        zeros = np.zeros(n, np.float64)
        self.trending = np.asarray(extras.get("trending", zeros), dtype=np.float64)
        self.clicks = np.asarray(extras.get("item_clicks", zeros), dtype=np.float64)
        self.impressions = np.asarray(extras.get("item_impressions", zeros), dtype=np.float64)
        self.created_at = extras.get("item_created_at")
        self.time_max_ms = int(time_max_s * 1000)
        self.ttl_s = ttl_s
        self.clock = clock
        self.wall_ms = wall_ms
        self.refreshes = 0
        self._lock = threading.Lock()
        self._next = 0.0

    def refresh_into(self, sources: dict[str, Source]) -> None:
        """Replace sources[TRENDING] and sources[FRESH] with live-count versions if the TTL
        has passed (one caller rebuilds; a dict item assignment is atomic for readers)."""
        if self.clock() < self._next or not self._lock.acquire(blocking=False):
            return
        try:
            if self.clock() < self._next:
                return
            self._next = self.clock() + self.ttl_s
            now_ms = self.wall_ms()
            try:
                with COMPUTE.released():  # a store read (Redis: a round trip): others compute meanwhile
                    stats = self.reader.item_stats(self.item_ids, now_ms)
            except Exception as e:
                log.warning("live source stats refresh failed (keeping the previous sources): %s: %s",
                            type(e).__name__, e)
                return
            self.refreshes += 1
            if stats.updated_ms == 0 and not any(stats.impressions) and not any(stats.clicks):
                return  # nothing live yet: the bundle's sources as built
            # bundle_trending * 0.5 ** ((now - time_max) / H) + live(now)
            live_trending = decayed(self.trending, self.time_max_ms, now_ms) + np.asarray(stats.trending)
            if TRENDING in sources:  # the bundle's arrays decide which sources exist
                sources[TRENDING] = trending(live_trending.astype(np.float32))
            if FRESH in sources and self.created_at is not None:
                sources[FRESH] = FreshSource(self.created_at, self.clicks + np.asarray(stats.clicks),
                                             self.impressions + np.asarray(stats.impressions))
        finally:
            self._lock.release()
