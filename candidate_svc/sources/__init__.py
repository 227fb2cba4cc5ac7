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
from numba import njit

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
    """The first n items of a best-first `order` (int64) that are not excluded, with their
    `scores` (float32, by item index)."""
    if n <= 0 or len(order) == 0:
        return Proposal.empty()
    items, kept_scores = _first_allowed(order, scores, n, excluded)
    return Proposal(items, kept_scores)


@njit(cache=True, nogil=True)
def _first_allowed(order, scores, n, excluded):
    # stops at the n-th allowed item: a long order is never read past it
    items = np.empty(min(n, len(order)), dtype=np.int64)
    m = 0
    for x in order:
        if m == len(items):
            break
        if not excluded[x]:
            items[m] = x
            m += 1
    items = items[:m]
    kept = np.empty(m, dtype=np.float32)
    for j in range(m):
        kept[j] = scores[items[j]]
    return items, kept
