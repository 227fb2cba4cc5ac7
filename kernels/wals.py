"""Weighted alternating least squares (WALS) for implicit feedback.

The loss over a user x item matrix given in CSR form (rows = the side being solved):

    L = sum_obs c_ui (1 - x_u.y_i)^2 + w0 sum_unobs (x_u.y_i)^2 + reg (|X|^2 + |Y|^2)

Observed entries have target 1 and weight c_ui, every unobserved entry target 0 and
weight w0. A half step solves X given Y (call it with the transposed CSR and X to solve Y).
Duplicate (u, i) entries count as separate observations; the caller sums them first.

Everything accumulates in float64 and is stored as float32.
"""

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _gram(M):
    # G = M^T M (float64)
    d = M.shape[1]
    G = np.zeros((d, d), dtype=np.float64)
    for i in range(M.shape[0]):
        for a in range(d):
            m_ia = np.float64(M[i, a])
            for b in range(d):
                G[a, b] += m_ia * M[i, b]
    return G


@njit(cache=True, parallel=True)
def _gram_parallel(Y):
    # YtY = Y^T Y (float64); each thread owns whole rows of YtY: no write races
    m, d = Y.shape
    YtY = np.zeros((d, d), dtype=np.float64)
    for a in prange(d):
        for i in range(m):
            y_ia = np.float64(Y[i, a])
            for b in range(d):
                YtY[a, b] += y_ia * Y[i, b]
    return YtY


@njit(cache=True)
def _cholesky_solve(A, rhs, x):
    # A = L L^T (L overwrites A's lower triangle), then L z = rhs, L^T x = z.
    # Hand-written because np.linalg inside Numba calls SciPy's LAPACK bindings, and serving
    # does not depend on SciPy. A is SPD whenever reg > 0 and confidences are >= 0; a
    # non-positive pivot (the caller broke that contract) gives a NaN row instead of raising.
    d = A.shape[0]
    for j in range(d):
        pivot = A[j, j]
        for k in range(j):
            pivot -= A[j, k] * A[j, k]
        if not pivot > 0.0:
            x[:] = np.nan
            return
        l_jj = np.sqrt(pivot)
        A[j, j] = l_jj
        for i in range(j + 1, d):
            t = A[i, j]
            for k in range(j):
                t -= A[i, k] * A[j, k]
            A[i, j] = t / l_jj
    for i in range(d):
        t = rhs[i]
        for k in range(i):
            t -= A[i, k] * x[k]
        x[i] = t / A[i, i]
    for i in range(d - 1, -1, -1):
        t = x[i]
        for k in range(i + 1, d):
            t -= A[k, i] * x[k]
        x[i] = t / A[i, i]


@njit(cache=True)
def _solve_one(indices, confidence, start, end, Y, YtY, reg, w0):
    # x_u = (w0 YtY + sum_i (c_ui - w0) y_i y_i^T + reg I)^-1 sum_i c_ui y_i
    d = Y.shape[1]
    x = np.zeros(d, dtype=np.float64)
    if end <= start:
        return x
    A = np.empty((d, d), dtype=np.float64)
    rhs = np.zeros(d, dtype=np.float64)
    for a in range(d):
        for b in range(a + 1):
            A[a, b] = w0 * YtY[a, b]
        A[a, a] += reg
    for p in range(start, end):
        i = indices[p]
        c_ui = np.float64(confidence[p])
        excess = c_ui - w0
        for a in range(d):
            y_ia = np.float64(Y[i, a])
            rhs[a] += c_ui * y_ia
            s = excess * y_ia
            for b in range(a + 1):
                A[a, b] += s * Y[i, b]
    _cholesky_solve(A, rhs, x)
    return x


@njit(cache=True, parallel=True)
def wals_half_step(indptr, indices, confidence, Y, reg, w0):
    # X_u = (w0 YtY + Yu^T (C_u - w0) Yu + reg I)^-1 Yu^T C_u 1, one independent solve per row
    n = indptr.shape[0] - 1
    d = Y.shape[1]
    YtY = _gram_parallel(Y)
    X = np.zeros((n, d), dtype=np.float32)
    for u in prange(n):
        x = _solve_one(indices, confidence, indptr[u], indptr[u + 1], Y, YtY, reg, w0)
        for a in range(d):
            X[u, a] = x[a]
    return X


# Reassociation lets LLVM vectorise the dot-product reductions of the CG inner loop (a
# 2x speed-up measured here); no 'nnan'/'ninf' flags, so NaN and inf still propagate.
_CG_FASTMATH = {"reassoc", "contract"}


@njit(cache=True, fastmath=_CG_FASTMATH)
def _apply_A(indices, confidence, start, end, Y, YtY, reg, w0, v, out):
    # out = (w0 YtY + reg I) v + sum_i (c_ui - w0) (y_i . v) y_i
    d = Y.shape[1]
    for a in range(d):
        t = reg * v[a]
        for b in range(d):
            t += w0 * YtY[a, b] * v[b]
        out[a] = t
    for p in range(start, end):
        i = indices[p]
        proj = 0.0
        for a in range(d):
            proj += np.float64(Y[i, a]) * v[a]
        s = (np.float64(confidence[p]) - w0) * proj
        for a in range(d):
            out[a] += s * Y[i, a]


@njit(cache=True, parallel=True, fastmath=_CG_FASTMATH)
def wals_half_step_cg(indptr, indices, confidence, Y, X0, reg, w0, steps):
    # X_u ~= argmin of the half-step loss by `steps` conjugate-gradient iterations from X0_u
    # (Hu-Koren-Volinsky / Takacs: A x = b with A x applied in O(nnz_u d + d^2), never formed)
    n = indptr.shape[0] - 1
    d = Y.shape[1]
    YtY = _gram_parallel(Y)
    X = np.zeros((n, d), dtype=np.float32)
    for u in prange(n):
        start, end = indptr[u], indptr[u + 1]
        if end <= start:
            continue  # no observations: the exact minimiser is 0
        x = np.empty(d, dtype=np.float64)
        for a in range(d):
            x[a] = X0[u, a]
        Ax = np.empty(d, dtype=np.float64)
        _apply_A(indices, confidence, start, end, Y, YtY, reg, w0, x, Ax)
        r = -Ax  # r = b - A x, b = sum_i c_ui y_i
        for p in range(start, end):
            c = np.float64(confidence[p])
            for a in range(d):
                r[a] += c * Y[indices[p], a]
        direction = r.copy()
        rs_old = 0.0
        for a in range(d):
            rs_old += r[a] * r[a]
        Ap = np.empty(d, dtype=np.float64)
        for _ in range(steps):
            if rs_old < 1e-20:
                break
            _apply_A(indices, confidence, start, end, Y, YtY, reg, w0, direction, Ap)
            pAp = 0.0
            for a in range(d):
                pAp += direction[a] * Ap[a]
            alpha = rs_old / pAp
            rs_new = 0.0
            for a in range(d):
                x[a] += alpha * direction[a]
                r[a] -= alpha * Ap[a]
                rs_new += r[a] * r[a]
            beta = rs_new / rs_old
            for a in range(d):
                direction[a] = r[a] + beta * direction[a]
            rs_old = rs_new
        for a in range(d):
            X[u, a] = x[a]
    return X


@njit(cache=True)
def wals_fold_in(indices, confidence, Y, YtY, reg, w0):
    # x = (w0 YtY + Yh^T (C_h - w0) Yh + reg I)^-1 Yh^T C_h 1 for one history h
    x = _solve_one(indices, confidence, 0, indices.shape[0], Y, YtY.astype(np.float64), reg, w0)
    return x.astype(np.float32)


@njit(cache=True)
def wals_loss(indptr, indices, confidence, X, Y, reg, w0):
    # L = w0 tr(XtX YtY) + sum_obs [c (1 - p)^2 - w0 p^2] + reg (|X|^2 + |Y|^2), p = x_u.y_i
    XtX = _gram(X)
    YtY = _gram(Y)
    d = X.shape[1]
    loss = 0.0
    for a in range(d):
        for b in range(d):
            loss += XtX[a, b] * YtY[a, b]
    loss *= w0
    for u in range(indptr.shape[0] - 1):
        for p in range(indptr[u], indptr[u + 1]):
            i = indices[p]
            pred = 0.0
            for a in range(d):
                pred += np.float64(X[u, a]) * Y[i, a]
            loss += confidence[p] * (1.0 - pred) ** 2 - w0 * pred * pred
    squares = 0.0
    for a in range(d):
        squares += XtX[a, a] + YtY[a, a]
    return loss + reg * squares


def _solve_one_numpy(Y_rows: np.ndarray, c: np.ndarray, YtY: np.ndarray, reg: float,
                     w0: float) -> np.ndarray:
    # x = (w0 YtY + Yu^T (C_u - w0) Yu + reg I)^-1 Yu^T C_u 1
    d = YtY.shape[0]
    if Y_rows.shape[0] == 0:
        return np.zeros(d, dtype=np.float64)
    A = w0 * YtY + (Y_rows.T * (c - w0)) @ Y_rows + reg * np.eye(d)
    return np.linalg.solve(A, Y_rows.T @ c)


def wals_half_step_numpy(indptr: np.ndarray, indices: np.ndarray, confidence: np.ndarray,
                         Y: np.ndarray, reg: float, w0: float) -> np.ndarray:
    """NumPy twin of `wals_half_step` (a Python loop over rows; reference only)."""
    Y64 = Y.astype(np.float64)
    YtY = Y64.T @ Y64
    n = indptr.shape[0] - 1
    X = np.zeros((n, Y.shape[1]), dtype=np.float32)
    for u in range(n):
        rows = indices[indptr[u]:indptr[u + 1]]
        c = confidence[indptr[u]:indptr[u + 1]].astype(np.float64)
        X[u] = _solve_one_numpy(Y64[rows], c, YtY, reg, w0)
    return X


def wals_fold_in_numpy(indices: np.ndarray, confidence: np.ndarray, Y: np.ndarray,
                       YtY: np.ndarray, reg: float, w0: float) -> np.ndarray:
    """NumPy twin of `wals_fold_in`."""
    x = _solve_one_numpy(Y[indices].astype(np.float64), confidence.astype(np.float64),
                         YtY.astype(np.float64), reg, w0)
    return x.astype(np.float32)


def wals_loss_numpy(indptr: np.ndarray, indices: np.ndarray, confidence: np.ndarray,
                    X: np.ndarray, Y: np.ndarray, reg: float, w0: float) -> float:
    """NumPy twin of `wals_loss`."""
    X64 = X.astype(np.float64)
    Y64 = Y.astype(np.float64)
    XtX = X64.T @ X64
    YtY = Y64.T @ Y64
    rows = np.repeat(np.arange(indptr.shape[0] - 1), np.diff(indptr))
    pred = np.einsum("ij,ij->i", X64[rows], Y64[indices])
    c = confidence.astype(np.float64)
    observed = np.sum(c * (1.0 - pred) ** 2 - w0 * pred * pred)
    return float(w0 * np.sum(XtX * YtY) + observed + reg * (np.trace(XtX) + np.trace(YtY)))


def wals_half_step_cg_numpy(indptr: np.ndarray, indices: np.ndarray, confidence: np.ndarray,
                            Y: np.ndarray, X0: np.ndarray, reg: float, w0: float, steps: int) -> np.ndarray:
    """NumPy twin of `wals_half_step_cg`: the same CG iterations with dense NumPy algebra."""
    Y64 = Y.astype(np.float64)
    YtY = Y64.T @ Y64
    base = w0 * YtY + reg * np.eye(Y.shape[1])
    X = np.zeros((len(indptr) - 1, Y.shape[1]), dtype=np.float32)
    for u in range(len(indptr) - 1):
        rows = indices[indptr[u]:indptr[u + 1]]
        if len(rows) == 0:
            continue
        Yu = Y64[rows]
        c = confidence[indptr[u]:indptr[u + 1]].astype(np.float64)

        def apply(v: np.ndarray, Yu: np.ndarray = Yu, c: np.ndarray = c) -> np.ndarray:
            return base @ v + Yu.T @ ((c - w0) * (Yu @ v))

        x = X0[u].astype(np.float64)
        r = Yu.T @ c - apply(x)
        direction = r.copy()
        rs_old = r @ r
        for _ in range(steps):
            if rs_old < 1e-20:
                break
            Ap = apply(direction)
            alpha = rs_old / (direction @ Ap)
            x = x + alpha * direction
            r = r - alpha * Ap
            rs_new = r @ r
            direction = r + (rs_new / rs_old) * direction
            rs_old = rs_new
        X[u] = x
    return X
