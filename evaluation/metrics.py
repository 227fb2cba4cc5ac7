"""Offline ranking metrics, exactly as defined in the evaluation protocol.

All metrics look at the top k of each list. Accuracy metrics average over the users in
`test` (one held-out set per user); a user absent from `recommendations` counts as an empty
list and scores zero. A repeated item in a list counts as a hit once, at its first rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd


def _hit_ranks(recommended: Sequence[str], relevant: set[str], k: int) -> list[int]:
    """1-based ranks within the top k at which a not-yet-seen relevant item appears."""
    seen: set[str] = set()
    ranks = []
    for rank, item in enumerate(recommended[:k], start=1):
        if item in relevant and item not in seen:
            ranks.append(rank)
        seen.add(item)
    return ranks


def precision_at_k(recommended: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """precision@k = hits / k (a list shorter than k is not rescaled)."""
    return len(_hit_ranks(recommended, set(relevant), k)) / k


def recall_at_k(recommended: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """recall@k = hits / |test|."""
    relevant = set(relevant)
    return len(_hit_ranks(recommended, relevant, k)) / len(relevant) if relevant else 0.0


def average_precision_at_k(recommended: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """AP@k = sum over hit ranks i of precision@i, divided by min(k, |test|)."""
    relevant = set(relevant)
    if not relevant:
        return 0.0
    ranks = _hit_ranks(recommended, relevant, k)
    # The j-th hit (1-based) at rank i contributes precision@i = j / i.
    return sum(j / i for j, i in enumerate(ranks, start=1)) / min(k, len(relevant))


def ndcg_at_k(recommended: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """nDCG@k with binary gains: DCG = sum over hit ranks r of 1/log2(r+1), normalised by the
    DCG of min(k, |test|) hits at ranks 1.."""
    relevant = set(relevant)
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(r + 1) for r in _hit_ranks(recommended, relevant, k))
    idcg = sum(1.0 / math.log2(r + 1) for r in range(1, min(k, len(relevant)) + 1))
    return dcg / idcg


def _jaccard(a: set[str], b: set[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0  # both genre-less: similarity 0


def intra_list_diversity(items: Sequence[str], item_genres: Mapping[str, set[str]]) -> float:
    """1 - mean pairwise genre Jaccard similarity over the list's distinct pairs of positions.

    Items without genres (or missing from `item_genres`) have the empty set; two empty sets
    count as similarity 0. Returns NaN for lists with fewer than two items.
    """
    if len(items) < 2:
        return float("nan")
    genres = [set(item_genres.get(item, ())) for item in items]
    sims = [_jaccard(a, b) for a, b in combinations(genres, 2)]
    return 1.0 - sum(sims) / len(sims)


def novelty(
    items: Sequence[str], train_popularity: Mapping[str, int], catalogue_size: int
) -> float:
    """Mean over the list's items of -log2(share), share = (count + 1) / (total + n_items).

    count is the item's number of positive train rows, total the number of positive train
    rows, n_items the catalogue size. The add-one smoothing keeps items never seen in
    training finite (they get the highest novelty). NaN for an empty list.
    """
    if not items:
        return float("nan")
    denominator = sum(train_popularity.values()) + catalogue_size
    return float(
        np.mean([-math.log2((train_popularity.get(i, 0) + 1) / denominator) for i in items])
    )


def _nanmean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def evaluate(
    recommendations: Mapping[str, Sequence[str]],
    test: Mapping[str, Sequence[str]],
    k: int,
    catalogue_size: int,
    item_genres: Mapping[str, set[str]],
    train_popularity: Mapping[str, int],
) -> dict[str, float]:
    """All protocol metrics at k, over the users in `test` that have held-out items.

    precision/recall/map/ndcg: mean over those users (a missing user scores 0).
    coverage: distinct items in those users' top-k lists / catalogue_size.
    diversity: mean intra-list diversity over top-k lists with >= 2 items (others skipped).
    novelty: mean over non-empty top-k lists of the list's mean novelty.
    users: number of users averaged over. Means over an empty set are NaN.
    """
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    if catalogue_size < 1:
        raise ValueError(f"catalogue_size: must be >= 1, got {catalogue_size}")
    acc: dict[str, list[float]] = {"precision": [], "recall": [], "map": [], "ndcg": []}
    diversity: list[float] = []
    novelties: list[float] = []
    shown: set[str] = set()
    for user, held_out in test.items():
        relevant = set(held_out)
        if not relevant:
            continue
        top = list(recommendations.get(user, ()))[:k]
        acc["precision"].append(precision_at_k(top, relevant, k))
        acc["recall"].append(recall_at_k(top, relevant, k))
        acc["map"].append(average_precision_at_k(top, relevant, k))
        acc["ndcg"].append(ndcg_at_k(top, relevant, k))
        shown.update(top)
        diversity.append(intra_list_diversity(top, item_genres))
        novelties.append(novelty(top, train_popularity, catalogue_size))
    result = {name: _nanmean(values) for name, values in acc.items()}
    result["coverage"] = len(shown) / catalogue_size
    result["diversity"] = _nanmean(diversity)
    result["novelty"] = _nanmean(novelties)
    result["users"] = float(len(acc["precision"]))
    return result


def train_popularity(train: pd.DataFrame, positive: np.ndarray) -> dict[str, int]:
    """item_id -> number of positive rows in `train` (the `train_popularity` of `evaluate`)."""
    positive = np.asarray(positive, dtype=bool)
    if positive.shape != (len(train),):
        raise ValueError(f"positive: expected shape ({len(train)},), got {positive.shape}")
    counts = train["item_id"].astype(str)[positive].value_counts()
    return {str(item): int(n) for item, n in counts.items()}


_COLUMNS = (
    ("P", "precision", "{:.4f}"),
    ("R", "recall", "{:.4f}"),
    ("mAP", "map", "{:.4f}"),
    ("nDCG", "ndcg", "{:.4f}"),
    ("Cov", "coverage", "{:.4f}"),
    ("ILD", "diversity", "{:.4f}"),
    ("Nov", "novelty", "{:.3f}"),
)


def format_table(
    rows: Sequence[tuple[str, Mapping[int, Mapping[str, float]]]], ks: Sequence[int] = (10, 20)
) -> str:
    """A fixed-width text table: one row per model, P R mAP nDCG Cov ILD Nov at each k.

    Each row is (model name, {k: evaluate(..., k=k)}). A missing k or metric prints "-".
    """
    name_width = max([len("model")] + [len(name) for name, _ in rows])
    cell = 9
    header = "model".ljust(name_width) + "".join(
        f"{label}@{k}".rjust(cell) for k in ks for label, _, _ in _COLUMNS
    )
    lines = [header, "-" * len(header)]
    for name, by_k in rows:
        cells = []
        for k in ks:
            metrics = by_k.get(k, {})
            for _, key, fmt in _COLUMNS:
                value = metrics.get(key)
                cells.append("-" if value is None else fmt.format(value))
        lines.append(name.ljust(name_width) + "".join(c.rjust(cell) for c in cells))
    return "\n".join(lines)
