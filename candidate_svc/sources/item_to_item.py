"""Item-to-item: the precomputed nearest items (item-tower cosine) of the user's recent
history items, interleaved round-robin so the most recent items lead but every recent item
contributes. An item reached from several history items keeps its best cosine."""

from __future__ import annotations

import numpy as np
from numba import njit

from candidate_svc.sources import ITEM_TO_ITEM, Context, Proposal

RECENT = 10  # history items whose neighbours are read


class ItemToItemSource:
    name = ITEM_TO_ITEM

    def __init__(self, neighbours: np.ndarray, neighbour_scores: np.ndarray, recent: int = RECENT) -> None:
        self.neighbours = np.asarray(neighbours, dtype=np.int64)  # [n_items, N], -1 = none
        self.scores = np.asarray(neighbour_scores, dtype=np.float32)
        self.recent = recent

    def propose(self, ctx: Context, n: int, excluded: np.ndarray) -> Proposal:
        history = ctx.history[: self.recent]
        seeds = np.ascontiguousarray(history[(history >= 0) & (history < len(self.neighbours))], dtype=np.int64)
        if n <= 0 or len(seeds) == 0:
            return Proposal.empty()
        return Proposal(*_neighbours_of(self.neighbours, self.scores, seeds, n, excluded))


@njit(cache=True, nogil=True)
def _neighbours_of(neighbours, scores, seeds, n, excluded):
    """Walk [seeds, N] column-major (first neighbours of every seed, then second, ...),
    skipping -1, excluded items and the seeds themselves; keep each item's first position
    and best cosine; return the first n by first position. An open-addressing table of
    (item -> slot) twice the walk's size dedupes in O(1) per neighbour."""
    width = neighbours.shape[1]
    walk = len(seeds) * width
    size = 1
    while size < 2 * walk:
        size *= 2
    keys = np.full(size, -1, dtype=np.int64)
    slot_of = np.empty(size, dtype=np.int64)
    items = np.empty(walk, dtype=np.int64)
    best = np.empty(walk, dtype=np.float32)
    m = 0
    for w in range(width):
        for seed in seeds:
            x = neighbours[seed, w]
            if x < 0 or excluded[x]:
                continue
            is_seed = False
            for other in seeds:
                if other == x:
                    is_seed = True
                    break
            if is_seed:
                continue
            sim = scores[seed, w]
            h = x & (size - 1)  # item indices carry no structure a hash would need to break up
            while keys[h] != -1 and keys[h] != x:
                h = (h + 1) & (size - 1)
            if keys[h] == -1:
                keys[h] = x
                slot_of[h] = m
                items[m] = x
                best[m] = sim
                m += 1
            elif sim > best[slot_of[h]]:  # (a NaN score never wins; the bundle's are finite)
                best[slot_of[h]] = sim
    m_out = min(m, n)
    return items[:m_out].copy(), best[:m_out].copy()
