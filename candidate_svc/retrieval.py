"""Candidate generation as a pure object: user features in, merged candidates out.

`Retriever` holds the loaded bundle's ONNX user tower (one intra-op thread), the usearch
index (memory-mapped from the bundle with `view=True`, so replicas share its pages) and the
candidate sources (candidate_svc.sources). `retrieve` runs the user tower for a batch of
users in one onnxruntime call, asks every source for its share, and merges them under
quotas (candidate_svc.merge):

    two_tower     ANN over item-tower embeddings       the rest of num, and shortfalls first
    item_to_item  neighbours of recent history items   source_fractions["item_to_item"] * num
    regional      popular in the request's region       source_fractions["regional"] * num
    trending      decayed recent positives              source_fractions["trending"] * num
    popular       global popularity in the bundle       popular_fraction * num
    fresh         new items, Thompson-sampled CTR       source_fractions["fresh"] * num

A request may name its own sources and quotas (then only those run). Every candidate
carries every source that proposed it with that source's score, and a two-tower score
computed for all candidates (kernels.gather_dot), so the ranking tier can compare
candidates from different sources. A user with no known history (cold start) is embedded
from demographics, region and time alone; item_to_item then proposes nothing and its
share goes to the other sources.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort
from numba import njit
from usearch.index import Index

import kernels
from candidate_svc.live_stats import ItemStatsReader, LiveSourceStats
from candidate_svc.merge import Provenance, ask_for, merge, quotas_from_fractions
from candidate_svc.sources import (
    FRESH,
    ITEM_TO_ITEM,
    POPULAR,
    REGIONAL,
    TRENDING,
    TWO_TOWER,
    Context,
    Proposal,
    Source,
)
from candidate_svc.sources.fresh import FreshSource
from candidate_svc.sources.item_to_item import ItemToItemSource
from candidate_svc.sources.ranked import RegionalSource, popular, trending
from candidate_svc.sources.two_tower import SCAN_PER_RESULT, TwoTowerSource, prefer_inner_product
from recsys.bundle import Bundle, BundleError, check_user_tower
from recsys.features import UserInput

__all__ = ["Candidates", "Request", "Retriever", "POPULAR", "TWO_TOWER", "DEFAULT_SOURCE_FRACTIONS"]

DEFAULT_SOURCE_FRACTIONS = {ITEM_TO_ITEM: 0.1, REGIONAL: 0.05, TRENDING: 0.05, FRESH: 0.02}


@dataclass
class Candidates:
    """One user's merged candidates, best two-tower score first."""

    items: np.ndarray  # int64[n] item indices
    two_tower_scores: np.ndarray  # float32[n]
    provenance: Provenance  # per candidate: every source that proposed it, with its score (arrays)
    user_embedding: np.ndarray  # float32[d]
    history_used: int = 0
    cold_start: bool = False  # no history item known to the bundle
    admitted: dict[str, int] = field(default_factory=dict)  # per source: items it added

    @property
    def sources(self) -> list[dict[str, float]]:
        """Per candidate: source name -> that source's score (built from `provenance` on
        first use; the server encodes and counts from the arrays)."""
        return self.provenance.dicts()


@dataclass
class Request:
    user: UserInput
    num: int
    exclude: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # item indices
    user_id: str = ""  # seeds the sampling sources (with the request time)
    quotas: Mapping[str, int] | None = None  # source -> count; None = the configured shares


class Retriever:
    def __init__(
        self,
        bundle: Bundle,
        popular_fraction: float = 0.2,
        expansion: int = 64,
        source_fractions: Mapping[str, float] | None = None,
        scan_per_result: int = SCAN_PER_RESULT,
    ) -> None:
        """`scan_per_result`: the two-tower source scans every item instead of walking the
        index while the catalogue holds at most this many items per result asked for (0 =
        always walk; candidate_svc/sources/two_tower.py)."""
        self.bundle = bundle
        self.popular_fraction = popular_fraction
        fractions = dict(DEFAULT_SOURCE_FRACTIONS if source_fractions is None else source_fractions)
        self.fractions = {**fractions, POPULAR: popular_fraction}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.user_tower = ort.InferenceSession(
            str(bundle.file("user_tower.onnx")), opts, providers=["CPUExecutionProvider"]
        )
        check_user_tower(bundle, self.user_tower)
        self.index = Index.restore(str(bundle.file("index.usearch")), view=True)
        if self.index is None or len(self.index) != bundle.n_items:
            raise BundleError(f"{bundle.path}: index.usearch does not hold {bundle.n_items} items")
        if self.index.ndim != bundle.item_embeddings.shape[1]:
            raise BundleError(f"{bundle.path}: index.usearch dim {self.index.ndim} != {bundle.item_embeddings.shape[1]}")
        self.index.expansion_search = expansion
        inner_product = prefer_inner_product(self.index, bundle.item_embeddings)  # unit vectors: dot == cosine
        # Items added by a catalogue update after training have no id embedding in the user
        # tower: they are left out of its history input (the other sources still use them).
        self.tower_items = int(bundle.manifest.get("catalog_update", {}).get("tower_items", bundle.n_items))
        self.sources: dict[str, Source] = build_sources(bundle, self.index, inner_product, scan_per_result)
        self.fallback_order = np.argsort(-bundle.popularity, kind="stable").astype(np.int64)
        self.log_popularity = np.log1p(bundle.popularity).astype(np.float32)
        self.live: LiveSourceStats | None = None

    def attach_live_stats(self, reader: ItemStatsReader, ttl_s: float = 5.0) -> LiveSourceStats:
        """From now on the trending and fresh sources use the event store's live counts,
        re-read at most every ttl_s (candidate_svc/live_stats.py)."""
        time_max = float(self.bundle.manifest.get("dataset", {}).get("time_max") or 0.0)
        self.live = LiveSourceStats(reader, self.bundle.item_ids, self.bundle.extras, time_max, ttl_s)
        return self.live

    def warmup(self) -> Candidates:
        """Run the whole path once so nothing compiles or allocates lazily on a request
        (and check what the user tower really returns: a symbolic ONNX dim says nothing).
        Returns the answer under the configured shares, for the server to encode once."""
        kernels.warmup()
        # every source asked for items (item_to_item needs a history and a quota), so each
        # of their kernels is compiled (or loaded from the cache) here, not on a request
        every = {name: 1 for name in self.sources}
        history = list(range(min(2, self.bundle.n_items)))
        (got,) = self.retrieve([Request(UserInput(history=history, time_ms=1_700_000_000_000),
                                        num=min(len(every), self.bundle.n_items), quotas=every)])
        (shares,) = self.retrieve([Request(UserInput(history=[0], time_ms=1_700_000_000_000), num=5)])
        dim = self.bundle.item_embeddings.shape[1]
        if got.user_embedding.shape != (dim,):
            raise BundleError(f"{self.bundle.path}: user tower returned shape {got.user_embedding.shape}, want ({dim},)")
        return shares

    def embed_users(self, users: Sequence[UserInput]) -> np.ndarray:
        """User-tower embeddings for a batch of users, one onnxruntime call."""
        tower_users = [
            u if all(i < self.tower_items for i in u.history)
            else replace(u, history=[i for i in u.history if i < self.tower_items])
            for u in users
        ]
        feeds = self.bundle.spec.encode_users(tower_users)
        return np.ascontiguousarray(self.user_tower.run(None, feeds)[0], dtype=np.float32)

    def retrieve(self, requests: Sequence[Request]) -> list[Candidates]:
        if self.live is not None:
            self.live.refresh_into(self.sources)
        users = [_with_time(r.user) for r in requests]
        embeddings = self.embed_users(users)
        return [self._one(req, user, embeddings[j]) for j, (req, user) in enumerate(zip(requests, users))]

    def _one(self, req: Request, user: UserInput, user_vec: np.ndarray) -> Candidates:
        n_items = self.bundle.n_items
        excluded = np.zeros(n_items, dtype=np.bool_)  # calloc'd: only the set pages are touched
        n_excluded = _mark(excluded, np.ascontiguousarray(req.exclude, dtype=np.int64))
        num = max(0, min(req.num, n_items - n_excluded))
        if req.quotas is None:
            quotas = quotas_from_fractions(num, {k: f for k, f in self.fractions.items() if k in self.sources})
        else:
            quotas = {k: min(int(q), num) for k, q in req.quotas.items() if k in self.sources}
        history = np.asarray(user.history, dtype=np.int64)
        ctx = Context(
            user_embedding=user_vec,
            history=history,
            region=self.bundle.spec.region_index(user.region),
            time_ms=user.time_ms,
            seed=zlib.crc32(f"{req.user_id}|{user.time_ms}".encode()),
            n_excluded=n_excluded,
        )
        proposals: dict[str, Proposal] = {
            name: self.sources[name].propose(ctx, ask_for(q, num, name), excluded)
            for name, q in quotas.items()
            if q > 0 and name != TWO_TOWER
        }
        if quotas.get(TWO_TOWER, 0) > 0 or (req.quotas is None and TWO_TOWER in self.sources):
            deficit = sum(max(0, quotas[n] - len(p)) for n, p in proposals.items())
            want = ask_for(quotas.get(TWO_TOWER, 0), num, TWO_TOWER, deficit)
            proposals[TWO_TOWER] = self.sources[TWO_TOWER].propose(ctx, want, excluded)
        merged = merge(proposals, quotas, num, excluded, (POPULAR, self.fallback_order, self.log_popularity))
        items = merged.items
        scores = kernels.gather_dot(user_vec, self.bundle.item_embeddings, items)
        order = np.argsort(-scores, kind="stable")  # = kernels.top_k(scores, n): NaN last, ties by position
        return Candidates(
            items=items[order],
            two_tower_scores=scores[order],
            provenance=merged.provenance.take(order),
            user_embedding=user_vec,
            history_used=min(int(np.count_nonzero(history < self.tower_items)), self.bundle.spec.history_length),
            cold_start=len(history) == 0,
            admitted=merged.admitted,
        )


def build_sources(bundle: Bundle, index: Index, inner_product: bool = False,
                  scan_per_result: int = SCAN_PER_RESULT) -> dict[str, Source]:
    """Every source the bundle has the arrays for (older bundles: two_tower and popular).
    `inner_product`: the index is searched by dot product (prefer_inner_product)."""
    x = bundle.extras
    two_tower = TwoTowerSource(index, bundle.item_embeddings, inner_product, scan_per_result)  # scans a small catalogue
    sources: dict[str, Source] = {TWO_TOWER: two_tower, POPULAR: popular(bundle.popularity)}
    if "item_neighbours" in x and "item_neighbour_scores" in x:
        sources[ITEM_TO_ITEM] = ItemToItemSource(x["item_neighbours"], x["item_neighbour_scores"])
    if "trending" in x:
        sources[TRENDING] = trending(x["trending"])
    if "regional_popularity" in x:
        sources[REGIONAL] = RegionalSource(x["regional_popularity"])
    if {"item_created_at", "item_clicks", "item_impressions"} <= set(x):
        sources[FRESH] = FreshSource(x["item_created_at"], x["item_clicks"], x["item_impressions"])
    return sources


@njit(cache=True, nogil=True)
def _mark(excluded, ids):
    """Set excluded[i] for every id in range; the number of distinct ids set."""
    count = 0
    for i in ids:
        if 0 <= i < len(excluded) and not excluded[i]:
            excluded[i] = True
            count += 1
    return count


def _with_time(user: UserInput) -> UserInput:
    """Resolve time 0 ("now") to the server clock here, at the edge, not in the encoder."""
    if user.time_ms:
        return user
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    return replace(user, time_ms=now_ms)
