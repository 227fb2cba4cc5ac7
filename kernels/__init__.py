"""Pure compute kernels: contiguous arrays in, arrays out.

Every Numba kernel has a NumPy twin `<name>_numpy` with the same signature and result.
The kernels never validate: callers pass C-contiguous writable arrays of the production
dtypes (float32 vectors and scores, int64 indices, bool masks) and Python float/int
scalars. Any other dtype, layout or a read-only array is a new Numba signature and compiles
on the request that first sees it; `warmup()` compiles (or loads from cache) exactly the
production signatures.
"""

from collections.abc import Callable
from typing import Any

import numpy as np

from .dedupe import near_duplicate_keep, near_duplicate_keep_numpy
from .mmr import mmr_order, mmr_order_numpy
from .scoring import (
    gather_cosine,
    gather_cosine_numpy,
    gather_dot,
    gather_dot_numpy,
    gather_max_cosine,
    gather_max_cosine_numpy,
    linear_score,
    linear_score_numpy,
    rank_features,
    rank_features_numpy,
)
from .topk import top_k, top_k_masked, top_k_masked_numpy, top_k_numpy
from .wals import (
    wals_fold_in,
    wals_fold_in_numpy,
    wals_half_step,
    wals_half_step_cg,
    wals_half_step_cg_numpy,
    wals_half_step_numpy,
    wals_loss,
    wals_loss_numpy,
)

__all__ = [
    "KERNELS",
    "gather_cosine",
    "gather_cosine_numpy",
    "gather_dot",
    "gather_dot_numpy",
    "gather_max_cosine",
    "gather_max_cosine_numpy",
    "linear_score",
    "linear_score_numpy",
    "mmr_order",
    "mmr_order_numpy",
    "near_duplicate_keep",
    "near_duplicate_keep_numpy",
    "rank_features",
    "rank_features_numpy",
    "top_k",
    "top_k_masked",
    "top_k_masked_numpy",
    "top_k_numpy",
    "wals_fold_in",
    "wals_fold_in_numpy",
    "wals_half_step",
    "wals_half_step_cg",
    "wals_half_step_cg_numpy",
    "wals_half_step_numpy",
    "wals_loss",
    "wals_loss_numpy",
    "warmup",
]

# name -> (numba kernel, numpy twin), for the shared tests and benchmarks
KERNELS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "wals_half_step": (wals_half_step, wals_half_step_numpy),
    "wals_half_step_cg": (wals_half_step_cg, wals_half_step_cg_numpy),
    "wals_fold_in": (wals_fold_in, wals_fold_in_numpy),
    "wals_loss": (wals_loss, wals_loss_numpy),
    "gather_dot": (gather_dot, gather_dot_numpy),
    "gather_cosine": (gather_cosine, gather_cosine_numpy),
    "gather_max_cosine": (gather_max_cosine, gather_max_cosine_numpy),
    "linear_score": (linear_score, linear_score_numpy),
    "rank_features": (rank_features, rank_features_numpy),
    "top_k": (top_k, top_k_numpy),
    "top_k_masked": (top_k_masked, top_k_masked_numpy),
    "mmr_order": (mmr_order, mmr_order_numpy),
    "near_duplicate_keep": (near_duplicate_keep, near_duplicate_keep_numpy),
}


def warmup() -> None:
    """Call every Numba kernel once on tiny arrays of the production dtypes.

    Run at service start so compilation (or the load from NUMBA_CACHE_DIR) does not land on
    the first request.
    """
    f32, i64 = np.float32, np.int64
    vec = np.ones(2, dtype=f32)
    mat = np.ones((3, 2), dtype=f32)
    idx = np.array([0, 2], dtype=i64)
    indptr = np.array([0, 1, 1, 2], dtype=i64)  # 3 rows, the middle one empty
    confidence = np.ones(2, dtype=f32)
    X = wals_half_step(indptr, idx, confidence, mat, 0.1, 1.0)
    wals_half_step_cg(indptr, idx, confidence, mat, X, 0.1, 1.0, 3)
    wals_fold_in(idx, confidence, mat, np.eye(2, dtype=f32), 0.1, 1.0)
    wals_loss(indptr, idx, confidence, X, mat, 0.1, 1.0)
    gather_dot(vec, mat, idx)
    gather_cosine(vec, mat, idx)
    gather_max_cosine(mat, mat, idx)
    linear_score(mat, vec, 0.0)
    rank_features(vec, mat, vec, mat, vec, mat, mat, np.ones((3, 3), dtype=f32), 0.5, idx)
    scores = np.ones(3, dtype=f32)
    top_k(scores, 2)
    top_k_masked(scores, np.zeros(3, dtype=np.bool_), 2)
    mmr_order(scores, mat, 0.5, 2)
    near_duplicate_keep(mat, idx, idx, 0.9)
