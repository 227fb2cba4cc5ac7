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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import kernels

FEATURE_NAMES = ("two_tower", "mf", "content", "disliked_content", "log_popularity")
PROFILE_ITEMS = 50  # recent positives averaged into the content profile
DISLIKED_ITEMS = 50  # recent negatives compared against


@dataclass
class UserState:
    """Per-request user vectors (zeros where a signal is unknown)."""

    tt_user: np.ndarray  # float32[d_tt]
    mf_user: np.ndarray  # float32[d_mf]
    profile: np.ndarray  # float32[d_content]
    disliked: np.ndarray  # float32[q, d_content]


def content_profile(content: np.ndarray, recent_positives: np.ndarray) -> np.ndarray:
    """Mean content vector of the most recent positives (zeros for none)."""
    idx = np.asarray(recent_positives[:PROFILE_ITEMS], dtype=np.int64)
    if len(idx) == 0:
        return np.zeros(content.shape[1], dtype=np.float32)
    return np.ascontiguousarray(content[idx].mean(axis=0), dtype=np.float32)


def disliked_rows(content: np.ndarray, recent_negatives: np.ndarray) -> np.ndarray:
    idx = np.asarray(recent_negatives[:DISLIKED_ITEMS], dtype=np.int64)
    return np.ascontiguousarray(content[idx], dtype=np.float32).reshape(len(idx), content.shape[1])


def build_features(
    state: UserState,
    item_embeddings: np.ndarray,
    mf_item_factors: np.ndarray,
    content: np.ndarray,
    log_popularity: np.ndarray,
    candidates: np.ndarray,
) -> np.ndarray:
    """float32[k, len(FEATURE_NAMES)] for candidate item indices (one fused kernel pass)."""
    return kernels.rank_features(
        state.tt_user,
        item_embeddings,
        state.mf_user,
        mf_item_factors,
        state.profile,
        content,
        state.disliked,
        log_popularity,
        np.ascontiguousarray(candidates, dtype=np.int64),
    )
