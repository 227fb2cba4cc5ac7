"""Fresh items: an exploration slot so new items collect a click-rate.

Eligible: created within `window_s` of the newest item in the catalogue, with at most
`max_impressions` impressions; at most the `max_pool` newest of them. Each eligible item
draws a click-rate from its Beta posterior Beta(1 + clicks, 1 + impressions - clicks)
(Thompson sampling) and the highest draws are proposed, score = the draw.

The draws come from `samples` posterior samples of the whole pool, each drawn (and
ordered) once, when a request first picks it; a request picks sample `seed % samples`
(Context.seed: user id + request time), so one request always gets one answer and tests
are reproducible. Drawing per request instead cost one Beta sample per eligible item per
request (~100 us for a pool of 2,000, the candidate tier's largest cost after the ANN
search at 100k items); a sample is still a draw from every item's current posterior, only
shared by the requests that pick it. New posteriors (the live counts, candidate_svc/
live_stats.py, build a new source) give new samples.
"""

from __future__ import annotations

import zlib

import numpy as np

from candidate_svc.sources import FRESH, Context, Proposal, first_allowed

WINDOW_S = 30 * 86_400
MAX_IMPRESSIONS = 200.0
MAX_POOL = 2000
SAMPLES = 32  # posterior samples of the pool a request picks from


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
        if samples < 1:
            raise ValueError(f"samples: must be >= 1, got {samples}")
        # (order of pool positions by draw, best first; the draws) per sample, made on first use
        self._samples: list[tuple[np.ndarray, np.ndarray] | None] = [None] * samples
        self._seed = zlib.crc32(self.alpha.tobytes() + self.beta.tobytes())  # new posteriors, new draws

    def sample(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Posterior sample r: pool positions by draw (best first, ties by position) and
        the draws. Two threads making the same one at once make the same arrays."""
        got = self._samples[r]
        if got is None:
            draws = np.random.default_rng([self._seed, r]).beta(self.alpha, self.beta).astype(np.float32)
            got = self._samples[r] = (np.argsort(-draws, kind="stable").astype(np.int64), draws)
        return got

    def propose(self, ctx: Context, n: int, excluded: np.ndarray) -> Proposal:
        if n <= 0 or len(self.eligible) == 0:
            return Proposal.empty()
        order, draws = self.sample(ctx.seed % len(self._samples))
        local = first_allowed(order, draws, n, excluded[self.eligible])  # pool positions
        return Proposal(self.eligible[local.items], local.scores)
