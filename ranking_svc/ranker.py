"""Ranking as a pure object: user id in, ranked list out.

Per request:
 1. user state: training history from the bundle + recent events from the event store
    (positives, negatives, seen), demographics (request fields override the bundle's)
 2. candidates from a `CandidateSource` (the candidate tier over gRPC, or in-process for
    evaluation) with a deadline; on failure, a local popularity fallback (degraded)
 3. features for every candidate in one fused Numba pass (recsys.ranking_features), the
    fitted linear ranker (kernels.linear_score)
 4. re-ranking rules (ranking_svc.rules, in RULE_ORDER): removals (seen, disliked,
    excluded, blocked, misinformation, private), season boost, near-duplicates, MMR,
    genre/creator caps, one exploration slot
 5. the first k, with an explanation per item when asked (sources, top feature
    contributions w_f * x_f, the rules that moved it)
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Generic, Mapping, Protocol, Sequence, TypeVar

import numpy as np

import kernels
from ranking_svc.events import EventStore, StoredEvent
from ranking_svc.live_stats import LiveTrending
from ranking_svc.rules import RuleCatalog, RuleConfig, RuleContext, Slate, apply_rules, item_created_at
from recsys import tracing
from recsys.bundle import Bundle, BundleError
from recsys.ranking_features import (
    FEATURE_NAMES,
    PROFILE_ITEMS,
    UserState,
    build_features,
    bundle_item_static,
    coldness,
    content_profile,
    disliked_rows,
)
from recsys.text_encoder import SearchProfiles, TextEncoder

log = logging.getLogger(__name__)

FALLBACK = "fallback_popular"
FALLBACK_TRENDING = "fallback_trending"
CONTENT_FEATURE = FEATURE_NAMES.index("content")
EXPLAIN_FEATURES = 3  # feature contributions listed per explained item
# The search profile of the user whose Retrieve is in flight, for the user tower (read by
# server.GrpcCandidateSource): a context variable, like server.RETRIEVE_UNTIL, so every
# CandidateSource wrapper passes it on untouched. None = no searches or no search input.
# Set before every fetch (the worker thread's context keeps the last value until then).
SEARCH_PROFILE: ContextVar[np.ndarray | None] = ContextVar("search_profile", default=None)
# Time kept back from the caller's deadline for scoring and rules after Retrieve returns.
RANKING_RESERVE_S = 0.02
# Ranking's own budget ends this share of the call's time before the caller's deadline (at
# least RANKING_RESERVE_S): past it, a partial answer (RANKING_TIMEOUT) beats an error.
RANKING_RESERVE_FRACTION = 0.2
RANKING_TIMEOUT = "RANKING_TIMEOUT"


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
    item_ids: Sequence[str]
    two_tower_scores: Sequence[float]
    sources: Sequence[list[str]]  # a LazyList is fine: Recommend reads only the top k
    user_embedding: np.ndarray  # float32[d]
    # Optional: every candidate's index in a bundle's catalogue (-1 = unknown) from that
    # bundle's item_index, without reading item_ids one by one (ranking_svc.wire)
    index_in: Callable[[Mapping[str, int]], np.ndarray] | None = None


T = TypeVar("T")


class LazyList(Sequence[T], Generic[T]):
    """A read-only sequence of n values, each made by `make(i)` when first read: the
    candidate tier's per-candidate details (provenance) are decoded for the k items a
    Recommend returns, not for all of its few hundred candidates."""

    def __init__(self, n: int, make: Callable[[int], T]) -> None:
        self._n, self._make = n, make
        self._made: dict[int, T] = {}

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        if i not in self._made:
            self._made[i] = self._make(i)
        return self._made[i]


class CandidateUnavailable(Exception):
    """The candidate tier failed or was late; `reason` is shown in the response."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeadlinePassed(Exception):
    """The caller's deadline passed between two stages of a Recommend: the rest of the
    work (scoring, rules) would build an answer nobody waits for, so it is skipped."""

    def __init__(self, stage: str) -> None:
        super().__init__(f"deadline passed before {stage}")
        self.stage = stage


def check_deadline(deadline: float | None, stage: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlinePassed(stage)


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


@dataclass(frozen=True)
class FeatureContribution:
    name: str
    value: float  # x_f
    weight: float  # w_f
    contribution: float  # w_f * x_f


@dataclass
class Explanation:
    sources: list[str]
    features: list[FeatureContribution]  # the largest |w_f * x_f| first
    rules: list[str]  # e.g. "mmr: moved from 3 to 7", "creator_cap: ..."


@dataclass
class RankedItem:
    item_id: str
    score: float
    sources: list[str]
    title: str
    explanation: Explanation | None = None


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
    fresh_negatives: list[int] = field(default_factory=list)  # from logged events, not training
    seen: set[int] = field(default_factory=set)
    demographics: Demographics = field(default_factory=Demographics)
    bundle_row: int = -1
    has_new_positives: bool = False
    searches: list[tuple[str, int]] = field(default_factory=list)  # (query, time ms), newest first
    search_profile: np.ndarray | None = None  # unit vector in the search encoder's space


class Ranker:
    def __init__(
        self,
        bundle: Bundle,
        candidates: CandidateSource,
        events: EventStore | None,
        num_candidates: int = 300,
        retrieve_timeout_s: float = 0.1,
        history_limit: int = 200,
        rules: RuleConfig | None = None,
        live_trending_ttl_s: float | None = None,
        text_encoder: TextEncoder | None = None,
    ) -> None:
        """`live_trending_ttl_s`: blend the event store's online trending into the
        log_trending feature and the fallback order, re-read at most this often (None: the
        bundle's trending only, as evaluation replays). `text_encoder`: the search encoder;
        with one, and item text vectors in the bundle, a user's logged searches join the
        content profile (recsys.text_encoder.SearchProfiles)."""
        self.bundle = bundle
        self.candidates = candidates
        self.events = events
        self.num_candidates = num_candidates
        self.retrieve_timeout_s = retrieve_timeout_s
        self.history_limit = history_limit
        self.rules = (rules or RuleConfig()).validate()
        ranker = bundle.manifest["ranker"]
        self.weights = np.asarray(ranker["weights"], dtype=np.float32)
        self.feature_names = list(FEATURE_NAMES)
        self.bias = float(ranker["bias"])
        # Per history-length segment (weights, bias); empty = the pooled model for everyone.
        self.segments = [
            (seg["max_history"], np.asarray(seg["weights"], dtype=np.float32), float(seg["bias"]))
            for seg in ranker.get("segments") or ()
        ]
        # the strongest pull of the content profile in any segment (dislike_demotion)
        self.content_weight = max(0.0, float(self.weights[CONTENT_FEATURE]),
                                  *(float(w[CONTENT_FEATURE]) for _, w, _ in self.segments))
        mf = bundle.manifest["mf"]
        self.mf_reg, self.mf_w0, self.mf_conf = float(mf["reg"]), float(mf["w0"]), 1.0 + float(mf["alpha"])
        y = bundle.mf_item_factors
        self.mf_yty = np.ascontiguousarray(y.T @ y, dtype=np.float32)  # YtY, once per bundle
        if list(ranker["features"]) != list(FEATURE_NAMES):
            raise BundleError(
                f"{bundle.path}: ranker features {ranker['features']} != served {list(FEATURE_NAMES)}"
            )
        self.item_static = bundle_item_static(bundle)
        self.popular_order = np.argsort(-bundle.popularity, kind="stable").astype(np.int64)
        self.catalog = RuleCatalog.from_bundle(bundle, item_created_at(bundle))
        trending, self.trending_source = trending_scores(bundle, self.catalog)
        self.trending_order = np.argsort(-trending, kind="stable").astype(np.int64)
        self.fallback_order, self.fallback_sources = _interleave(self.popular_order, self.trending_order)
        log.info("fallback trending: %s", self.trending_source)
        self.live: LiveTrending | None = None
        if events is not None and live_trending_ttl_s is not None:
            extras = getattr(bundle, "extras", {}) or {}
            fitted = extras.get("trending", np.zeros(bundle.n_items, np.float32))  # what log_trending was fitted on
            self.live = LiveTrending(events, bundle.item_ids, fitted, self.item_static,
                                     float(bundle.manifest.get("dataset", {}).get("time_max") or 0.0),
                                     ttl_s=live_trending_ttl_s)
        self._live_fallback = (0, self.fallback_order, self.fallback_sources)  # (snapshot at_ms, order, sources)
        self.search, search_state = SearchProfiles.for_bundle(bundle.manifest, text_encoder)
        log.info("%s", search_state)
        self._stats_lock = threading.Lock()
        self.degraded = Counter()  # degraded answers by the first word of the reason
        self.search_failures = 0  # answers that lost their search signal to an encoder fault
        self.ranking_cost_s = 0.0  # scoring + rules, moving average (RANKING_TIMEOUT decisions)

    def degraded_total(self) -> int:
        with self._stats_lock:
            return sum(self.degraded.values())

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
            if e.event_type == "search":
                h.searches.append((e.query, e.timestamp_ms))
                continue
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
                h.fresh_negatives.append(item)
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

    def user_state(self, h: UserHistory, tt_user: np.ndarray) -> UserState:
        b = self.bundle
        profile = content_profile(b.content, np.asarray(h.positives, dtype=np.int64))
        if self.search is not None and h.search_profile is not None:
            profile = self.search.add_to(profile, min(len(h.positives), PROFILE_ITEMS), h.search_profile,
                                         len(h.searches))
        return UserState(
            tt_user=tt_user,
            mf_user=self.mf_user(h),
            profile=profile,
            # training-time negatives only: fresh dislikes (first in h.negatives) are
            # applied by dislike_demotion instead
            disliked=disliked_rows(b.content, np.asarray(h.negatives[len(h.fresh_negatives):], dtype=np.int64)),
            coldness=coldness(len(h.positives)),
        )

    # ---- request --------------------------------------------------------------------
    def recommend(
        self,
        user_id: str,
        k: int,
        demographics: Demographics = Demographics(),
        exclude_ids: Sequence[str] = (),
        time_ms: int = 0,
        deadline: float | None = None,
        explain: bool = False,
        rules: RuleConfig | None = None,
    ) -> RankResult:
        b = self.bundle
        started = time.monotonic()
        with tracing.stage("ranking.history"):  # bundle history + the event store's recent events
            h = self.history(user_id, demographics)
        if self.search is not None and h.searches:  # each query encoded once (the encoder's cache)
            try:
                with tracing.stage("ranking.search_profile"):
                    h.search_profile = self.search.profile(h.searches, time_ms or int(time.time() * 1000))
            except Exception:  # an encoder fault costs this answer its search signal, nothing more
                log.exception("search profile for user %s failed: answering without it", user_id)
                with self._stats_lock:
                    self.search_failures += 1
        excluded = np.zeros(b.n_items, dtype=np.bool_)
        for item_id in exclude_ids:
            item = b.item_index.get(item_id)
            if item is not None:
                excluded[item] = True
        if h.seen:
            excluded[np.fromiter(h.seen, dtype=np.int64, count=len(h.seen))] = True
        result = RankResult(items=[], bundle_version=b.version, cold_start=not (h.positives or h.negatives))
        static, fallback_order, fallback_sources = self.item_side()
        check_deadline(deadline, "retrieval")

        timeout = self.retrieve_timeout_s
        if deadline is not None:  # leave time to rank what comes back
            left = deadline - time.monotonic()
            timeout = min(timeout, max(0.0, left - min(RANKING_RESERVE_S, left / 4)))
        # for the candidate client (server.GrpcCandidateSource), reset after this request
        profile_token = SEARCH_PROFILE.set(h.search_profile if b.spec.search_dim else None)
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
            if got.index_in is not None:
                cand = got.index_in(b.item_index)
            else:
                cand = np.fromiter(map(b.item_index.get, got.item_ids, repeat(-1)), dtype=np.int64,
                                   count=len(got.item_ids))
            keep = cand >= 0
            if keep.all():
                sources = got.sources
            else:  # unknown ids dropped; read through, so a lazy got.sources stays lazy
                kept = np.flatnonzero(keep).tolist()
                sources = LazyList(len(kept), lambda i, every=got.sources, kept=kept: every[kept[i]])
                cand = cand[keep]
            tt_user = np.ascontiguousarray(got.user_embedding, dtype=np.float32)
            if tt_user.shape != (b.item_embeddings.shape[1],):
                tt_user = np.zeros(b.item_embeddings.shape[1], dtype=np.float32)
        except CandidateUnavailable as e:
            result.degraded, result.degraded_reason = True, e.reason
            with self._stats_lock:
                self.degraded[e.reason.split(":", 1)[0]] += 1
            keep = ~excluded[fallback_order]
            cand = fallback_order[keep][: self.num_candidates]
            sources = [s for s, ok in zip(fallback_sources, keep.tolist()) if ok][: self.num_candidates]
            tt_user = np.zeros(b.item_embeddings.shape[1], dtype=np.float32)
        finally:
            SEARCH_PROFILE.reset(profile_token)

        check_deadline(deadline, "scoring")  # a late Retrieve may have used it all up
        rank_until = None
        if deadline is not None:
            rank_until = deadline - max(RANKING_RESERVE_S, RANKING_RESERVE_FRACTION * (deadline - started))
        ranking_started = time.monotonic()
        # Not enough budget left for what scoring + rules cost lately: the candidates as the
        # candidate tier ordered them (two-tower ANN, then the other sources), mandatory filters
        # only. Partial, said so, inside the deadline.
        skip_scoring = rank_until is not None and ranking_started + self.ranking_cost_s > rank_until
        feats, weights, demotion = None, self.weights, None
        if skip_scoring:
            self._ranking_timeout(result, "no budget left to score")
            scores = -np.arange(len(cand), dtype=np.float32)
        else:
            with tracing.stage("ranking.score"):
                feats = self._features(self.user_state(h, tt_user), cand, static)
                weights, bias = self.weights_for(len(h.positives))
                scores = kernels.linear_score(feats, weights, bias)
                demotion = self.dislike_demotion(h, cand) if h.fresh_negatives else None
                if demotion is not None:
                    scores = scores - demotion
        month = dt.datetime.fromtimestamp((time_ms or time.time() * 1000) / 1000, dt.UTC).month
        ctx = RuleContext(user_id=user_id, k=k, excluded=excluded, month=month, explain=explain)
        slate = Slate(cand, scores.copy(), np.argsort(-scores, kind="stable").astype(np.int64, copy=False))
        if explain and demotion is not None:
            for pos in np.flatnonzero(demotion > 0.01).tolist():
                slate.note(pos, f"dislike: score -{demotion[pos]:.3f} (look-alike of a disliked item)")
        check_deadline(deadline, "re-ranking")
        rule_config = rules or self.rules
        if skip_scoring or (rank_until is not None and time.monotonic() > rank_until):
            if not skip_scoring:
                self._ranking_timeout(result, "scored; optional rules skipped")
            rule_config = replace(rule_config, steps=())  # seen / excluded / policy filters still apply
        with tracing.stage("ranking.rules"):
            slate = apply_rules(slate, ctx, self.catalog, rule_config)
        if not skip_scoring:  # what scoring + rules cost lately (a moving average)
            self.ranking_cost_s = 0.5 * self.ranking_cost_s + 0.5 * (time.monotonic() - ranking_started)
        top = slate.order[:k]
        positions = top.tolist()
        contributions = self._contributions(feats[top], weights) if explain and feats is not None else None
        for j, (pos, item, score) in enumerate(zip(positions, cand[top].tolist(), slate.scores[top].tolist())):
            ranked = RankedItem(b.item_ids[item], score, list(sources[pos]), b.titles[item])
            if contributions is not None:
                ranked.explanation = Explanation(list(sources[pos]), contributions[j], list(slate.notes.get(pos, [])))
            result.items.append(ranked)
        return result

    def _ranking_timeout(self, result: RankResult, what: str) -> None:
        reason = f"{RANKING_TIMEOUT}: {what}"
        result.degraded = True
        result.degraded_reason = f"{result.degraded_reason}; {reason}" if result.degraded_reason else reason
        with self._stats_lock:
            self.degraded[RANKING_TIMEOUT] += 1

    def dislike_demotion(self, h: UserHistory, cand: np.ndarray) -> np.ndarray:
        """How far logged dislikes push each candidate down: as far as one liked item pulls
        a look-alike up through the content profile,
        w_content * max(0, max cos(item, fresh dislike)) / (profile items + fresh dislikes),
        with the largest content weight of any segment. Fresh dislikes stay out of the
        fitted `disliked_content` feature (see user_state): fitted on training negatives,
        where likeness to a dislike marks the user's own taste area, its weight comes out
        positive in every segment and would pull a fresh dislike's look-alikes *up*."""
        rows = disliked_rows(self.bundle.content, np.asarray(h.fresh_negatives, dtype=np.int64))
        signals = min(len(h.positives), PROFILE_ITEMS) + len(rows)
        cos = kernels.gather_max_cosine(rows, self.bundle.content, np.ascontiguousarray(cand, dtype=np.int64))
        return (self.content_weight / signals * np.maximum(cos, 0.0)).astype(np.float32)

    def weights_for(self, n_history: int) -> tuple[np.ndarray, float]:
        """The ranker segment serving a user with `n_history` known positives: the first
        whose max_history bounds it (None = unbounded), else the pooled model."""
        for bound, weights, bias in self.segments:
            if bound is None or n_history <= bound:
                return weights, bias
        return self.weights, self.bias

    def _contributions(self, x: np.ndarray, weights: np.ndarray) -> list[list[FeatureContribution]]:
        """Per row of x (items x features): its EXPLAIN_FEATURES largest |w_f * x_f|, largest
        first (ties to the earlier feature)."""
        x64 = x.astype(np.float64)
        w64 = weights.astype(np.float64)
        contrib = w64 * x64  # w_f * x_f
        top = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :EXPLAIN_FEATURES]
        names = self.feature_names
        return [
            [FeatureContribution(names[f], value, weight, c) for f, value, weight, c in zip(fs, vs, ws, cs)]
            for fs, vs, ws, cs in zip(top.tolist(), np.take_along_axis(x64, top, axis=1).tolist(),
                                      w64[top].tolist(), np.take_along_axis(contrib, top, axis=1).tolist())
        ]

    def item_side(self) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """(item_static, fallback order, fallback sources): the bundle's, or with the live
        trending blended in (ranking_svc/live_stats.py) when that is configured."""
        if self.live is None:
            return self.item_static, self.fallback_order, self.fallback_sources
        snap = self.live.get()
        if snap.at_ms == 0:
            return snap.item_static, self.fallback_order, self.fallback_sources
        at_ms, order, sources = self._live_fallback
        if at_ms != snap.at_ms:  # once per refresh, not per request
            trending_order = np.argsort(-snap.trending, kind="stable").astype(np.int64)
            order, sources = _interleave(self.popular_order, trending_order)
            self._live_fallback = (snap.at_ms, order, sources)
        return snap.item_static, order, sources

    def _features(self, state: UserState, cand: np.ndarray, static: np.ndarray | None = None) -> np.ndarray:
        b = self.bundle
        static = self.item_static if static is None else static
        return build_features(state, b.item_embeddings, b.mf_item_factors, b.content, static, cand)

    def _score(self, state: UserState, cand: np.ndarray) -> np.ndarray:
        return kernels.linear_score(self._features(state, cand), self.weights, self.bias)


def trending_scores(bundle: Bundle, catalog: RuleCatalog) -> tuple[np.ndarray, str]:
    """Recent-window popularity for the fallback list, and where it came from.

    The bundle's own `trending` array when training wrote one; otherwise, since a bundle
    keeps no per-interaction times, a proxy computed here: training positives per day
    since the item was created (up to the bundle's newest time), so a young item with a
    burst of positives outranks an old one with the same total."""
    extras = getattr(bundle, "extras", {}) or {}
    if "trending" in extras and extras["trending"].shape == (bundle.n_items,):
        return np.asarray(extras["trending"], dtype=np.float32), "bundle array 'trending'"
    age_days = np.maximum(1.0, (catalog.newest_s - catalog.created_at) / 86_400.0)
    velocity = bundle.popularity.astype(np.float64) / age_days  # positives per day alive
    return velocity.astype(np.float32), "computed at load: positives per day since creation (bundle has no trending)"


def _interleave(popular: np.ndarray, trending: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
    """popular[0], trending[0], popular[1], ... without repeats; an item both lists hold
    names both sources."""
    order: list[int] = []
    where: dict[int, list[str]] = {}
    for p, t in zip(popular.tolist(), trending.tolist()):
        for item, name in ((p, FALLBACK), (t, FALLBACK_TRENDING)):
            if item in where:
                if name not in where[item]:
                    where[item].append(name)
            else:
                where[item] = [name]
                order.append(item)
    return np.asarray(order, dtype=np.int64), [where[i] for i in order]
