"""Fresh items: an exploration slot so new items collect a click-rate.

Eligible: created within `window_s` of the newest item in the catalogue, with at most
`max_impressions` impressions; at most the `max_pool` newest of them. Each eligible item
draws a click-rate from its Beta posterior Beta(1 + clicks, 1 + impressions - clicks)
(Thompson sampling) and the highest draws are proposed, score = the draw.

The draws come from `samples` posterior samples of the whole pool per minute of request
time (`rotate_ms`), each drawn (and ordered) once, when a request first picks it; a request
picks sample `seed % samples` of its minute (Context.seed: user id + request time), so one
request always gets one answer and tests are reproducible. Drawing per request instead cost
one Beta sample per eligible item per request (~100 us for a pool of 2,000, the candidate
tier's largest cost after the ANN search at 100k items). A sample is still a draw from
every item's current posterior, only shared by the requests of one minute that pick it:
within a minute at most samples x n items can be shown (32 x 10 of a pool of 2,000), and
the next minute draws afresh, so over an hour the slot explores as independent draws would
(with posteriors that do not change: no event store, or no clicks yet). New posteriors
(the live counts, candidate_svc/live_stats.py, build a new source) give new samples too.
"""

from __future__ import annotations

import zlib

import numpy as np

from candidate_svc.sources import FRESH, Context, Proposal, first_allowed

WINDOW_S = 30 * 86_400
MAX_IMPRESSIONS = 200.0
MAX_POOL = 2000
SAMPLES = 32  # posterior samples of the pool a request picks from, per ROTATE_MS
ROTATE_MS = 60_000  # of request time: then a new set of samples


class FreshSource:
    name = FRESH

    def __init__(
        self,
        created_at: np.ndarray,
        clicks: np.ndarray,
        impressions: np.ndarray,
        window_s: int = WINDOW_S,
        max_impressions: float = MAX_IMPRESSIONS,
        max_pool: int = MAX_POOL,
        samples: int = SAMPLES,
        rotate_ms: int = ROTATE_MS,
    ) -> None:
        created_at = np.asarray(created_at, dtype=np.int64)
        newest = int(created_at.max()) if len(created_at) else 0
        clicks = np.asarray(clicks, dtype=np.float64)
        impressions = np.maximum(np.asarray(impressions, dtype=np.float64), clicks)
        eligible = np.flatnonzero((created_at >= newest - window_s) & (impressions <= max_impressions))
        newest_first = np.argsort(-created_at[eligible], kind="stable")[:max_pool]
        self.eligible = np.sort(eligible[newest_first])
        self.alpha = 1.0 + clicks[self.eligible]  # Beta(1 + clicks, 1 + misses)
        self.beta = 1.0 + (impressions - clicks)[self.eligible]
        if samples < 1 or rotate_ms < 1:
            raise ValueError(f"samples, rotate_ms: must be >= 1, got {samples}, {rotate_ms}")
        self.samples, self.rotate_ms = samples, rotate_ms
        # per rotation (the current and the one before, for requests near the boundary):
        # (order of pool positions by draw, best first; the draws) per sample, made on first use
        self._rotations: dict[int, list[tuple[np.ndarray, np.ndarray] | None]] = {}
        self._seed = zlib.crc32(self.alpha.tobytes() + self.beta.tobytes())  # new posteriors, new draws

    def sample(self, r: int, rotation: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Posterior sample r of a rotation: pool positions by draw (best first, ties by
        position) and the draws. Threads making the same one at once make the same arrays;
        a rotation dropped while in use is only made again."""
        rows = self._rotations.get(rotation)
        if rows is None:
            rows = [None] * self.samples
            for old in sorted(self._rotations)[:-1]:  # keep the newest one besides this
                self._rotations.pop(old, None)
            self._rotations[rotation] = rows
        got = rows[r]
        if got is None:
            rng = np.random.default_rng([self._seed, rotation, r])
            draws = rng.beta(self.alpha, self.beta).astype(np.float32)
            got = rows[r] = (np.argsort(-draws, kind="stable").astype(np.int64), draws)
        return got

    def propose(self, ctx: Context, n: int, excluded: np.ndarray) -> Proposal:
        if n <= 0 or len(self.eligible) == 0:
            return Proposal.empty()
        order, draws = self.sample(ctx.seed % self.samples, max(0, ctx.time_ms) // self.rotate_ms)
        local = first_allowed(order, draws, n, excluded[self.eligible])  # pool positions
        return Proposal(self.eligible[local.items], local.scores)
