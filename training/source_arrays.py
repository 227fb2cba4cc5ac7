"""The arrays the candidate tier's sources read, computed once at train time.

Stored in the bundle as OPTIONAL_ARRAY_FILES (recsys.bundle): trending and regional
popularity from positives, click and impression counts for the fresh source's click-rate,
item creation times, and each item's nearest neighbours by item-tower cosine (searched in
the bundle's own usearch index, so item-to-item serving costs a row lookup).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from usearch.index import Index

from recsys.features import FeatureSpec, UserInput
from recsys.trending import TRENDING_HALF_LIFE_MS
from training.data import positive_mask

TRENDING_WINDOW_S = 14 * 86_400  # positives older than this (before the newest) count 0
TRENDING_HALF_LIFE_S = TRENDING_HALF_LIFE_MS / 1000  # one definition for trainer and tiers
NEIGHBOURS = 20


def trending(pos: Sequence[np.ndarray], pos_time: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """sum over positives in the last window of 0.5 ** (age / half-life), age from the newest."""
    out = np.zeros(n_items, dtype=np.float64)
    if not any(len(t) for t in pos_time):
        return out.astype(np.float32)
    items, times = np.concatenate(pos), np.concatenate(pos_time).astype(np.float64)
    age = times.max() - times
    keep = age <= TRENDING_WINDOW_S
    np.add.at(out, items[keep], 0.5 ** (age[keep] / TRENDING_HALF_LIFE_S))
    return out.astype(np.float32)


def regional_popularity(
    pos: Sequence[np.ndarray], demo: Sequence[UserInput], spec: FeatureSpec, n_items: int
) -> np.ndarray:
    """Positives per region: row r = region vocabulary index (0 = unknown region)."""
    lookup = {region: r + 1 for r, region in enumerate(spec.regions)}
    out = np.zeros((len(spec.regions) + 1, n_items), dtype=np.float32)
    for items, user in zip(pos, demo, strict=True):
        np.add.at(out[lookup.get(user.region, 0)], items, 1.0)
    return out


def clicks_impressions(interactions: pd.DataFrame, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Clicks = positive events; impressions = every event (an event implies the item was shown)."""
    index = {item: i for i, item in enumerate(item_ids)}
    cols = interactions["item_id"].astype(str).map(index).to_numpy(np.int64)
    impressions = np.bincount(cols, minlength=len(item_ids)).astype(np.float32)
    clicks = np.bincount(cols[positive_mask(interactions)], minlength=len(item_ids)).astype(np.float32)
    return clicks, impressions


def neighbours(
    index: Index, embeddings: np.ndarray, own_keys: np.ndarray, k: int = NEIGHBOURS
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items other than `own_keys[row]` for each row of `embeddings` in `index`
    (cosine); -1 and 0 where the index holds fewer."""
    n = embeddings.shape[0]
    ids = np.full((n, k), -1, dtype=np.int64)
    sims = np.zeros((n, k), dtype=np.float32)
    if n == 0 or len(index) <= 1:
        return ids, sims
    matches = index.search(embeddings, min(k + 1, len(index)), threads=0)
    keys = np.asarray(matches.keys).astype(np.int64).reshape(n, -1)
    dist = np.asarray(matches.distances, dtype=np.float32).reshape(n, -1)
    counts = np.asarray(matches.counts).reshape(n)
    for row in range(n):
        valid, d = keys[row, : counts[row]], dist[row, : counts[row]]
        keep = valid != own_keys[row]
        got, got_d = valid[keep][:k], d[keep][:k]
        ids[row, : len(got)] = got
        sims[row, : len(got)] = 1.0 - got_d
    return ids, sims
