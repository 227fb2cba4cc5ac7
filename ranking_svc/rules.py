"""Re-ranking rules: small named steps over a scored candidate list, in one fixed order.

The ranker scores every candidate; the rules then decide what may be shown and in which
order. They run in this order (RULE_ORDER), each reading the list the previous one left:

  1. remove_seen      drop items the user has seen or disliked and items the request excludes
  2. remove_policy    drop items flagged blocked or misinformation, and private items of
                      other users
  3. season_boost     add a configured boost to the score of items in a genre during given
                      months (request time), then re-sort by the boosted score
  4. near_duplicates  drop an item whose normalised title equals, or whose content vector
                      has cosine above `near_duplicate_cosine` with, a better-placed item
                      (among the best max(`mmr_pool`, k))
  5. mmr              re-order the best max(`mmr_pool`, k) by maximal marginal relevance with
                      `mmr_lambda` (kernels.mmr_order over content vectors)
  6. caps             at most `genre_cap` items per genre and `creator_cap` per creator in
                      the top k; items over a cap move behind every item within the caps
  7. explore          if the top k holds no fresh item (created within `fresh_days` of the
                      bundle's newest time, at most `fresh_max_positives` training
                      positives), the best fresh item takes slot `explore_slot` of k

The two removal steps always run (trust and safety do not depend on an experiment); the
others run when listed in `RuleConfig.steps`. Why removals come first: later steps fill
the top k from what may be shown. Why dedupe precedes MMR: MMR would spend its diversity
budget demoting copies that dedupe removes outright. Why caps follow MMR: caps are hard
limits, MMR a soft preference. Why explore is last: it must not be undone by a cap.

A rule is a function (slate, context) -> slate: pure, no I/O, one idea each.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

import numpy as np

import kernels
from recsys.bundle import Bundle

RULE_ORDER = (
    "remove_seen",
    "remove_policy",
    "season_boost",
    "near_duplicates",
    "mmr",
    "caps",
    "explore",
)
REQUIRED_STEPS = ("remove_seen", "remove_policy")
OPTIONAL_STEPS = RULE_ORDER[2:]
REORDERING_STEPS = ("season_boost", "mmr", "caps", "explore")  # their moves are explained


class RuleConfigError(ValueError):
    """A rule setting is invalid; the message names the setting."""


@dataclass(frozen=True)
class SeasonBoost:
    months: tuple[int, ...]  # 1..12, of the request time (UTC)
    genre: str
    boost: float  # added to the ranker score


@dataclass(frozen=True)
class RuleConfig:
    steps: tuple[str, ...] = ("near_duplicates", "mmr", "caps", "explore", "season_boost")
    near_duplicate_cosine: float = 0.98  # content cosine above which two items are copies
    mmr_lambda: float = 0.8  # 1 = relevance only, 0 = diversity only
    mmr_pool: int = 50  # the best max(this, k) (after removals) are deduplicated and re-ordered by MMR
    genre_cap: int = 0  # max items per genre in the top k; 0 = no cap
    creator_cap: int = 3  # max items per creator in the top k; 0 = no cap
    explore_slot: int = 0  # 1-based slot for the fresh item; 0 = the last slot (k)
    fresh_days: float = 14.0
    fresh_max_positives: float = 5.0
    season_boosts: tuple[SeasonBoost, ...] = ()

    def validate(self) -> "RuleConfig":
        for s in self.steps:
            if s not in OPTIONAL_STEPS:
                raise RuleConfigError(f"steps: {s!r} is not one of {list(OPTIONAL_STEPS)}")
        _check(0.0 < self.near_duplicate_cosine <= 1.0, "near_duplicate_cosine", self.near_duplicate_cosine, "(0, 1]")
        _check(0.0 <= self.mmr_lambda <= 1.0, "mmr_lambda", self.mmr_lambda, "0..1")
        _check(1 <= self.mmr_pool <= 2000, "mmr_pool", self.mmr_pool, "1..2000")
        _check(0 <= self.genre_cap <= 100, "genre_cap", self.genre_cap, "0..100")
        _check(0 <= self.creator_cap <= 100, "creator_cap", self.creator_cap, "0..100")
        _check(0 <= self.explore_slot <= 100, "explore_slot", self.explore_slot, "0..100")
        _check(0.0 <= self.fresh_days <= 3650, "fresh_days", self.fresh_days, "0..3650")
        _check(0.0 <= self.fresh_max_positives, "fresh_max_positives", self.fresh_max_positives, ">= 0")
        for n, b in enumerate(self.season_boosts):
            _check(bool(b.months) and all(1 <= m <= 12 for m in b.months),
                   f"season_boosts[{n}].months", list(b.months), "1..12, at least one")
            _check(bool(b.genre), f"season_boosts[{n}].genre", b.genre, "non-empty")
            _check(abs(b.boost) <= 100.0, f"season_boosts[{n}].boost", b.boost, "-100..100")
        return self

    def with_overrides(self, data: Mapping[str, Any]) -> "RuleConfig":
        """A copy with the keys of a JSON object replaced (unknown keys are errors)."""
        names = {f.name for f in fields(self)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                raise RuleConfigError(f"{key}: unknown rule setting (known: {sorted(names)})")
            if key == "steps":
                if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
                    raise RuleConfigError(f"steps: expected a list of step names, got {value!r}")
                value = tuple(value)
            elif key == "season_boosts":
                value = tuple(_season_boost(n, b) for n, b in enumerate(value))
            else:
                kind = type(getattr(self, key))
                if kind is float and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if type(value) is not kind:
                    raise RuleConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
            values[key] = value
        return replace(self, **values).validate()


def _season_boost(n: int, b: Any) -> SeasonBoost:
    if not isinstance(b, dict) or set(b) != {"months", "genre", "boost"}:
        raise RuleConfigError(f"season_boosts[{n}]: expected {{months, genre, boost}}, got {b!r}")
    return SeasonBoost(tuple(int(m) for m in b["months"]), str(b["genre"]), float(b["boost"]))


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise RuleConfigError(f"{name}: {value!r} is out of range ({allowed})")


def normalise_title(title: str) -> str:
    """Case, accents, punctuation and spacing folded: "The  Café!" == "the cafe"."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().lower()
    return " ".join(re.findall(r"[a-z0-9]+", text))


# ------------------------------------------------------------------------------ catalogue


@dataclass
class RuleCatalog:
    """What the rules know about items, built once per bundle."""

    banned: np.ndarray  # bool[n]: blocked or misinformation
    private_owner: dict[int, str]  # item -> the only user who may see it
    title_key: np.ndarray  # int64[n]: id of the normalised title (-1 = empty title)
    content: np.ndarray  # float32[n, d]
    genres: list[list[str]]
    creators: list[str]
    created_at: np.ndarray  # int64[n] Unix seconds
    popularity: np.ndarray  # float32[n] training positives
    newest_s: int  # the bundle's newest time, Unix seconds
    private: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))  # bool[n]
    creator_key: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # -1 = none
    # fresh() of every item per (fresh_days, fresh_max_positives): the catalogue never changes
    _fresh: dict[tuple[float, float], np.ndarray] = field(default_factory=dict, init=False, repr=False,
                                                          compare=False)

    def __post_init__(self) -> None:
        self.private = np.zeros(len(self.banned), dtype=np.bool_)
        self.private[list(self.private_owner)] = True
        keys: dict[str, int] = {}
        self.creator_key = np.array(
            [keys.setdefault(c, len(keys)) if c else -1 for c in self.creators], dtype=np.int64
        )

    def fresh(self, items: np.ndarray, cfg: RuleConfig) -> np.ndarray:
        """bool per item: created within fresh_days of the newest time, few positives."""
        key = (cfg.fresh_days, cfg.fresh_max_positives)
        every = self._fresh.get(key)
        if every is None:  # once per setting (a racing thread computes the same array)
            every = (self.created_at >= self.newest_s - cfg.fresh_days * 86_400) & (
                self.popularity <= cfg.fresh_max_positives
            )
            self._fresh[key] = every
        return every[items]

    @classmethod
    def from_bundle(cls, bundle: Bundle, created_at: np.ndarray) -> "RuleCatalog":
        keys: dict[str, int] = {}
        title_key = np.array(
            [keys.setdefault(t, len(keys)) if t else -1 for t in map(normalise_title, bundle.titles)],
            dtype=np.int64,
        )
        data_end = int((bundle.manifest.get("dataset") or {}).get("time_max") or 0)
        newest = max(int(created_at.max()) if len(created_at) else 0, data_end)
        return cls(
            banned=np.array([("blocked" in f) or ("misinformation" in f) for f in bundle.flags], dtype=np.bool_),
            private_owner={i: bundle.owners[i] for i, f in enumerate(bundle.flags) if "private" in f},
            title_key=title_key,
            content=bundle.content,
            genres=bundle.genres,
            creators=bundle.creators,
            created_at=np.asarray(created_at, dtype=np.int64),
            popularity=bundle.popularity,
            newest_s=newest,
        )


def item_created_at(bundle: Bundle) -> np.ndarray:
    """int64[n] Unix seconds: the bundle array when present, else catalog.json's field,
    else zeros (no item counts as fresh)."""
    extras = getattr(bundle, "extras", {}) or {}
    if "item_created_at" in extras:
        return np.asarray(extras["item_created_at"], dtype=np.int64)
    catalog = json.loads(bundle.file("catalog.json").read_text())
    values = catalog.get("created_at")
    if values is None or len(values) != bundle.n_items:
        return np.zeros(bundle.n_items, dtype=np.int64)
    return np.asarray(values, dtype=np.int64)


# ------------------------------------------------------------------------------ the slate


@dataclass
class RuleContext:
    user_id: str
    k: int
    excluded: np.ndarray  # bool[n_items]: seen, disliked, or excluded by the request
    month: int  # 1..12 of the request time (UTC)
    explain: bool = False


@dataclass
class Slate:
    """Candidates in their current order; `order` holds positions into `cand`/`scores`."""

    cand: np.ndarray  # int64[m] item indices
    scores: np.ndarray  # float32[m] ranker scores (season_boost adds to them)
    order: np.ndarray  # int64[<= m], best first
    notes: dict[int, list[str]] = field(default_factory=dict)  # position -> why it moved

    def note(self, pos: int, text: str) -> None:
        self.notes.setdefault(pos, []).append(text)


Rule = Callable[[Slate, RuleContext, RuleCatalog, RuleConfig], Slate]


def remove_seen(s: Slate, ctx: RuleContext, cat: RuleCatalog, cfg: RuleConfig) -> Slate:
    s.order = s.order[~ctx.excluded[s.cand[s.order]]]
    return s


def remove_policy(s: Slate, ctx: RuleContext, cat: RuleCatalog, cfg: RuleConfig) -> Slate:
    items = s.cand[s.order]
    keep = ~cat.banned[items]
    if cat.private_owner:
        for j in np.flatnonzero(cat.private[items]).tolist():
            keep[j] = cat.private_owner[int(items[j])] == ctx.user_id
    s.order = s.order[keep]
    return s


def season_boost(s: Slate, ctx: RuleContext, cat: RuleCatalog, cfg: RuleConfig) -> Slate:
    active = [b for b in cfg.season_boosts if ctx.month in b.months]
    if not active:
        return s
    boosted = False
    for pos in s.order.tolist():
        genres = cat.genres[int(s.cand[pos])]
        add = sum(b.boost for b in active if b.genre in genres)
        if add:
            s.scores[pos] += add
            boosted = True
            if ctx.explain:
                s.note(pos, f"season_boost: {add:+.3f} in month {ctx.month}")
    if boosted:  # stable: equal boosted scores keep their previous order
        s.order = s.order[np.argsort(-s.scores[s.order], kind="stable")]
    return s


def near_duplicates(s: Slate, ctx: RuleContext, cat: RuleCatalog, cfg: RuleConfig) -> Slate:
    pool = max(cfg.mmr_pool, ctx.k)
    head = s.order[:pool]
    items = s.cand[head]
    keep = kernels.near_duplicate_keep(
        np.ascontiguousarray(cat.content[items], dtype=np.float32),
        np.ascontiguousarray(cat.title_key[items], dtype=np.int64),
        np.ascontiguousarray(cat.creator_key[items], dtype=np.int64),
        float(cfg.near_duplicate_cosine),
    )
    if not keep.all():
        s.order = np.concatenate([head[keep], s.order[pool:]])
    return s


def mmr(s: Slate, ctx: RuleContext, cat: RuleCatalog, cfg: RuleConfig) -> Slate:
    pool = max(cfg.mmr_pool, ctx.k)
    head = s.order[:pool]
    if len(head) < 2:
        return s
    rel = s.scores[head].astype(np.float64)
    low = rel.min()
    span = rel.max() - low
    # relevance scaled to [0, 1] so lambda trades like against like (cosines are in [-1, 1])
    rel01 = np.ascontiguousarray((rel - low) / span if span > 0 else np.ones_like(rel), dtype=np.float32)
    vectors = np.ascontiguousarray(cat.content[s.cand[head]], dtype=np.float32)
    picked = kernels.mmr_order(rel01, vectors, float(cfg.mmr_lambda), len(head))
    s.order = np.concatenate([head[picked], s.order[pool:]])
    return s


def caps(s: Slate, ctx: RuleContext, cat: RuleCatalog, cfg: RuleConfig) -> Slate:
    if not (cfg.genre_cap or cfg.creator_cap):
        return s
    within: list[int] = []
    over: list[int] = []
    per_genre: dict[str, int] = {}
    per_creator: dict[str, int] = {}
    order = s.order.tolist()
    stop = len(order)
    for n, pos in enumerate(order):
        if len(within) >= ctx.k:  # the caps bound the top k only
            stop = n
            break
        item = int(s.cand[pos])
        creator = cat.creators[item]
        genres = cat.genres[item]
        hit = ""
        if cfg.creator_cap and creator and per_creator.get(creator, 0) >= cfg.creator_cap:
            hit = f"creator_cap: {cfg.creator_cap} items of {creator} already above"
        elif cfg.genre_cap:
            full = [g for g in genres if per_genre.get(g, 0) >= cfg.genre_cap]
            if full:
                hit = f"genre_cap: {cfg.genre_cap} items of {full[0]} already above"
        if hit:
            over.append(pos)
            if ctx.explain:
                s.note(pos, hit)
            continue
        within.append(pos)
        if creator and cfg.creator_cap:  # counted only where a cap reads them
            per_creator[creator] = per_creator.get(creator, 0) + 1
        if cfg.genre_cap:
            for g in genres:
                per_genre[g] = per_genre.get(g, 0) + 1
    # `over` keeps its relative order: capped items first among the rest, so they still
    # fill the list when nothing within the caps is left
    s.order = np.concatenate((np.asarray(within + over, dtype=np.int64), s.order[stop:]))
    return s


def explore(s: Slate, ctx: RuleContext, cat: RuleCatalog, cfg: RuleConfig) -> Slate:
    k = min(ctx.k, len(s.order))
    if k == 0:
        return s
    fresh_at = np.flatnonzero(cat.fresh(s.cand[s.order], cfg))
    if len(fresh_at) == 0 or fresh_at[0] < k:  # none to offer, or the top k holds one
        return s
    src = int(fresh_at[0])  # the best fresh item below the top k
    slot = (cfg.explore_slot or k) - 1
    slot = min(slot, k - 1)
    pos = int(s.order[src])
    order = s.order.copy()  # order[slot:src] moves one place down, pos takes slot
    order[slot + 1:src + 1] = s.order[slot:src]
    order[slot] = pos
    s.order = order
    if ctx.explain:
        s.note(pos, f"explore: fresh item given slot {slot + 1}")
    return s


RULES: dict[str, Rule] = {
    "remove_seen": remove_seen,
    "remove_policy": remove_policy,
    "season_boost": season_boost,
    "near_duplicates": near_duplicates,
    "mmr": mmr,
    "caps": caps,
    "explore": explore,
}


def apply_rules(slate: Slate, ctx: RuleContext, cat: RuleCatalog, cfg: RuleConfig) -> Slate:
    """Run the required steps and the configured ones, in RULE_ORDER. With `ctx.explain`,
    each returned position collects "step: moved from a to b" for the re-ordering steps
    that changed its 1-based place in the list."""
    enabled = set(REQUIRED_STEPS) | set(cfg.steps)
    for name in RULE_ORDER:
        if name not in enabled:
            continue
        before = slate.order.copy() if ctx.explain and name in REORDERING_STEPS else None
        slate = RULES[name](slate, ctx, cat, cfg)
        if before is not None:
            _note_moves(slate, before, name, ctx.k)
    return slate


def _note_moves(s: Slate, before: np.ndarray, name: str, k: int) -> None:
    rank_before = np.zeros(len(s.cand), dtype=np.int64)  # position -> 1-based place in `before`, 0 = absent
    rank_before[before] = np.arange(1, len(before) + 1)
    top = s.order[:k]
    for r, (pos, was) in enumerate(zip(top.tolist(), rank_before[top].tolist()), 1):
        if was and was != r:
            s.note(pos, f"{name}: moved from {was} to {r}")
