"""Greedy near-duplicate removal over a ranked list.

Walking the rows in order, row a is kept unless an earlier kept row b has the same title
key (keys < 0 mean "no title"), or the same group (e.g. creator; groups < 0 mean "none")
and cos(V[a], V[b]) > threshold. Content is compared only within a group because coarse
content (a genre set) is shared by many distinct items: two dramas are not duplicates, two
near-identical uploads by one creator are. Cosines with a zero-norm row are 0.
"""

import numpy as np
from numba import njit

from .scoring import FASTMATH, _dot, _row_norms


@njit(cache=True, fastmath=FASTMATH)
def near_duplicate_keep(vectors, title_keys, groups, threshold):
    # keep_a = not any_{b < a, keep_b} (key_a == key_b >= 0  or
    #                                   (group_a == group_b >= 0  and  cos(v_a, v_b) > threshold))
    n = vectors.shape[0]
    V = vectors.astype(np.float64)
    norms = _row_norms(V)
    keep = np.zeros(n, dtype=np.bool_)
    kept = np.empty(n, dtype=np.int64)
    n_kept = 0
    for a in range(n):
        duplicate = False
        for r in range(n_kept):
            b = kept[r]
            if title_keys[a] >= 0 and title_keys[a] == title_keys[b]:
                duplicate = True
                break
            if groups[a] < 0 or groups[a] != groups[b] or norms[a] == 0.0 or norms[b] == 0.0:
                continue
            if _dot(V, a, V, b) / (norms[a] * norms[b]) > threshold:
                duplicate = True
                break
        if not duplicate:
            keep[a] = True
            kept[n_kept] = a
            n_kept += 1
    return keep


def near_duplicate_keep_numpy(vectors: np.ndarray, title_keys: np.ndarray, groups: np.ndarray,
                              threshold: float) -> np.ndarray:
    """NumPy twin of `near_duplicate_keep`: the full cosine matrix once, then the same walk."""
    n = vectors.shape[0]
    V = vectors.astype(np.float64)
    norms = np.sqrt(np.sum(V * V, axis=1))
    zero = (norms[:, None] == 0.0) | (norms[None, :] == 0.0)
    cos = np.where(zero, 0.0, (V @ V.T) / np.where(zero, 1.0, norms[:, None] * norms[None, :]))
    same_title = (title_keys[:, None] == title_keys[None, :]) & (title_keys[:, None] >= 0)
    same_group = (groups[:, None] == groups[None, :]) & (groups[:, None] >= 0)
    duplicate_of = same_title | (same_group & (cos > threshold))
    keep = np.zeros(n, dtype=np.bool_)
    for a in range(n):
        keep[a] = not np.any(duplicate_of[a, :a] & keep[:a])
    return keep
