"""Item-to-item: the precomputed nearest items (item-tower cosine) of the user's recent
history items, interleaved round-robin so the most recent items lead but every recent item
contributes. An item reached from several history items keeps its best cosine."""

from __future__ import annotations

import numpy as np

from candidate_svc.sources import ITEM_TO_ITEM, Context, Proposal

RECENT = 10  # history items whose neighbours are read


class ItemToItemSource:
    name = ITEM_TO_ITEM

    def __init__(self, neighbours: np.ndarray, neighbour_scores: np.ndarray, recent: int = RECENT) -> None:
        self.neighbours = np.asarray(neighbours, dtype=np.int64)  # [n_items, N], -1 = none
        self.scores = np.asarray(neighbour_scores, dtype=np.float32)
        self.recent = recent

    def propose(self, ctx: Context, n: int, excluded: np.ndarray) -> Proposal:
        n_items = len(self.neighbours)
        seeds = [int(i) for i in ctx.history[: self.recent] if 0 <= i < n_items]
        if n <= 0 or not seeds:
            return Proposal.empty()
        # column-major over [seeds, N]: first neighbours of every seed, then second, ...
        near = self.neighbours[seeds].T.reshape(-1)
        sims = self.scores[seeds].T.reshape(-1)
        ok = near >= 0
        near, sims = near[ok], sims[ok]
        ok = ~excluded[near] & (near[:, None] != np.asarray(seeds)).all(axis=1)  # not a seed (<= RECENT)
        near, sims = near[ok], sims[ok]
        # first-occurrence order, each item's best cosine over all its occurrences
        distinct, first, inverse = np.unique(near, return_index=True, return_inverse=True)
        best = np.full(len(distinct), -np.inf, dtype=np.float32)
        np.maximum.at(best, inverse, sims)
        take = np.argsort(first, kind="stable")[:n]
        return Proposal(distinct[take].astype(np.int64), best[take])
