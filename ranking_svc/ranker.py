"""Ranking as a pure object: user id in, ranked list out.

Per request:
 1. user state: training history from the bundle + recent events from the event store
    (positives, negatives, seen), demographics (request fields override the bundle's)
 2. candidates from a `CandidateSource` (the candidate tier over gRPC, or in-process for
    evaluation) with a deadline; on failure, a local popularity fallback (degraded)
 3. features for every candidate in one fused Numba pass (recsys.ranking_features), the
    fitted linear ranker (kernels.linear_score)
 4. rules: drop what the user has seen or disliked, what the request excludes, items
    flagged blocked or misinformation, and private items the user does not own
 5. top k (kernels.top_k_masked)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

import kernels
from ranking_svc.events import EventStore, StoredEvent
from recsys.bundle import Bundle
from recsys.ranking_features import UserState, build_features, content_profile, disliked_rows

FALLBACK = "fallback_popular"


@dataclass(frozen=True)
class Demographics:
    age: int = 0
    gender: str = ""
    occupation: str = ""
    region: str = ""

    def overridden_by(self, other: "Demographics") -> "Demographics":
        return Demographics(
            age=other.age or self.age,
            gender=other.gender or self.gender,
            occupation=other.occupation or self.occupation,
            region=other.region or self.region,
        )


@dataclass
class CandidateList:
    item_ids: list[str]
    two_tower_scores: list[float]
    sources: list[list[str]]
    user_embedding: np.ndarray  # float32[d]


class CandidateUnavailable(Exception):
    """The candidate tier failed or was late; `reason` is shown in the response."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CandidateSource(Protocol):
    def fetch(
        self,
        user_id: str,
        history_ids: Sequence[str],
        demographics: Demographics,
        time_ms: int,
        num: int,
        exclude_ids: Sequence[str],
        timeout_s: float,
    ) -> CandidateList:
        """Raise CandidateUnavailable on any failure of the candidate tier."""


@dataclass
class RankedItem:
    item_id: str
    score: float
    sources: list[str]
    title: str


@dataclass
class RankResult:
    items: list[RankedItem]
    bundle_version: str
    degraded: bool = False
    degraded_reason: str = ""
    cold_start: bool = False


@dataclass
class UserHistory:
    positives: list[int] = field(default_factory=list)  # item indices, most recent first
    negatives: list[int] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    demographics: Demographics = field(default_factory=Demographics)
    bundle_row: int = -1
    has_new_positives: bool = False


class Ranker:
    def __init__(
        self,
        bundle: Bundle,
        candidates: CandidateSource,
        events: EventStore | None,
        num_candidates: int = 300,
        retrieve_timeout_s: float = 0.1,
        history_limit: int = 200,
    ) -> None:
        self.bundle = bundle
        self.candidates = candidates
        self.events = events
        self.num_candidates = num_candidates
        self.retrieve_timeout_s = retrieve_timeout_s
        self.history_limit = history_limit
        ranker = bundle.manifest["ranker"]
        self.weights = np.asarray(ranker["weights"], dtype=np.float32)
        self.bias = float(ranker["bias"])
        mf = bundle.manifest["mf"]
        self.mf_reg, self.mf_w0, self.mf_conf = float(mf["reg"]), float(mf["w0"]), 1.0 + float(mf["alpha"])
        y = bundle.mf_item_factors
        self.mf_yty = np.ascontiguousarray(y.T @ y, dtype=np.float32)  # YtY, once per bundle
        self.log_popularity = np.log1p(bundle.popularity).astype(np.float32)
        self.popular_order = np.argsort(-bundle.popularity, kind="stable").astype(np.int64)
        self.banned = np.array(
            [("blocked" in f) or ("misinformation" in f) for f in bundle.flags], dtype=np.bool_
        )
        self.private_owner = {
            i: bundle.owners[i] for i, f in enumerate(bundle.flags) if "private" in f
        }

    def warmup(self) -> None:
        kernels.warmup()
        self._score(UserState(
            tt_user=np.zeros(self.bundle.item_embeddings.shape[1], np.float32),
            mf_user=np.zeros(self.bundle.mf_item_factors.shape[1], np.float32),
            profile=np.zeros(self.bundle.content.shape[1], np.float32),
            disliked=np.zeros((0, self.bundle.content.shape[1]), np.float32),
        ), np.arange(min(3, self.bundle.n_items), dtype=np.int64))

    # ---- state ----------------------------------------------------------------------
    def history(self, user_id: str, override: Demographics) -> UserHistory:
        b = self.bundle
        h = UserHistory()
        row = b.user_index.get(user_id, -1)
        events: list[StoredEvent] = (
            self.events.user_events(user_id, self.history_limit) if self.events else []
        )
        decided: set[int] = set()
        for e in events:  # newest first: the latest signal about an item wins
            item = b.item_index.get(e.item_id)
            if item is None:
                continue
            if e.marks_seen:
                h.seen.add(item)
            if item in decided:
                continue
            if e.is_positive:
                h.positives.append(item)
                h.has_new_positives = True
                decided.add(item)
            elif e.is_negative:
                h.negatives.append(item)
                decided.add(item)
        if row >= 0:
            for item in b.user_pos.row(row).tolist():
                if item not in decided:
                    h.positives.append(item)
                    decided.add(item)
            for item in b.user_neg.row(row).tolist():
                if item not in decided:
                    h.negatives.append(item)
                    decided.add(item)
            h.seen.update(b.user_seen.row(row).tolist())
            d = b.user_demographics(row)
            h.demographics = Demographics(int(d["age"]), d["gender"], d["occupation"], d["region"])
        h.seen.update(h.negatives)
        h.demographics = h.demographics.overridden_by(override)
        h.bundle_row = row
        return h

    def mf_user(self, h: UserHistory) -> np.ndarray:
        """The stored WALS factor, or a fold-in when the user has positives the bundle did
        not train on (x = (w0 YtY + sum (c-w0) y y^T + reg I)^-1 sum c y)."""
        if h.bundle_row >= 0 and not h.has_new_positives:
            return np.ascontiguousarray(self.bundle.mf_user_factors[h.bundle_row])
        if not h.positives:
            return np.zeros(self.bundle.mf_item_factors.shape[1], dtype=np.float32)
        idx = np.unique(np.asarray(h.positives, dtype=np.int64))
        conf = np.full(len(idx), self.mf_conf, dtype=np.float32)
        return kernels.wals_fold_in(idx, conf, self.bundle.mf_item_factors, self.mf_yty, self.mf_reg, self.mf_w0)

    # ---- request --------------------------------------------------------------------
    def recommend(
        self,
        user_id: str,
        k: int,
        demographics: Demographics = Demographics(),
        exclude_ids: Sequence[str] = (),
        time_ms: int = 0,
        deadline: float | None = None,
    ) -> RankResult:
        b = self.bundle
        h = self.history(user_id, demographics)
        excluded = np.zeros(b.n_items, dtype=np.bool_)
        for item_id in exclude_ids:
            item = b.item_index.get(item_id)
            if item is not None:
                excluded[item] = True
        if h.seen:
            excluded[np.fromiter(h.seen, dtype=np.int64, count=len(h.seen))] = True
        result = RankResult(items=[], bundle_version=b.version, cold_start=not (h.positives or h.negatives))

        timeout = self.retrieve_timeout_s
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        try:
            if timeout <= 0:
                raise CandidateUnavailable("DEADLINE_EXCEEDED: no time left for retrieval")
            got = self.candidates.fetch(
                user_id,
                [b.item_ids[i] for i in h.positives[: b.spec.history_length]],
                h.demographics,
                time_ms,
                self.num_candidates,
                [b.item_ids[i] for i in np.flatnonzero(excluded)[:20_000].tolist()],
                timeout,
            )
            cand = np.fromiter(
                (b.item_index.get(i, -1) for i in got.item_ids), dtype=np.int64, count=len(got.item_ids)
            )
            keep = cand >= 0
            cand = cand[keep]
            sources = [s for s, ok in zip(got.sources, keep.tolist()) if ok]
            tt_user = np.ascontiguousarray(got.user_embedding, dtype=np.float32)
            if tt_user.shape != (b.item_embeddings.shape[1],):
                tt_user = np.zeros(b.item_embeddings.shape[1], dtype=np.float32)
        except CandidateUnavailable as e:
            result.degraded, result.degraded_reason = True, e.reason
            cand = self.popular_order[~excluded[self.popular_order]][: self.num_candidates]
            sources = [[FALLBACK]] * len(cand)
            tt_user = np.zeros(b.item_embeddings.shape[1], dtype=np.float32)

        state = UserState(
            tt_user=tt_user,
            mf_user=self.mf_user(h),
            profile=content_profile(b.content, np.asarray(h.positives, dtype=np.int64)),
            disliked=disliked_rows(b.content, np.asarray(h.negatives, dtype=np.int64)),
        )
        scores = self._score(state, cand)
        drop = excluded[cand] | self.banned[cand]
        if self.private_owner:
            drop |= np.array([self.private_owner.get(i, user_id) != user_id for i in cand.tolist()], dtype=np.bool_)
        top = kernels.top_k_masked(scores, np.ascontiguousarray(drop), k)
        for j in top.tolist():
            item = int(cand[j])
            result.items.append(RankedItem(b.item_ids[item], float(scores[j]), list(sources[j]), b.titles[item]))
        return result

    def _score(self, state: UserState, cand: np.ndarray) -> np.ndarray:
        b = self.bundle
        feats = build_features(state, b.item_embeddings, b.mf_item_factors, b.content, self.log_popularity, cand)
        return kernels.linear_score(feats, self.weights, self.bias)
