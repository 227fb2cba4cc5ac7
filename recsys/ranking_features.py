"""How a (user, candidate) ranking feature vector is assembled: shared by the ranking
service (at request time) and the trainer (to fit the ranker), so the fitted weights are
applied to exactly the features they were fitted on.

Features, in order (FEATURE_NAMES):
  two_tower         cosine of the user-tower and item-tower embeddings
  mf                WALS user factor . item factor
  content           cosine of the user's content profile (mean content vector of recent
                    positives) and the item's content vector
  disliked_content  max cosine of the item's content vector to the user's disliked items
  log_popularity    log(1 + positive interactions in training)
  log_trending      log(1 + time-decayed positives in the last window of training)
  log_item_age      log(1 + days from the item's creation to the end of training)
  log_popularity_x_cold  log_popularity * coldness, coldness = 1 / (1 + n_history / 3):
                    lets one linear model lean on popularity for users with little history
                    and on personal signals for the rest

The item-side columns (log_popularity, log_trending, log_item_age) are one static matrix
per bundle (`item_static`), gathered by the fused kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import kernels

FEATURE_NAMES = (
    "two_tower",
    "mf",
    "content",
    "disliked_content",
    "log_popularity",
    "log_trending",
    "log_item_age",
    "log_popularity_x_cold",
)
COLD_SCALE = 3.0  # history length at which coldness is 1/2
PROFILE_ITEMS = 50  # recent positives averaged into the content profile
DISLIKED_ITEMS = 50  # recent negatives compared against


@dataclass
class UserState:
    """Per-request user vectors (zeros where a signal is unknown)."""

    tt_user: np.ndarray  # float32[d_tt]
    mf_user: np.ndarray  # float32[d_mf]
    profile: np.ndarray  # float32[d_content]
    disliked: np.ndarray  # float32[q, d_content]
    coldness: float = 1.0  # coldness(n_history); 1 for a user with no history


def coldness(n_history: int) -> float:
    return 1.0 / (1.0 + n_history / COLD_SCALE)


def item_static(
    popularity: np.ndarray, trending: np.ndarray | None, created_at: np.ndarray | None, end_time_s: float
) -> np.ndarray:
    """float32[n, 3]: log popularity, log trending, log item age in days at `end_time_s`
    (missing inputs give zero columns)."""
    n = len(popularity)
    out = np.zeros((n, 3), dtype=np.float32)
    out[:, 0] = np.log1p(popularity)
    if trending is not None:
        out[:, 1] = np.log1p(np.maximum(trending, 0.0))
    if created_at is not None:
        age_days = np.maximum(end_time_s - np.asarray(created_at, dtype=np.float64), 0.0) / 86_400.0
        out[:, 2] = np.log1p(age_days)
    return out


def bundle_item_static(bundle) -> np.ndarray:
    """`item_static` of a loaded bundle, at the end of its training data."""
    end = float(bundle.manifest.get("dataset", {}).get("time_max") or 0.0)
    return item_static(
        bundle.popularity, bundle.extras.get("trending"), bundle.extras.get("item_created_at"), end
    )


def content_profile(content: np.ndarray, recent_positives: np.ndarray) -> np.ndarray:
    """Mean content vector of the most recent positives (zeros for none)."""
    idx = np.asarray(recent_positives[:PROFILE_ITEMS], dtype=np.int64)
    if len(idx) == 0:
        return np.zeros(content.shape[1], dtype=np.float32)
    # = content[idx].mean(axis=0) (the same sum, then one division), without mean's Python layers
    return np.ascontiguousarray(np.add.reduce(content[idx], axis=0) / len(idx), dtype=np.float32)


def disliked_rows(content: np.ndarray, recent_negatives: np.ndarray) -> np.ndarray:
    idx = np.asarray(recent_negatives[:DISLIKED_ITEMS], dtype=np.int64)
    return np.ascontiguousarray(content[idx], dtype=np.float32).reshape(len(idx), content.shape[1])


def build_features(
    state: UserState,
    item_embeddings: np.ndarray,
    mf_item_factors: np.ndarray,
    content: np.ndarray,
    static: np.ndarray,
    candidates: np.ndarray,
) -> np.ndarray:
    """float32[k, len(FEATURE_NAMES)] for candidate item indices (one fused kernel pass);
    `static` is `item_static(...)` of the bundle."""
    return kernels.rank_features(
        state.tt_user,
        item_embeddings,
        state.mf_user,
        mf_item_factors,
        state.profile,
        content,
        state.disliked,
        static,
        float(state.coldness),
        np.ascontiguousarray(candidates, dtype=np.int64),
    )
