"""Candidate sources: one small interface, many implementations.

A source answers `propose(ctx, n, excluded) -> Proposal`: at most `n` distinct item
indices, none of them excluded, best first, with the source's own scores (comparable only
within the source). Sources are built from plain arrays (see `from_bundle` in each module),
so the contract test (tests/test_candidate_sources.py) can build every one of them on data
whose answer is known by construction.

    two_tower     usearch ANN over item-tower embeddings, searched with the user embedding
    item_to_item  precomputed nearest items of the user's recent history items
    popular       global positives in the training data
    trending      time-decayed positives over the last window of the training data
    regional      positives by users of the request's region
    fresh         recently created items, Thompson-sampled on clicks / impressions
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

TWO_TOWER = "two_tower"
ITEM_TO_ITEM = "item_to_item"
POPULAR = "popular"
TRENDING = "trending"
REGIONAL = "regional"
FRESH = "fresh"
# Merge priority: a source earlier here gets first pick, and fills a shortfall first.
SOURCE_ORDER = (TWO_TOWER, ITEM_TO_ITEM, REGIONAL, TRENDING, POPULAR, FRESH)


@dataclass
class Context:
    """What a source may know about one request (already validated and mapped to indices)."""

    user_embedding: np.ndarray  # float32[d], L2-normalised user-tower output
    history: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # most recent first
    region: int = 0  # index into the bundle's region vocabulary + 1; 0 = unknown
    time_ms: int = 0  # request time, resolved ("now" already substituted)
    seed: int = 0  # per-request seed for sources that sample (from user id + time)
    n_excluded: int | None = None  # how many items `excluded` marks, when the caller knows


@dataclass
class Proposal:
    """A source's answer: distinct item indices, best first, and its scores."""

    items: np.ndarray  # int64[m], m <= n
    scores: np.ndarray  # float32[m]

    @staticmethod
    def empty() -> "Proposal":
        return Proposal(np.zeros(0, np.int64), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.items)


class Source(Protocol):
    name: str

    def propose(self, ctx: Context, n: int, excluded: np.ndarray) -> Proposal:
        """At most n items not in `excluded` (bool[n_items]), best first."""
        ...


def first_allowed(order: np.ndarray, scores: np.ndarray, n: int, excluded: np.ndarray) -> Proposal:
    """The first n items of a best-first `order` that are not excluded, with their scores.

    Looks at a growing prefix (2n, 4n, ...) so a long order is never masked in full when
    few of its head items are excluded.
    """
    if n <= 0 or len(order) == 0:
        return Proposal.empty()
    width = min(len(order), 2 * n)
    while True:
        head = order[:width]
        kept = head[~excluded[head]][:n]
        if len(kept) == n or width == len(order):
            return Proposal(kept.astype(np.int64), scores[kept].astype(np.float32))
        width = min(len(order), 2 * width)
