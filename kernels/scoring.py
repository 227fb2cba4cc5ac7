"""Candidate scoring: dot products, cosines and a linear model over gathered rows.

Each kernel reads only the rows `idx` of an item matrix (the candidates), accumulates in
float64 and returns float32. A cosine with a zero-norm side is 0; NaN inputs give NaN.
"""

import numpy as np
from numba import njit

# The helpers address rows as (matrix, row index) rather than taking row views: a view in
# the inner loop costs a reference-count round trip, which dominated gather_max_cosine.
# Query vectors are held as 1 x d matrices for the same reason.


@njit(cache=True)
def _dot(A, r, B, s):
    # A[r] . B[s] over float64 rows. Four partial sums in a fixed order (still deterministic)
    # break the add dependency chain that code without fastmath otherwise waits on.
    d = A.shape[1]
    d4 = d - d % 4
    s0 = s1 = s2 = s3 = 0.0
    for t in range(0, d4, 4):
        s0 += A[r, t] * B[s, t]
        s1 += A[r, t + 1] * B[s, t + 1]
        s2 += A[r, t + 2] * B[s, t + 2]
        s3 += A[r, t + 3] * B[s, t + 3]
    for t in range(d4, d):
        s0 += A[r, t] * B[s, t]
    return (s0 + s1) + (s2 + s3)


@njit(cache=True)
def _as_rows(v):
    # float64 copy of a vector as a 1 x d matrix
    return v.astype(np.float64).reshape((1, v.shape[0]))


@njit(cache=True)
def _load_row(M, i, row):
    # row[0] = float64(M[i]): converted once, then reused by every dot with it
    for t in range(M.shape[1]):
        row[0, t] = M[i, t]


@njit(cache=True)
def _row_norms(Q):
    # |Q[r]| for every row r
    norms = np.empty(Q.shape[0], dtype=np.float64)
    for r in range(Q.shape[0]):
        norms[r] = np.sqrt(_dot(Q, r, Q, r))
    return norms


@njit(cache=True)
def _max_cosine(Q, Q_norms, row, row_norm):
    # max_r cos(Q[r], row[0]) with cos = a . b / (|a| |b|), 0 if either norm is 0;
    # 0 if Q has no rows; NaN propagates as in np.max
    if Q.shape[0] == 0:
        return 0.0
    best = -np.inf
    for r in range(Q.shape[0]):
        cos = 0.0
        if Q_norms[r] != 0.0 and row_norm != 0.0:  # a NaN norm falls through to NaN
            cos = _dot(Q, r, row, 0) / (Q_norms[r] * row_norm)
        if cos > best or np.isnan(cos):
            best = cos
    return best


@njit(cache=True)
def gather_dot(query, matrix, idx):
    # s_j = q . M[idx_j]
    q = _as_rows(query)
    row = np.empty((1, matrix.shape[1]), dtype=np.float64)
    scores = np.empty(idx.shape[0], dtype=np.float32)
    for j in range(idx.shape[0]):
        _load_row(matrix, idx[j], row)
        scores[j] = _dot(q, 0, row, 0)
    return scores


@njit(cache=True)
def gather_cosine(query, matrix, idx):
    # s_j = cos(q, M[idx_j]), the max over a single query row
    q = _as_rows(query)
    q_norms = _row_norms(q)
    row = np.empty((1, matrix.shape[1]), dtype=np.float64)
    scores = np.empty(idx.shape[0], dtype=np.float32)
    for j in range(idx.shape[0]):
        _load_row(matrix, idx[j], row)
        scores[j] = _max_cosine(q, q_norms, row, np.sqrt(_dot(row, 0, row, 0)))
    return scores


@njit(cache=True)
def gather_max_cosine(queries, matrix, idx):
    # s_j = max_r cos(Q[r], M[idx_j])
    Q = queries.astype(np.float64)
    Q_norms = _row_norms(Q)
    row = np.empty((1, matrix.shape[1]), dtype=np.float64)
    scores = np.empty(idx.shape[0], dtype=np.float32)
    for j in range(idx.shape[0]):
        _load_row(matrix, idx[j], row)
        scores[j] = _max_cosine(Q, Q_norms, row, np.sqrt(_dot(row, 0, row, 0)))
    return scores


@njit(cache=True)
def linear_score(features, weights, bias):
    # s = F w + b
    w = _as_rows(weights)
    row = np.empty((1, features.shape[1]), dtype=np.float64)
    scores = np.empty(features.shape[0], dtype=np.float32)
    for j in range(features.shape[0]):
        _load_row(features, j, row)
        scores[j] = _dot(row, 0, w, 0) + bias
    return scores


@njit(cache=True)
def rank_features(tt_user, tt_items, mf_user, mf_items, profile, content, disliked,
                  item_static, coldness, idx):
    # F_j = [tt_u . tt[i], mf_u . mf[i], cos(profile, content[i]),
    #        max_r cos(disliked[r], content[i]), S[i, 0..s-1], S[i, 0] * coldness], i = idx_j
    tt_u = _as_rows(tt_user)
    mf_u = _as_rows(mf_user)
    prof = _as_rows(profile)
    prof_norms = _row_norms(prof)
    Q = disliked.astype(np.float64)
    Q_norms = _row_norms(Q)
    tt_row = np.empty((1, tt_items.shape[1]), dtype=np.float64)
    mf_row = np.empty((1, mf_items.shape[1]), dtype=np.float64)
    content_row = np.empty((1, content.shape[1]), dtype=np.float64)
    n_static = item_static.shape[1]
    cold = np.float32(coldness)  # float32 product, as the twin computes it
    features = np.empty((idx.shape[0], 5 + n_static), dtype=np.float32)
    for j in range(idx.shape[0]):
        i = idx[j]
        _load_row(tt_items, i, tt_row)
        _load_row(mf_items, i, mf_row)
        _load_row(content, i, content_row)
        content_norm = np.sqrt(_dot(content_row, 0, content_row, 0))
        features[j, 0] = _dot(tt_u, 0, tt_row, 0)
        features[j, 1] = _dot(mf_u, 0, mf_row, 0)
        features[j, 2] = _max_cosine(prof, prof_norms, content_row, content_norm)
        features[j, 3] = _max_cosine(Q, Q_norms, content_row, content_norm)
        for c in range(n_static):
            features[j, 4 + c] = item_static[i, c]
        features[j, 4 + n_static] = np.float32(item_static[i, 0]) * cold
    return features


def _cosines_numpy(queries: np.ndarray, matrix: np.ndarray, idx: np.ndarray) -> np.ndarray:
    # C[j, r] = cos(Q[r], M[idx_j]), 0 where either norm is 0 (float64, k x q)
    Q = queries.astype(np.float64)
    M = matrix[idx].astype(np.float64)
    m_norms = np.sqrt(np.sum(M * M, axis=1))[:, None]
    q_norms = np.sqrt(np.sum(Q * Q, axis=1))[None, :]
    zero = (m_norms == 0.0) | (q_norms == 0.0)  # even when the other norm is NaN
    return np.where(zero, 0.0, (M @ Q.T) / np.where(zero, 1.0, m_norms * q_norms))


def gather_dot_numpy(query: np.ndarray, matrix: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """NumPy twin of `gather_dot`."""
    return (matrix[idx].astype(np.float64) @ query.astype(np.float64)).astype(np.float32)


def gather_cosine_numpy(query: np.ndarray, matrix: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """NumPy twin of `gather_cosine`."""
    return _cosines_numpy(query[None, :], matrix, idx)[:, 0].astype(np.float32)


def gather_max_cosine_numpy(queries: np.ndarray, matrix: np.ndarray,
                            idx: np.ndarray) -> np.ndarray:
    """NumPy twin of `gather_max_cosine`."""
    if queries.shape[0] == 0:
        return np.zeros(idx.shape[0], dtype=np.float32)
    return _cosines_numpy(queries, matrix, idx).max(axis=1).astype(np.float32)


def linear_score_numpy(features: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """NumPy twin of `linear_score`."""
    scores = features.astype(np.float64) @ weights.astype(np.float64) + bias
    return scores.astype(np.float32)


def rank_features_numpy(tt_user: np.ndarray, tt_items: np.ndarray, mf_user: np.ndarray,
                        mf_items: np.ndarray, profile: np.ndarray, content: np.ndarray,
                        disliked: np.ndarray, item_static: np.ndarray, coldness: float,
                        idx: np.ndarray) -> np.ndarray:
    """NumPy twin of `rank_features`: the single kernels' twins stacked as columns."""
    static = item_static[idx].astype(np.float32).reshape(len(idx), item_static.shape[1])
    return np.column_stack([
        gather_dot_numpy(tt_user, tt_items, idx),
        gather_dot_numpy(mf_user, mf_items, idx),
        gather_cosine_numpy(profile, content, idx),
        gather_max_cosine_numpy(disliked, content, idx),
        static,
        (static[:, 0] * np.float32(coldness)).astype(np.float32),
    ]).astype(np.float32)
