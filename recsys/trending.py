"""Trending: one half-life and one decay rule for the trainer and both serving tiers.

A trending score is a sum over positives of 0.5 ** (age / half-life). The trainer computes
it over the last window of training data (training/source_arrays.py); the event stores keep
a live score per item (ranking_svc/events.py); both tiers blend the two at read time with
`decayed`. Defined once here so the three can never disagree on the half-life.
"""

from __future__ import annotations

import numpy as np

TRENDING_HALF_LIFE_MS = 3 * 86_400_000


def decayed(scores: np.ndarray, from_ms: int, to_ms: int) -> np.ndarray:
    """Trending scores as of `from_ms`, decayed to `to_ms` (never grown: a later `from_ms`
    counts as no time passed)."""
    # s(to) = s(from) * 0.5 ** ((to - from) / H)
    return np.asarray(scores, dtype=np.float64) * 0.5 ** (max(0, to_ms - from_ms) / TRENDING_HALF_LIFE_MS)
