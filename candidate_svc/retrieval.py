"""Candidate generation as a pure object: user features in, merged candidates out.

`Retriever` holds the loaded bundle's ONNX user tower (one intra-op thread), the usearch
index (memory-mapped from the bundle with `view=True`, so replicas share its pages) and the
popularity order. `retrieve` runs the user tower for a batch of users in one onnxruntime
call, searches the index, and merges the sources under quotas:

    two_tower  ANN over item-tower embeddings       num - popular quota (and any shortfall)
    popular    global popularity in the bundle      popular_fraction * num

Every candidate carries every source that proposed it with that source's score, and a
two-tower score computed for all candidates (kernels.gather_dot), so the ranking tier can
compare candidates from different sources.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import onnxruntime as ort
from usearch.index import Index

import kernels
from recsys.bundle import Bundle
from recsys.features import UserInput

TWO_TOWER = "two_tower"
POPULAR = "popular"


@dataclass
class Candidates:
    """One user's merged candidates, best two-tower score first."""

    items: np.ndarray  # int64[n] item indices
    two_tower_scores: np.ndarray  # float32[n]
    sources: list[dict[str, float]]  # per candidate: source name -> that source's score
    user_embedding: np.ndarray  # float32[d]
    history_used: int = 0


@dataclass
class Request:
    user: UserInput
    num: int
    exclude: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # item indices


class Retriever:
    def __init__(self, bundle: Bundle, popular_fraction: float = 0.2, expansion: int = 64) -> None:
        self.bundle = bundle
        self.popular_fraction = popular_fraction
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.user_tower = ort.InferenceSession(
            str(bundle.file("user_tower.onnx")), opts, providers=["CPUExecutionProvider"]
        )
        self.index = Index.restore(str(bundle.file("index.usearch")), view=True)
        if self.index is None or len(self.index) != bundle.n_items:
            raise RuntimeError(f"{bundle.path}: index.usearch does not hold {bundle.n_items} items")
        self.index.expansion_search = expansion
        self.popular_order = np.argsort(-bundle.popularity, kind="stable").astype(np.int64)
        self.log_popularity = np.log1p(bundle.popularity).astype(np.float32)

    def warmup(self) -> None:
        """Run the whole path once so nothing compiles or allocates lazily on a request."""
        kernels.warmup()
        self.retrieve([Request(UserInput(history=[0], time_ms=1_700_000_000_000), num=5)])

    def embed_users(self, users: Sequence[UserInput]) -> np.ndarray:
        """User-tower embeddings for a batch of users, one onnxruntime call."""
        feeds = self.bundle.spec.encode_users(users)
        return np.ascontiguousarray(self.user_tower.run(None, feeds)[0], dtype=np.float32)

    def retrieve(self, requests: Sequence[Request]) -> list[Candidates]:
        users = [_with_time(r.user) for r in requests]
        embeddings = self.embed_users(users)
        return [self._merge(req, embeddings[j]) for j, req in enumerate(requests)]

    def _merge(self, req: Request, user_vec: np.ndarray) -> Candidates:
        n_items = self.bundle.n_items
        excluded = np.zeros(n_items, dtype=np.bool_)
        excluded[req.exclude[(req.exclude >= 0) & (req.exclude < n_items)]] = True
        n_excluded = int(excluded.sum())
        num = min(req.num, n_items - n_excluded)
        pop_quota = int(math.floor(num * self.popular_fraction))

        # two_tower: over-fetch by the number excluded so filtering still leaves `num`.
        ann: dict[int, float] = {}
        want = min(n_items, num + n_excluded)
        if want > 0:
            matches = self.index.search(user_vec, want)
            sims = 1.0 - np.asarray(matches.distances, dtype=np.float32)  # cos distance -> cos
            for item, sim in zip(np.asarray(matches.keys).tolist(), sims.tolist()):
                if not excluded[item]:
                    ann.setdefault(int(item), float(sim))
        ann_items = list(ann)
        chosen: dict[int, dict[str, float]] = {}
        for item in ann_items[: num - pop_quota]:
            chosen[item] = {TWO_TOWER: ann[item]}

        # popular: its quota of new items; popular items already chosen gain provenance.
        popular = (i for i in self.popular_order.tolist() if not excluded[i])
        added = 0
        for item in popular:
            if item in chosen:
                chosen[item][POPULAR] = float(self.log_popularity[item])
                continue
            if added >= pop_quota:
                break
            chosen[item] = self._both(item, ann)
            added += 1
        # shortfall (a small catalogue, or an index that found too few): rest of the ANN
        # results, then further popular items.
        for item in ann_items[num - pop_quota :]:
            if len(chosen) >= num:
                break
            chosen.setdefault(item, {TWO_TOWER: ann[item]})
        for item in self.popular_order.tolist():
            if len(chosen) >= num:
                break
            if not excluded[item] and item not in chosen:
                chosen[item] = self._both(item, ann)

        items = np.fromiter(chosen.keys(), dtype=np.int64, count=len(chosen))
        scores = kernels.gather_dot(user_vec, self.bundle.item_embeddings, items)
        order = kernels.top_k(scores, len(items))
        items, scores = items[order], scores[order]
        return Candidates(
            items=items,
            two_tower_scores=scores,
            sources=[chosen[int(i)] for i in items],
            user_embedding=user_vec,
            history_used=min(len(req.user.history), self.bundle.spec.history_length),
        )

    def _both(self, item: int, ann: dict[int, float]) -> dict[str, float]:
        entry = {POPULAR: float(self.log_popularity[item])}
        if item in ann:
            entry[TWO_TOWER] = ann[item]
        return entry


def _with_time(user: UserInput) -> UserInput:
    """Resolve time 0 ("now") to the server clock here, at the edge, not in the encoder."""
    if user.time_ms:
        return user
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    return UserInput(user.history, user.age, user.gender, user.occupation, user.region, now_ms)
