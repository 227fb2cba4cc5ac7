"""Fresh items: an exploration slot so new items collect a click-rate.

Eligible: created within `window_s` of the newest item in the catalogue, with at most
`max_impressions` impressions; at most the `max_pool` newest of them (the draws cost one
Beta sample per eligible item per request). Each eligible item draws a click-rate from its Beta posterior
Beta(1 + clicks, 1 + impressions - clicks) (Thompson sampling) and the highest draws are
proposed, score = the draw. The generator is seeded per request from user id + request
time (Context.seed), so one request always gets one answer and tests are reproducible.
"""

from __future__ import annotations

import numpy as np

from candidate_svc.sources import FRESH, Context, Proposal

WINDOW_S = 30 * 86_400
MAX_IMPRESSIONS = 200.0
MAX_POOL = 2000


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

    def propose(self, ctx: Context, n: int, excluded: np.ndarray) -> Proposal:
        if n <= 0 or len(self.eligible) == 0:
            return Proposal.empty()
        keep = ~excluded[self.eligible]
        items = self.eligible[keep]
        draws = np.random.default_rng(ctx.seed).beta(self.alpha[keep], self.beta[keep]).astype(np.float32)
        top = np.argsort(-draws, kind="stable")[:n]
        return Proposal(items[top].astype(np.int64), draws[top])
