"""Candidate scoring: dot products, cosines and a linear model over gathered rows.

Each kernel reads only the rows `idx` of an item matrix (the candidates), accumulates in
float64 and returns float32, except the max cosine to a set of rows (`gather_max_cosine`,
the disliked feature of `rank_features`), which accumulates in float32: the float64 norms
and unit rows are rounded to float32 once per call and each dot U[r] . M[i] is float32
products and sums. Its error is at most about d * 2^-24 in the cosine (|U[r]| = 1, so a
dot's rounding error is bounded by d * 2^-24 * |M[i]|; 5.7e-6 at d = 96, under the tests'
1e-5), and a row with entries beyond ~1e36 would overflow where float64 would not. A cosine
with a zero-norm side is 0; NaN inputs give NaN.

Speed (bench/bench_ranking.py kernels): every kernel here is compiled with
`fastmath=FASTMATH`: reassociation and FMA contraction only (no nnan/ninf/arcp: NaN and
inf propagate and divisions stay exact), which lets LLVM vectorise the reductions. The
query side is converted (dots: to float64; cosines: to unit rows) once per call, not once
per candidate, so a cosine costs one dot and one division by the candidate's norm; a
candidate's content row is read once for its norm and the profile dot together, then by
the disliked rows eight at a time (one load of the row feeds eight float32 accumulators,
which on AVX-512 is also what makes LLVM's vector loop 2 x 16 lanes, so d = 32, 64, 96... leave no
remainder loop; fewer accumulators give 4 x 16 lanes and a slow remainder at d = 96); the
rows of the candidate PREFETCH_AHEAD places ahead are prefetched, so a gather from a
catalogue larger than the caches overlaps the arithmetic. The disliked block is the bulk of
the fused kernel's work (d * q multiply-adds a candidate), hence its float32 arithmetic.
Reassociation changes the rounding, not the result beyond float32 precision (the tests hold
the twins to 1e-5); every kernel uses the same helpers, so the fused kernel equals the
single ones to float32 rounding.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# reassociate + contract to FMA (vectorised reductions); no nnan/ninf, no arcp
FASTMATH = {"reassoc", "contract"}
PREFETCH_AHEAD = 4  # candidates between a row's prefetch and its use

# The helpers address rows as (matrix, row index) rather than taking row views: a view in
# the inner loop costs a reference-count round trip. Query vectors are held as 1 x d
# matrices for the same reason.


@intrinsic
def _prefetch(typingctx, matrix, row, col):
    # a read prefetch of &matrix[row, col] into every cache level (llvm.prefetch); no result
    sig = types.void(matrix, row, col)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]],
                                       wraparound=False, boundscheck=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        # the overloaded intrinsic's name for the pointer spelling llvmlite emits: "i8*"
        # (typed) gives ".p0i8", which LLVM >= 15 upgrades to ".p0" when it parses the IR
        name = "llvm.prefetch.p0" if str(i8p) == "ptr" else "llvm.prefetch.p0i8"
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), name)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, fastmath=FASTMATH)
def _prefetch_row(M, i):
    # every 64-byte line of M[i] (16 float32 apart, and the last element)
    d = M.shape[1]
    for t in range(0, d, 16):
        _prefetch(M, i, t)
    if d > 0:
        _prefetch(M, i, d - 1)


@njit(cache=True, fastmath=FASTMATH)
def _prefetch_ahead(M, idx, j):
    # the row of the candidate PREFETCH_AHEAD places after j, if any
    if j + PREFETCH_AHEAD < idx.shape[0]:
        _prefetch_row(M, idx[j + PREFETCH_AHEAD])


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _dot(A, r, B, s):
    # A[r] . B[s] accumulated in float64 (either side may be float32)
    acc = 0.0
    for t in range(A.shape[1]):
        acc += np.float64(A[r, t]) * np.float64(B[s, t])
    return acc


@njit(cache=True, fastmath=FASTMATH)
def _as_rows(v):
    # float64 copy of a vector as a 1 x d matrix
    return v.astype(np.float64).reshape((1, v.shape[0]))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _row_view(v):
    # a vector as a 1 x d matrix, no copy (_dot converts each element to float64 exactly,
    # so the dots equal those with a float64 copy)
    return v.reshape((1, v.shape[0]))


@njit(cache=True, fastmath=FASTMATH)
def _row_norms(Q):
    # |Q[r]| for every row r
    norms = np.empty(Q.shape[0], dtype=np.float64)
    for r in range(Q.shape[0]):
        norms[r] = np.sqrt(_dot(Q, r, Q, r))
    return norms


@njit(cache=True, fastmath=FASTMATH)
def _unit_rows32(Q):
    # (U, has_zero): U[r] = Q[r] / |Q[r]| (norm and division in float64, rounded to
    # float32) for the rows of nonzero norm (a NaN norm counts as nonzero: its NaN row
    # propagates); has_zero when a row had norm 0, whose cosine with anything is 0
    norms = _row_norms(Q)
    n_unit = 0
    for r in range(Q.shape[0]):
        n_unit += norms[r] != 0.0
    U = np.empty((n_unit, Q.shape[1]), dtype=np.float32)
    u = 0
    for r in range(Q.shape[0]):
        if norms[r] != 0.0:
            for t in range(Q.shape[1]):
                U[u, t] = np.float64(Q[r, t]) / norms[r]
            u += 1
    return U, n_unit < Q.shape[0]


@njit(cache=True, fastmath=FASTMATH)
def _unit_row(v):
    # (v / |v| as a 1 x d float64 matrix, |v| != 0); a zero v gives a zero row
    u = _as_rows(v)
    norm = np.sqrt(_dot(u, 0, u, 0))
    if norm != 0.0:
        for t in range(u.shape[1]):
            u[0, t] = u[0, t] / norm
    return u, norm != 0.0


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _norm2_and_dot(M, i, u):
    # (|M[i]|^2, u[0] . M[i]) in one pass over M[i]
    norm2 = 0.0
    dot = 0.0
    for t in range(M.shape[1]):
        x = np.float64(M[i, t])
        norm2 += x * x
        dot += u[0, t] * x
    return norm2, dot


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _cosine(unit_dot, q_nonzero, m_norm):
    # cos(q, m) from q's unit row: unit_dot / |m|; 0 when either side has norm 0,
    # whatever the other side holds
    if not q_nonzero or m_norm == 0.0:
        return 0.0
    return unit_dot / m_norm


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _nanmax(a, b):
    # max(a, b), NaN if either is NaN (as np.max)
    if a > b or a != a:
        return a
    return b


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _max_dot8(U, r, M, i):
    # max_{r <= s < r+8} U[s] . M[i], float32: one load of M[i, t] feeds eight accumulators
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
    for t in range(U.shape[1]):
        x = M[i, t]
        a0 += U[r, t] * x
        a1 += U[r + 1, t] * x
        a2 += U[r + 2, t] * x
        a3 += U[r + 3, t] * x
        a4 += U[r + 4, t] * x
        a5 += U[r + 5, t] * x
        a6 += U[r + 6, t] * x
        a7 += U[r + 7, t] * x
    return _nanmax(_nanmax(_nanmax(a0, a1), _nanmax(a2, a3)), _nanmax(_nanmax(a4, a5), _nanmax(a6, a7)))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _max_dot4(U, r, M, i):
    # max_{r <= s < r+4} U[s] . M[i], float32
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for t in range(U.shape[1]):
        x = M[i, t]
        a0 += U[r, t] * x
        a1 += U[r + 1, t] * x
        a2 += U[r + 2, t] * x
        a3 += U[r + 3, t] * x
    return _nanmax(_nanmax(a0, a1), _nanmax(a2, a3))


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _max_dot2(U, r, M, i):
    # max(U[r] . M[i], U[r+1] . M[i]), float32
    a0 = a1 = np.float32(0.0)
    for t in range(U.shape[1]):
        x = M[i, t]
        a0 += U[r, t] * x
        a1 += U[r + 1, t] * x
    return _nanmax(a0, a1)


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _dot32(U, r, M, i):
    # U[r] . M[i], float32
    a0 = np.float32(0.0)
    for t in range(U.shape[1]):
        a0 += U[r, t] * M[i, t]
    return a0


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _max_unit_dot(U, M, i):
    # max_r U[r] . M[i] in float32 (-inf without rows), eight rows per pass over M[i], then
    # four, two, one. Eight float32 accumulators (on AVX-512) make LLVM's vector loop 2 x 16 lanes wide,
    # which divides the usual dims (32, 64, 96, ...) without a scalar remainder.
    q = U.shape[0]
    best = np.float32(-np.inf)
    r = 0
    while r + 8 <= q:
        best = _nanmax(best, _max_dot8(U, r, M, i))
        r += 8
    if r + 4 <= q:
        best = _nanmax(best, _max_dot4(U, r, M, i))
        r += 4
    if r + 2 <= q:
        best = _nanmax(best, _max_dot2(U, r, M, i))
        r += 2
    if r < q:
        best = _nanmax(best, _dot32(U, r, M, i))
    return best


@njit(cache=True, fastmath=FASTMATH, inline="always")
def _max_cosine(U, has_zero, M, i, m_norm):
    # max_r cos(Q[r], M[i]) from Q's float32 unit rows U: cos = U[r] . M[i] / |M[i]|, 0 for
    # a zero-norm side (the zero-norm side wins over a NaN one); 0 if Q has no rows
    if U.shape[0] == 0 or m_norm == 0.0:
        return 0.0
    best = _max_unit_dot(U, M, i) / m_norm
    return _nanmax(best, 0.0) if has_zero else best


@njit(cache=True, fastmath=FASTMATH)
def gather_dot(query, matrix, idx):
    # s_j = q . M[idx_j]
    q = _as_rows(query)
    scores = np.empty(idx.shape[0], dtype=np.float32)
    for j in range(idx.shape[0]):
        _prefetch_ahead(matrix, idx, j)
        scores[j] = _dot(matrix, idx[j], q, 0)
    return scores


@njit(cache=True, fastmath=FASTMATH)
def gather_cosine(query, matrix, idx):
    # s_j = cos(q, M[idx_j])
    u, nonzero = _unit_row(query)
    scores = np.empty(idx.shape[0], dtype=np.float32)
    for j in range(idx.shape[0]):
        _prefetch_ahead(matrix, idx, j)
        norm2, dot = _norm2_and_dot(matrix, idx[j], u)
        scores[j] = _cosine(dot, nonzero, np.sqrt(norm2))
    return scores


@njit(cache=True, fastmath=FASTMATH)
def gather_max_cosine(queries, matrix, idx):
    # s_j = max_r cos(Q[r], M[idx_j])
    U, has_zero = _unit_rows32(queries)
    scores = np.zeros(idx.shape[0], dtype=np.float32)
    if U.shape[0] == 0:  # no rows, or only zero rows: every cosine is 0
        return scores
    zero = np.zeros((1, matrix.shape[1]), dtype=np.float64)
    for j in range(idx.shape[0]):
        _prefetch_ahead(matrix, idx, j)
        i = idx[j]
        # |M[i]| by the fused kernel's own pass, so the two agree to the last bit
        norm2 = _norm2_and_dot(matrix, i, zero)[0]
        scores[j] = _max_cosine(U, has_zero, matrix, i, np.sqrt(norm2))
    return scores


@njit(cache=True, fastmath=FASTMATH)
def linear_score(features, weights, bias):
    # s = F w + b
    w = _row_view(weights)
    scores = np.empty(features.shape[0], dtype=np.float32)
    for j in range(features.shape[0]):
        scores[j] = _dot(features, j, w, 0) + bias
    return scores


@njit(cache=True, fastmath=FASTMATH)
def rank_features(tt_user, tt_items, mf_user, mf_items, profile, content, disliked,
                  item_static, coldness, idx):
    # F_j = [tt_u . tt[i], mf_u . mf[i], cos(profile, content[i]),
    #        max_r cos(disliked[r], content[i]), S[i, 0..s-1], S[i, 0] * coldness], i = idx_j
    tt_u = _as_rows(tt_user)  # float64 once per call, not once per candidate
    mf_u = _as_rows(mf_user)
    p, p_nonzero = _unit_row(profile)
    U, u_zero = _unit_rows32(disliked)
    n_static = item_static.shape[1]
    cold = np.float32(coldness)  # float32 product, as the twin computes it
    features = np.empty((idx.shape[0], 5 + n_static), dtype=np.float32)
    for j in range(idx.shape[0]):
        if j + PREFETCH_AHEAD < idx.shape[0]:
            ahead = idx[j + PREFETCH_AHEAD]
            _prefetch_row(tt_items, ahead)
            _prefetch_row(mf_items, ahead)
            _prefetch_row(content, ahead)
            _prefetch_row(item_static, ahead)
        i = idx[j]
        norm2, profile_dot = _norm2_and_dot(content, i, p)
        content_norm = np.sqrt(norm2)
        features[j, 0] = _dot(tt_items, i, tt_u, 0)
        features[j, 1] = _dot(mf_items, i, mf_u, 0)
        features[j, 2] = _cosine(profile_dot, p_nonzero, content_norm)
        features[j, 3] = _max_cosine(U, u_zero, content, i, content_norm)
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
    """NumPy twin of `gather_max_cosine`, computed the same way: float64 norms, the query
    rows' unit vectors rounded to float32 once, float32 dots (one float32 matrix product),
    so the benchmark compares like with like. The tests hold both to the float64
    definition within d * 2^-24 (module docstring)."""
    if queries.shape[0] == 0:
        return np.zeros(idx.shape[0], dtype=np.float32)
    Q = queries.astype(np.float64)
    q_norms = np.sqrt(np.sum(Q * Q, axis=1))
    nonzero = q_norms != 0.0  # a NaN norm counts as nonzero: its NaN row propagates
    U = (Q[nonzero] / q_norms[nonzero, None]).astype(np.float32)
    M = matrix[idx]
    M64 = M.astype(np.float64)
    m_norms = np.sqrt(np.sum(M64 * M64, axis=1))
    if U.shape[0]:
        best = (M.astype(np.float32) @ U.T).max(axis=1)  # max propagates NaN
    else:
        best = np.full(len(idx), -np.inf, dtype=np.float32)
    if U.shape[0] < Q.shape[0]:  # a zero-norm query row: a cosine of 0 in the max (NaN still wins)
        best = np.where(np.isnan(best), best, np.maximum(best, 0.0))
    zero = m_norms == 0.0  # a zero-norm candidate: 0, even against a NaN row
    return np.where(zero, 0.0, best / np.where(zero, 1.0, m_norms)).astype(np.float32)


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
