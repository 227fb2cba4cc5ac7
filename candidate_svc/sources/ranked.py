"""Sources that read a precomputed best-first list: popular, trending, regional."""

from __future__ import annotations

import numpy as np

from candidate_svc.sources import POPULAR, REGIONAL, TRENDING, Context, Proposal, first_allowed


def best_first(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties by index; items scoring 0 left out."""
    order = np.argsort(-scores, kind="stable").astype(np.int64)
    return order[scores[order] > 0]


class RankedSource:
    """One global list (popular: log1p positives; trending: decayed recent positives)."""

    def __init__(self, name: str, scores: np.ndarray) -> None:
        self.name = name
        self.scores = np.asarray(scores, dtype=np.float32)
        self.order = best_first(self.scores)

    def propose(self, ctx: Context, n: int, excluded: np.ndarray) -> Proposal:
        return first_allowed(self.order, self.scores, n, excluded)


def popular(popularity: np.ndarray) -> RankedSource:
    return RankedSource(POPULAR, np.log1p(popularity))


def trending(decayed_counts: np.ndarray) -> RankedSource:
    return RankedSource(TRENDING, decayed_counts)


class RegionalSource:
    """Per-region popularity (row = region index + 1); an unknown region proposes nothing,
    since the global list is already the popular source."""

    name = REGIONAL

    def __init__(self, regional_counts: np.ndarray) -> None:
        self.scores = np.log1p(np.asarray(regional_counts, dtype=np.float32))
        self.orders = [best_first(row) for row in self.scores]

    def propose(self, ctx: Context, n: int, excluded: np.ndarray) -> Proposal:
        if not 0 < ctx.region < len(self.orders):
            return Proposal.empty()
        return first_allowed(self.orders[ctx.region], self.scores[ctx.region], n, excluded)
