"""Maximal marginal relevance (MMR): a greedy re-ordering that trades relevance for
diversity.

At each step pick the unselected j maximising
    lam * relevance[j] - (1 - lam) * max_{s selected} cos(V[j], V[s])
(the max is 0 before anything is selected). Ties go to the lower position. lam = 1 is the
relevance order, lam = 0 pure diversity after the first pick. Cosines of a zero-norm row
are 0. The caller passes finite relevance (e.g. min-max normalised scores).
"""

import numpy as np
from numba import njit

from .scoring import FASTMATH, _dot, _row_norms


@njit(cache=True, fastmath=FASTMATH)
def mmr_order(relevance, vectors, lam, n_select):
    # order[t] = argmax_{j unselected} lam rel_j - (1 - lam) max_{s in order[:t]} cos(v_j, v_s)
    n = relevance.shape[0]
    m = min(max(n_select, 0), n)
    order = np.empty(m, dtype=np.int64)
    if m == 0:
        return order
    V = vectors.astype(np.float64)
    norms = _row_norms(V)
    max_sim = np.zeros(n, dtype=np.float64)
    taken = np.zeros(n, dtype=np.bool_)
    for step in range(m):
        best = -1
        best_value = 0.0
        for j in range(n):
            if taken[j]:
                continue
            value = lam * relevance[j] - (1.0 - lam) * max_sim[j]
            if best < 0 or value > best_value:
                best = j
                best_value = value
        order[step] = best
        taken[best] = True
        # max_sim_j = max(max_sim_j, cos(v_j, v_best)) for the still unselected j
        for j in range(n):
            if taken[j] or norms[j] == 0.0 or norms[best] == 0.0:
                continue
            cos = _dot(V, j, V, best) / (norms[j] * norms[best])
            if cos > max_sim[j]:
                max_sim[j] = cos
    return order


def mmr_order_numpy(relevance: np.ndarray, vectors: np.ndarray, lam: float,
                    n_select: int) -> np.ndarray:
    """NumPy twin of `mmr_order`: the full cosine matrix once, then the same greedy loop."""
    n = relevance.shape[0]
    m = min(max(n_select, 0), n)
    V = vectors.astype(np.float64)
    norms = np.sqrt(np.sum(V * V, axis=1))
    zero = (norms[:, None] == 0.0) | (norms[None, :] == 0.0)
    cos = np.where(zero, 0.0, (V @ V.T) / np.where(zero, 1.0, norms[:, None] * norms[None, :]))
    rel = relevance.astype(np.float64)
    max_sim = np.zeros(n, dtype=np.float64)
    taken = np.zeros(n, dtype=np.bool_)
    order = np.empty(m, dtype=np.int64)
    for step in range(m):
        value = np.where(taken, -np.inf, lam * rel - (1.0 - lam) * max_sim)
        best = int(np.argmax(value))  # the first maximum: ties to the lower position
        order[step] = best
        taken[best] = True
        max_sim = np.maximum(max_sim, cos[:, best])
    return order
