"""Contract tests for kernels/: every test runs the Numba kernel and its NumPy twin.

Run with NUMBA_CACHE_DIR=.cache/numba so later runs load the compiled kernels from the cache.
"""

import itertools
import math

import numpy as np
import pytest

import kernels
from kernels import KERNELS

ATOL = 1e-5  # numba vs numpy, scoring
WALS_RTOL = 1e-4  # numba vs numpy and vs the dense reference, WALS
WALS_ATOL = 1e-6
LOSS_RTOL = 1e-6  # allowed loss increase per half step (float32 rounding of the factors)

IMPLS = ["numba", "numpy"]


@pytest.fixture(params=IMPLS)
def impl(request):
    which = 0 if request.param == "numba" else 1
    return lambda name: KERNELS[name][which]


# ---------------------------------------------------------------------------- helpers


def csr_from_dense(mask, values):
    """CSR (indptr, indices, data) of the True entries of `mask`, row-major."""
    indptr = np.zeros(mask.shape[0] + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(mask.sum(axis=1))
    rows, cols = np.nonzero(mask)
    return indptr, cols.astype(np.int64), values[rows, cols].astype(np.float32)


def random_interactions(seed, n, m, density, empty_rows=()):
    rng = np.random.default_rng(seed)
    mask = rng.random((n, m)) < density
    mask[list(empty_rows)] = False
    confidence = (1.0 + 9.0 * rng.random((n, m))).astype(np.float32)
    return mask, confidence


def dense_half_step(mask, confidence, Y, reg, w0):
    """argmin_x sum_i W_ui (P_ui - x.y_i)^2 + reg |x|^2 per row u, by weighted least squares.

    Written from the loss definition (W = c on observed, w0 elsewhere; P = 1 on observed,
    0 elsewhere), not from the kernels' normal equations.
    """
    Y64 = Y.astype(np.float64)
    d = Y.shape[1]
    X = np.zeros((mask.shape[0], d))
    for u in range(mask.shape[0]):
        sqrt_w = np.sqrt(np.where(mask[u], confidence[u].astype(np.float64), w0))
        design = np.vstack([sqrt_w[:, None] * Y64, math.sqrt(reg) * np.eye(d)])
        target = np.concatenate([sqrt_w * mask[u], np.zeros(d)])
        X[u] = np.linalg.lstsq(design, target, rcond=None)[0]
    return X


def dense_loss(mask, confidence, X, Y, reg, w0):
    """The WALS loss summed over every (u, i) entry of the dense matrix."""
    weight = np.where(mask, confidence.astype(np.float64), w0)
    residual = mask - X.astype(np.float64) @ Y.astype(np.float64).T
    return float(np.sum(weight * residual**2)
                 + reg * (np.sum(X.astype(np.float64) ** 2) + np.sum(Y.astype(np.float64) ** 2)))


def train(kernel, mask, confidence, d, reg, w0, steps, seed):
    """Alternate `steps` half steps (X first) from a random start; returns X, Y, losses."""
    rng = np.random.default_rng(seed)
    X = (0.1 * rng.standard_normal((mask.shape[0], d))).astype(np.float32)
    Y = (0.1 * rng.standard_normal((mask.shape[1], d))).astype(np.float32)
    user_csr = csr_from_dense(mask, confidence)
    item_csr = csr_from_dense(mask.T, confidence.T)
    losses = [kernel("wals_loss")(*user_csr, X, Y, reg, w0)]
    for step in range(steps):
        if step % 2 == 0:
            X = kernel("wals_half_step")(*user_csr, Y, reg, w0)
        else:
            Y = kernel("wals_half_step")(*item_csr, X, reg, w0)
        losses.append(kernel("wals_loss")(*user_csr, X, Y, reg, w0))
    return X, Y, losses


def reference_top_k(scores, k, excluded=None):
    """Full sort by (NaN last, score descending, position ascending)."""
    positions = [j for j in range(len(scores)) if excluded is None or not excluded[j]]
    order = sorted(positions, key=lambda j: (math.isnan(scores[j]),
                                             0.0 if math.isnan(scores[j]) else -scores[j], j))
    return np.array(order[:max(k, 0)], dtype=np.int64)


def scoring_inputs(seed, n=300, k=120, q=4):
    rng = np.random.default_rng(seed)

    def mat(rows, cols):
        return rng.standard_normal((rows, cols)).astype(np.float32)

    content = mat(n, 16)
    content[5] = 0.0  # a zero content row: cosine 0
    idx = rng.integers(0, n, size=k).astype(np.int64)
    idx[:3] = 5
    return {"tt_user": mat(1, 32)[0], "tt_items": mat(n, 32), "mf_user": mat(1, 8)[0],
            "mf_items": mat(n, 8), "profile": mat(1, 16)[0], "content": content,
            "disliked": mat(q, 16),
            "item_static": np.log1p(rng.random((n, 3)) * 100).astype(np.float32), "coldness": 0.4,
            "idx": idx}


def kernel_cases():
    """name -> positional arguments for the numba-vs-numpy comparison on random data."""
    s = scoring_inputs(1)
    mask, confidence = random_interactions(2, 40, 30, 0.15, empty_rows=(3,))
    indptr, indices, data = csr_from_dense(mask, confidence)
    rng = np.random.default_rng(3)
    Y = rng.standard_normal((30, 6)).astype(np.float32)
    X = rng.standard_normal((40, 6)).astype(np.float32)
    Y64 = Y.astype(np.float64)
    YtY = (Y64.T @ Y64).astype(np.float32)
    scores = rng.integers(-20, 20, size=500).astype(np.float32)
    scores[rng.integers(0, 500, size=30)] = np.nan
    features = rng.standard_normal((50, 5)).astype(np.float32)
    return {
        "wals_half_step": (indptr, indices, data, Y, 0.1, 0.5),
        "wals_half_step_cg": (indptr, indices, data, Y, X, 0.1, 0.5, 3),
        "wals_fold_in": (indices[:7].copy(), data[:7].copy(), Y, YtY, 0.1, 0.5),
        "wals_loss": (indptr, indices, data, X, Y, 0.1, 0.5),
        "gather_dot": (s["tt_user"], s["tt_items"], s["idx"]),
        "gather_cosine": (s["profile"], s["content"], s["idx"]),
        "gather_max_cosine": (s["disliked"], s["content"], s["idx"]),
        "linear_score": (features, rng.standard_normal(5).astype(np.float32), 0.25),
        "rank_features": tuple(s.values()),
        "top_k": (scores, 37),
        "top_k_masked": (scores, rng.random(500) < 0.3, 37),
        "mmr_order": (rng.random(80).astype(np.float32), s["content"][:80].copy(), 0.6, 30),
        "near_duplicate_keep": (np.repeat(s["content"][:20], 3, axis=0), rng.integers(-1, 30, 60),
                                rng.integers(-1, 3, 60), 0.9),
    }


# ------------------------------------------------------------------ registry, warmup


def test_registry_pairs_every_kernel_with_its_numpy_twin():
    assert set(KERNELS) == {"wals_half_step", "wals_half_step_cg", "wals_fold_in", "wals_loss", "gather_dot",
                            "gather_cosine", "gather_max_cosine", "linear_score",
                            "rank_features", "top_k", "top_k_masked", "mmr_order",
                            "near_duplicate_keep"}
    for name, (fast, twin) in KERNELS.items():
        assert fast is getattr(kernels, name)
        assert twin is getattr(kernels, name + "_numpy")
        assert twin.__name__ == name + "_numpy"
        assert hasattr(fast, "py_func"), f"{name} is not a Numba dispatcher"


def test_warmup_compiles_the_production_signatures():
    kernels.warmup()
    for name, (fast, _) in KERNELS.items():
        assert fast.signatures, f"warmup() did not compile {name}"


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_numba_matches_numpy_on_random_data(name):
    args = kernel_cases()[name]
    fast, twin = KERNELS[name]
    got, want = fast(*args), twin(*args)
    if name == "near_duplicate_keep":
        assert got.dtype == want.dtype == np.bool_
        np.testing.assert_array_equal(got, want, err_msg=f"{name}: numba != numpy (exact)")
    elif name.startswith("top_k") or name == "mmr_order":
        assert got.dtype == want.dtype == np.int64
        np.testing.assert_array_equal(got, want, err_msg=f"{name}: numba != numpy (exact)")
    elif name.startswith("wals"):
        np.testing.assert_allclose(got, want, rtol=WALS_RTOL, atol=WALS_ATOL,
                                   err_msg=f"{name}: numba vs numpy beyond rtol {WALS_RTOL}")
    else:
        assert got.dtype == want.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL,
                                   err_msg=f"{name}: numba vs numpy beyond atol {ATOL}")


# --------------------------------------------------------------------------- WALS


def test_half_step_solves_the_weighted_least_squares_problem(impl):
    mask, confidence = random_interactions(11, 9, 12, 0.3, empty_rows=(4,))
    Y = np.random.default_rng(12).standard_normal((12, 3)).astype(np.float32)
    X = np.random.default_rng(13).standard_normal((9, 3)).astype(np.float32)
    reg, w0 = 0.3, 0.2
    got_X = impl("wals_half_step")(*csr_from_dense(mask, confidence), Y, reg, w0)
    got_Y = impl("wals_half_step")(*csr_from_dense(mask.T, confidence.T), X, reg, w0)
    assert got_X.dtype == np.float32 and got_X.shape == (9, 3)
    np.testing.assert_array_equal(got_X[4], 0.0, err_msg="a row with no entries must be 0")
    np.testing.assert_allclose(got_X, dense_half_step(mask, confidence, Y, reg, w0),
                               rtol=WALS_RTOL, atol=WALS_ATOL,
                               err_msg=f"user step vs dense lstsq beyond rtol {WALS_RTOL}")
    np.testing.assert_allclose(got_Y, dense_half_step(mask.T, confidence.T, X, reg, w0),
                               rtol=WALS_RTOL, atol=WALS_ATOL,
                               err_msg=f"item step vs dense lstsq beyond rtol {WALS_RTOL}")


def test_loss_matches_the_dense_definition(impl):
    mask, confidence = random_interactions(21, 15, 11, 0.25)
    rng = np.random.default_rng(22)
    X = rng.standard_normal((15, 4)).astype(np.float32)
    Y = rng.standard_normal((11, 4)).astype(np.float32)
    got = impl("wals_loss")(*csr_from_dense(mask, confidence), X, Y, 0.2, 0.7)
    want = dense_loss(mask, confidence, X, Y, 0.2, 0.7)
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-9), "trace-form loss vs dense sum beyond rel 1e-9"


def test_loss_never_increases_across_alternating_half_steps(impl):
    mask, confidence = random_interactions(31, 30, 25, 0.2)
    _, _, losses = train(impl, mask, confidence, d=5, reg=0.05, w0=0.5, steps=10, seed=32)
    for step, (before, after) in enumerate(itertools.pairwise(losses)):
        assert after <= before * (1 + LOSS_RTOL), (
            f"half step {step} raised the loss {before} -> {after} (allowed rel {LOSS_RTOL})")
    assert losses[-1] < 0.5 * losses[0], "10 half steps should at least halve the loss"


def test_checkerboard_users_rank_their_own_block_first(impl):
    blocks, size, held_out = 4, 10, 3
    n = blocks * size
    block = np.arange(n) // size  # users and items share the block layout
    rng = np.random.default_rng(41)
    seen = block[:, None] == block[None, :]
    for u in range(n):
        own = np.flatnonzero(block == block[u])
        seen[u, rng.choice(own, size=held_out, replace=False)] = False
    confidence = np.full((n, n), 5.0, dtype=np.float32)
    # one factor per block: the matrix is rank 4 by construction. With spare factors (d=8)
    # and small reg the model can also fit the held-out zeros, which is not what this tests.
    X, Y, _ = train(impl, seen, confidence, d=blocks, reg=0.1, w0=0.1, steps=20, seed=42)
    scores = X @ Y.T
    for u in range(n):
        top = impl("top_k_masked")(scores[u], seen[u], held_out)
        assert top.shape == (held_out,)
        assert np.all(block[top] == block[u]), (
            f"user {u} (block {block[u]}): top unseen items {top} in blocks {block[top]}")


def test_fold_in_reproduces_the_half_step_row(impl):
    mask, confidence = random_interactions(51, 20, 16, 0.3, empty_rows=(7,))
    X, Y, _ = train(impl, mask, confidence, d=4, reg=0.1, w0=0.5, steps=4, seed=52)
    indptr, indices, data = csr_from_dense(mask, confidence)
    X = impl("wals_half_step")(indptr, indices, data, Y, 0.1, 0.5)
    Y64 = Y.astype(np.float64)
    YtY = (Y64.T @ Y64).astype(np.float32)
    for u in range(20):
        lo, hi = indptr[u], indptr[u + 1]
        x = impl("wals_fold_in")(indices[lo:hi], data[lo:hi], Y, YtY, 0.1, 0.5)
        assert x.dtype == np.float32 and x.shape == (4,)
        np.testing.assert_allclose(x, X[u], rtol=WALS_RTOL, atol=WALS_ATOL,
                                   err_msg=f"user {u}: fold-in vs half step beyond rtol "
                                           f"{WALS_RTOL}")


# -------------------------------------------------------------------------- top-k


def tricky_scores(seed, n):
    rng = np.random.default_rng(seed)
    scores = rng.integers(-5, 5, size=n).astype(np.float32)  # many ties
    scores[rng.choice(n, size=n // 10, replace=False)] = np.nan
    scores[[1, 2]] = [np.inf, -np.inf]
    scores[scores == 0] = -0.0  # -0.0 ties with 0.0
    scores[3] = 0.0
    return scores


@pytest.mark.parametrize("k", [0, 1, 7, 119, 120, 200])
def test_top_k_matches_a_full_sort(impl, k):
    scores = tricky_scores(61, 120)
    got = impl("top_k")(scores, k)
    assert got.dtype == np.int64 and got.shape == (min(k, 120),)
    np.testing.assert_array_equal(got, reference_top_k(scores, k), err_msg="top_k order (exact)")


def test_top_k_on_continuous_scores_matches_argsort(impl):
    scores = np.random.default_rng(62).standard_normal(5000).astype(np.float32)
    np.testing.assert_array_equal(impl("top_k")(scores, 50), np.argsort(-scores)[:50])


@pytest.mark.parametrize("scores", [np.empty(0, np.float32), np.full(6, np.nan, np.float32),
                                    np.zeros(6, np.float32)], ids=["empty", "all_nan", "flat"])
def test_top_k_degenerate_vectors(impl, scores):
    np.testing.assert_array_equal(impl("top_k")(scores, 4), reference_top_k(scores, 4))


@pytest.mark.parametrize("k", [0, 5, 60, 120])
def test_top_k_masked_skips_excluded_positions(impl, k):
    scores = tricky_scores(71, 120)
    excluded = np.random.default_rng(72).random(120) < 0.5
    got = impl("top_k_masked")(scores, excluded, k)
    want = reference_top_k(scores, k, excluded)
    assert got.dtype == np.int64
    assert len(want) == min(k, int((~excluded).sum())), "the result may be shorter than k"
    np.testing.assert_array_equal(got, want, err_msg="top_k_masked order (exact)")


def test_top_k_masked_all_excluded_is_empty(impl):
    scores = np.arange(5, dtype=np.float32)
    got = impl("top_k_masked")(scores, np.ones(5, dtype=np.bool_), 3)
    assert got.dtype == np.int64 and got.shape == (0,)


# ------------------------------------------------------------------------ scoring


def test_rank_features_equals_the_stacked_single_kernels(impl):
    s = scoring_inputs(81)
    got = impl("rank_features")(*s.values())
    want = np.stack([
        impl("gather_dot")(s["tt_user"], s["tt_items"], s["idx"]),
        impl("gather_dot")(s["mf_user"], s["mf_items"], s["idx"]),
        impl("gather_cosine")(s["profile"], s["content"], s["idx"]),
        impl("gather_max_cosine")(s["disliked"], s["content"], s["idx"]),
        s["item_static"][s["idx"], 0],
        s["item_static"][s["idx"], 1],
        s["item_static"][s["idx"], 2],
        (s["item_static"][s["idx"], 0] * np.float32(s["coldness"])).astype(np.float32),
    ], axis=1)
    assert got.dtype == np.float32 and got.shape == (len(s["idx"]), 8)
    # to float32 rounding, not bit-exact: with fastmath reassoc the vectoriser may sum in
    # another order in each compiled function, per CPU (AVX-512 here, AVX2 or NEON elsewhere)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg="fused != stacked single kernels")


def test_scoring_known_values(impl):
    M = np.array([[1, 0], [0, 2], [3, 4], [0, 0]], dtype=np.float32)
    idx = np.array([2, 0, 3, 1], dtype=np.int64)
    q = np.array([1, 1], dtype=np.float32)
    np.testing.assert_allclose(impl("gather_dot")(q, M, idx), [7, 1, 0, 2], atol=ATOL)
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(impl("gather_cosine")(q, M, idx), [7 / (5 * math.sqrt(2)), r, 0, r],
                               atol=ATOL, err_msg=f"cosine beyond atol {ATOL}")
    Q = np.array([[1, 0], [0, -1]], dtype=np.float32)
    np.testing.assert_allclose(impl("gather_max_cosine")(Q, M, idx), [0.6, 1, 0, 0],
                               atol=ATOL, err_msg=f"max cosine beyond atol {ATOL}")
    F = np.array([[1, 2], [3, 4]], dtype=np.float32)
    np.testing.assert_allclose(impl("linear_score")(F, np.array([0.5, -1], np.float32), 2.0),
                               [0.5, -0.5], atol=ATOL)


def test_scoring_zero_vectors(impl):
    M = np.random.default_rng(91).standard_normal((10, 3)).astype(np.float32)
    idx = np.arange(10, dtype=np.int64)
    zero = np.zeros(3, dtype=np.float32)
    np.testing.assert_array_equal(impl("gather_dot")(zero, M, idx), 0.0)
    np.testing.assert_array_equal(impl("gather_cosine")(zero, M, idx), 0.0)
    no_rows = np.zeros((0, 3), dtype=np.float32)
    np.testing.assert_array_equal(impl("gather_max_cosine")(no_rows, M, idx), 0.0)
    # a zero disliked row contributes cosine 0, so the max is never below 0
    Q = np.stack([zero, -M[0]])
    got = impl("gather_max_cosine")(Q, M, np.array([0], dtype=np.int64))
    np.testing.assert_array_equal(got, [0.0])
    np.testing.assert_allclose(impl("gather_cosine")(M[4], M, idx[4:5]), [1.0], atol=ATOL)


def test_scoring_empty_candidates(impl):
    s = scoring_inputs(92)
    s["idx"] = np.empty(0, dtype=np.int64)
    empty = s["idx"]
    for name, args in [("gather_dot", (s["tt_user"], s["tt_items"], empty)),
                       ("gather_cosine", (s["profile"], s["content"], empty)),
                       ("gather_max_cosine", (s["disliked"], s["content"], empty)),
                       ("linear_score", (np.zeros((0, 5), np.float32),
                                         np.ones(5, np.float32), 1.0))]:
        got = impl(name)(*args)
        assert got.dtype == np.float32 and got.shape == (0,), name
    got = impl("rank_features")(*s.values())
    assert got.dtype == np.float32 and got.shape == (0, 8)


@pytest.mark.parametrize("q", [1, 2, 3, 7, 8, 10, 13, 50])
def test_max_cosine_within_the_float32_bound_of_the_exact_value(impl, q):
    """The max cosine to the disliked rows accumulates in float32 (kernels/scoring.py): each
    dot of a unit row with a row x is off by at most d * 2^-24 * |x|, plus 2^-24 for the
    unit row's rounding and 2^-24 for the float32 result, so the cosine by (d + 2) * 2^-24
    of the float64 value computed here from the definition. q covers every pass width."""
    rng = np.random.default_rng(95)
    d = 96  # the content dim of bench_ranking.py kernels
    content = (rng.standard_normal((400, d)) * 30).astype(np.float32)
    disliked = rng.standard_normal((q, d)).astype(np.float32)
    disliked[q // 2] = 0.0  # a zero row: cosine 0, so the max is never below 0
    idx = rng.integers(0, 400, size=300).astype(np.int64)
    C, Q = content[idx].astype(np.float64), disliked.astype(np.float64)
    c_norms, q_norms = np.linalg.norm(C, axis=1), np.linalg.norm(Q, axis=1)
    cosines = np.where(q_norms > 0, C @ Q.T / (c_norms[:, None] * np.where(q_norms > 0, q_norms, 1.0)), 0.0)
    exact = cosines.max(axis=1)
    bound = (d + 2) * 2.0**-24
    s = scoring_inputs(96, n=400, k=300)
    profile = rng.standard_normal(d).astype(np.float32)
    fused = impl("rank_features")(s["tt_user"], s["tt_items"], s["mf_user"], s["mf_items"], profile, content,
                                  disliked, s["item_static"], s["coldness"], idx)
    for name, got in [("gather_max_cosine", impl("gather_max_cosine")(disliked, content, idx)),
                      ("rank_features[:, 3]", fused[:, 3])]:
        np.testing.assert_allclose(got, exact, rtol=0, atol=bound,
                                   err_msg=f"{name}, q={q}: beyond (d + 2) * 2^-24 = {bound:.2e}")


def test_rank_features_without_dislikes(impl):
    s = scoring_inputs(93, q=0)
    got = impl("rank_features")(*s.values())
    np.testing.assert_array_equal(got[:, 3], 0.0, err_msg="no disliked rows: column 3 is 0")


def test_fold_in_with_no_history_is_zero(impl):
    Y = np.ones((4, 3), dtype=np.float32)
    x = impl("wals_fold_in")(np.empty(0, np.int64), np.empty(0, np.float32), Y,
                             np.eye(3, dtype=np.float32), 0.1, 1.0)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, np.zeros(3))


def test_scoring_propagates_nan(impl):
    M = np.ones((3, 4), dtype=np.float32)
    M[1, 2] = np.nan
    idx = np.arange(3, dtype=np.int64)
    q = np.ones(4, dtype=np.float32)
    Q = np.stack([q, -q, q])
    want = [False, True, False]
    for name, query in [("gather_dot", q), ("gather_cosine", q), ("gather_max_cosine", Q)]:
        np.testing.assert_array_equal(np.isnan(impl(name)(query, M, idx)), want, err_msg=name)
    zero = np.zeros(4, dtype=np.float32)  # a zero side wins over a NaN one: cosine 0
    np.testing.assert_array_equal(impl("gather_cosine")(zero, M, idx), 0.0)


def test_cg_half_step_converges_to_the_exact_solve():
    """With as many CG steps as dimensions, CG is the exact solve (up to rounding); with 3
    warm-started steps, alternating CG still decreases the loss every iteration."""
    rng = np.random.default_rng(17)
    n_users, n_items, d = 60, 40, 6
    dense = rng.random((n_users, n_items)) < 0.15
    indptr = np.r_[0, np.cumsum(dense.sum(axis=1))].astype(np.int64)
    indices = np.nonzero(dense)[1].astype(np.int64)
    conf = (1 + 5 * rng.random(len(indices))).astype(np.float32)
    Y = (rng.standard_normal((n_items, d)) * 0.3).astype(np.float32)
    X0 = np.zeros((n_users, d), dtype=np.float32)
    exact = KERNELS["wals_half_step"][0](indptr, indices, conf, Y, 0.1, 0.5)
    cg = KERNELS["wals_half_step_cg"][0](indptr, indices, conf, Y, X0, 0.1, 0.5, 3 * d)
    np.testing.assert_allclose(cg, exact, rtol=1e-3, atol=1e-4, err_msg="CG with 3d steps must reach the exact solve")
    # alternate with 3 CG steps, warm-started: the loss falls monotonically
    users_of = np.repeat(np.arange(n_users), np.diff(indptr))
    order = np.lexsort((users_of, indices))
    iptr = np.r_[0, np.cumsum(np.bincount(indices, minlength=n_items))].astype(np.int64)
    iidx, iconf = users_of[order].astype(np.int64), conf[order]
    X = X0
    losses = []
    for _ in range(8):
        X = KERNELS["wals_half_step_cg"][0](indptr, indices, conf, Y, X, 0.1, 0.5, 3)
        Y = KERNELS["wals_half_step_cg"][0](iptr, iidx, iconf, X, Y, 0.1, 0.5, 3)
        losses.append(KERNELS["wals_loss"][0](indptr, indices, conf, X, Y, 0.1, 0.5))
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:])), f"CG ALS loss rose: {losses}"
