"""`recsys train`: one dataset in, one immutable bundle version out.

Steps (each a function below):
 1. index users/items, split each user's rows into positives / negatives / seen (time order)
 2. carve a validation set (each user's last positive) for fitting the ranker
 3. WALS matrix factorisation (kernels.wals_half_step) on the fit positives
 4. two-tower model (training.two_tower) on the fit positives, exported to ONNX with a
    parity check, item embeddings computed by the exported item tower
 5. usearch index over the item embeddings, content vectors, popularity
 6. ranker (training.ranker) fitted on the validation positives against funnel negatives
 7. final WALS user factors over all positives (one user half-step), bundle written
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
from usearch.index import Index

import kernels
from recsys import bundle as bundle_fmt
from recsys.features import FeatureSpec, UserInput
from recsys.ranking_features import (
    FEATURE_NAMES,
    UserState,
    build_features,
    coldness,
    content_profile,
    disliked_rows,
    item_static,
)
from training import content as content_mod
from training import source_arrays
from training import two_tower as tt
from training.data import Dataset, fingerprint, negative_mask, positive_mask
from training.ranker import fit_segmented

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MFParams:
    factors: int = 32
    reg: float = 0.1
    alpha: float = 10.0  # observed confidence c = 1 + alpha
    w0: float = 1.0  # weight of every unobserved entry
    iterations: int = 12
    solver: str = "cg"  # "cg": warm-started conjugate gradient; "exact": Cholesky per row
    cg_steps: int = 3
    seed: int = 0


@dataclass(frozen=True)
class IndexParams:
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 64
    dtype: str = "f32"


CONTENT_KINDS = ("multihot", "cbow")


@dataclass(frozen=True)
class TrainConfig:
    two_tower: tt.TwoTowerParams = field(default_factory=tt.TwoTowerParams)
    mf: MFParams = field(default_factory=MFParams)
    index: IndexParams = field(default_factory=IndexParams)
    history_length: int = 50
    max_tags: int = 300
    ranker_negatives: int = 300  # >= the pool: every pool item is a negative (the served distribution)
    ranker_pool: int = 300  # candidates the ranking tier asks for (RankingConfig.num_candidates)
    parity_tolerance: float = 1e-5
    content: str = "cbow"  # item content vectors: "multihot" | "cbow" (training.content; ablation there)
    cbow: content_mod.CBOWParams = field(default_factory=content_mod.CBOWParams)
    # Search encoder directory (`recsys export-encoder`): item texts are encoded with it and
    # appended to the content vectors (training.content.with_text); "" = no text part.
    text_encoder: str = ""
    text_share: float = 0.5  # cosine weight of the text part in the content vector

    def __post_init__(self) -> None:
        if self.content not in CONTENT_KINDS:
            raise ValueError(f"content: {self.content!r} is not one of {CONTENT_KINDS}")
        if not 0.0 < self.text_share < 1.0:
            raise ValueError(f"text_share: {self.text_share!r} is not in (0, 1)")


@dataclass
class Interactions:
    """Per-user item-index lists, oldest first, over the whole (training) frame."""

    user_ids: list[str]
    item_ids: list[str]
    pos: list[np.ndarray]
    pos_time: list[np.ndarray]
    neg: list[np.ndarray]
    seen: list[np.ndarray]


def index_interactions(ds: Dataset) -> Interactions:
    inter = ds.interactions
    item_ids = [str(i) for i in ds.items["item_id"]]
    item_index = {item: i for i, item in enumerate(item_ids)}
    user_ids = sorted(set(inter["user_id"].astype(str)) | set(ds.users["user_id"].astype(str)))
    user_index = {u: r for r, u in enumerate(user_ids)}
    rows = inter["user_id"].map(user_index).to_numpy(np.int64)
    cols = inter["item_id"].map(item_index).to_numpy(np.int64)
    times = inter["timestamp"].to_numpy(np.int64)
    is_pos = positive_mask(inter)
    is_neg = negative_mask(inter)
    is_seen = (inter["event_type"] != "impression").to_numpy()
    order = np.lexsort((np.arange(len(rows)), times, rows))  # by user, then time, stable
    bounds = np.searchsorted(rows[order], np.arange(len(user_ids) + 1))
    pos, pos_time, neg, seen = [], [], [], []
    for u in range(len(user_ids)):
        sel = order[bounds[u] : bounds[u + 1]]
        p = sel[is_pos[sel]]
        pos.append(_dedupe_keep_last(cols[p]))
        pos_time.append(times[p][_last_positions(cols[p])])
        neg.append(_dedupe_keep_last(cols[sel[is_neg[sel]]]))
        seen.append(np.unique(cols[sel[is_seen[sel]]]))
    return Interactions(user_ids, item_ids, pos, pos_time, neg, seen)


def _last_positions(items: np.ndarray) -> np.ndarray:
    """Positions of each item's last occurrence, in time order."""
    last: dict[int, int] = {}
    for pos, item in enumerate(items.tolist()):
        last[item] = pos
    return np.array(sorted(last.values()), dtype=np.int64)


def _dedupe_keep_last(items: np.ndarray) -> np.ndarray:
    return items[_last_positions(items)].astype(np.int64)


def build_spec(ds: Dataset, history_length: int, max_tags: int) -> FeatureSpec:
    users = ds.users

    def vocab(column: str) -> list[str]:
        if column not in users or users.empty:
            return []
        return sorted({str(v) for v in users[column] if isinstance(v, str) and v})

    genres = sorted({g for gs in ds.items["genres"] for g in gs})
    tag_counts: dict[str, int] = {}
    for ts in ds.items["tags"]:
        for t in set(ts):
            tag_counts[t] = tag_counts.get(t, 0) + 1
    tags = [t for t, c in sorted(tag_counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= 2]
    return FeatureSpec(
        history_length=history_length,
        genders=vocab("gender"),
        occupations=vocab("occupation"),
        regions=vocab("region"),
        genres=genres,
        tags=tags[:max_tags],
    )


def user_inputs(ds: Dataset, user_ids: list[str]) -> list[UserInput]:
    """Demographics per user row (history and time are filled in per example)."""
    known = {str(r.user_id): r for r in ds.users.itertuples(index=False)}
    out = []
    for u in user_ids:
        r = known.get(u)
        if r is None:
            out.append(UserInput())
        else:
            out.append(
                UserInput(
                    age=int(r.age or 0),
                    gender=str(r.gender or ""),
                    occupation=str(r.occupation or ""),
                    region=str(r.region or ""),
                )
            )
    return out


def csr(rows: list[np.ndarray], n_cols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    return indptr, indices


def train_wals(pos: list[np.ndarray], n_items: int, p: MFParams) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Alternate exact half steps; returns (user factors, item factors, loss per iteration)."""
    rng = np.random.default_rng(p.seed)
    uptr, uidx = csr([np.unique(r) for r in pos])
    conf_u = np.full(len(uidx), 1.0 + p.alpha, dtype=np.float32)
    # item-major copy of the same matrix
    users_of = np.repeat(np.arange(len(pos)), np.diff(uptr))
    order = np.lexsort((users_of, uidx))
    iptr = np.zeros(n_items + 1, dtype=np.int64)
    iptr[1:] = np.cumsum(np.bincount(uidx, minlength=n_items))
    iidx = users_of[order].astype(np.int64)
    conf_i = conf_u[order]
    y = (rng.standard_normal((n_items, p.factors)) * 0.01).astype(np.float32)
    x = np.zeros((len(pos), p.factors), dtype=np.float32)
    losses = []
    if p.solver not in ("cg", "exact"):
        raise ValueError(f"mf.solver: {p.solver!r} is not 'cg' or 'exact'")
    for _ in range(p.iterations):
        if p.solver == "cg":
            x = kernels.wals_half_step_cg(uptr, uidx, conf_u, y, x, p.reg, p.w0, p.cg_steps)
            y = kernels.wals_half_step_cg(iptr, iidx, conf_i, x, y, p.reg, p.w0, p.cg_steps)
        else:
            x = kernels.wals_half_step(uptr, uidx, conf_u, y, p.reg, p.w0)
            y = kernels.wals_half_step(iptr, iidx, conf_i, x, p.reg, p.w0)
        losses.append(float(kernels.wals_loss(uptr, uidx, conf_u, x, y, p.reg, p.w0)))
    return x, y, losses


def split_validation(inter: Interactions) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Fit positives (all but the last, for users with >= 3 positives) and the validation
    target per user (-1 where none)."""
    fit_pos, fit_time, target = [], [], []
    for p, t in zip(inter.pos, inter.pos_time):
        if len(p) >= 3:
            fit_pos.append(p[:-1])
            fit_time.append(t[:-1])
            target.append(int(p[-1]))
        else:
            fit_pos.append(p)
            fit_time.append(t)
            target.append(-1)
    return fit_pos, fit_time, target


def two_tower_examples(
    spec: FeatureSpec,
    fit_pos: list[np.ndarray],
    fit_time: list[np.ndarray],
    demo: list[UserInput],
    neg: list[np.ndarray] | None = None,
    seed: int = 0,
    searches: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tt.TrainingExamples:
    """One example per fit positive; each carries one of the user's explicit negatives
    (dislike / low rating) drawn at random, or -1 when the user has none, and with
    `searches` (user_searches) the user's search profile just before the positive."""
    rng = np.random.default_rng(seed)
    users: list[UserInput] = []
    targets: list[int] = []
    negatives: list[int] = []
    h = spec.history_length
    for u, (p, t) in enumerate(zip(fit_pos, fit_time)):
        base = demo[u]
        user_neg = neg[u] if neg is not None else np.zeros(0, np.int64)
        if len(p):
            negatives.extend(rng.choice(user_neg, len(p)).tolist() if len(user_neg) else [-1] * len(p))
        for j in range(len(p)):
            history = p[max(0, j - h) : j][::-1].tolist()  # most recent first
            at_ms = int(t[j]) * 1000
            search = search_before(searches[u], at_ms) if searches is not None else ()
            users.append(
                UserInput(history, base.age, base.gender, base.occupation, base.region, at_ms, search)
            )
            targets.append(int(p[j]))
    enc = spec.encode_users(users)
    return tt.TrainingExamples(
        hist_items=enc["hist_items"],
        hist_mask=enc["hist_mask"],
        user_cats=enc["user_cats"],
        target=np.asarray(targets, dtype=np.int64),
        negative=np.asarray(negatives, dtype=np.int64),
        search=enc.get("search_profile"),
    )


def embed_items(item_tower_path: Path, item_features: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Item embeddings computed by the exported ONNX item tower (the serving artefact)."""
    sess = ort.InferenceSession(str(item_tower_path), providers=["CPUExecutionProvider"])
    n = item_features.shape[0]
    chunks = []
    for start in range(0, n, batch):
        ids = np.arange(start, min(n, start + batch), dtype=np.int64) + 1
        chunks.append(sess.run(None, {"item_ids": ids, "item_feats": item_features[start : start + batch]})[0])
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def user_embeddings(user_tower_path: Path, spec: FeatureSpec, users: list[UserInput]) -> np.ndarray:
    sess = ort.InferenceSession(str(user_tower_path), providers=["CPUExecutionProvider"])
    chunks = []
    for start in range(0, len(users), 4096):
        chunks.append(sess.run(None, spec.encode_users(users[start : start + 4096]))[0])
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def content_vectors(item_features: np.ndarray) -> np.ndarray:
    """IDF-weighted genre/tag multi-hot, rows L2-normalised (zero rows stay zero)."""
    return content_mod.multihot_vectors(item_features)


def item_content(ds: Dataset, item_features: np.ndarray, config: TrainConfig
                 ) -> tuple[np.ndarray, content_mod.TokenModel | None]:
    """Content vectors of `config.content` kind, and the CBOW token model when one is used."""
    multihot = content_vectors(item_features)
    if config.content == "multihot":
        return multihot, None
    docs = content_mod.catalogue_tokens(ds.items)
    model = content_mod.train_token_model(docs, config.cbow)
    return content_mod.combine(multihot, model.embed(docs), config.cbow.multihot_share), model


@dataclass
class ItemTexts:
    """Item texts encoded by the search encoder: unit(v - center) per item, the manifest's
    `content.text` entry (its offset is set when appended to the content vectors)."""

    vectors: np.ndarray  # float32[n_items, d]
    layout: dict[str, Any]
    encoder: Any  # recsys.text_encoder.TextEncoder

    @property
    def center(self) -> np.ndarray:
        return np.asarray(self.layout["center"], dtype=np.float32)


def encode_item_texts(ds: Dataset, config: TrainConfig) -> ItemTexts | None:
    """With `config.text_encoder`: every item's text (training.content.item_text) encoded."""
    if not config.text_encoder:
        return None
    from recsys.text_encoder import TextEncoder

    encoder = TextEncoder(config.text_encoder, cache_size=100_000)
    texts = content_mod.catalogue_texts(ds.items)
    text = np.vstack([encoder.encode_uncached(texts[i : i + 64]) for i in range(0, len(texts), 64)]
                     or [np.zeros((0, encoder.dim), np.float32)])
    # Sentence encoders are anisotropic (every pair of texts has a high cosine); measured from
    # the catalogue's mean, likeness is what sets a text apart from the others. Serving
    # subtracts the same mean from query vectors (recsys.text_encoder.SearchProfiles).
    center = text.mean(axis=0) if len(text) else np.zeros(encoder.dim, np.float32)
    layout = {"dim": encoder.dim, "share": config.text_share,
              "encoder": encoder.name, "model_sha256": str(encoder.meta.get("model_sha256", "")),
              "center": [float(x) for x in center]}
    log.info("item texts encoded by %s: %d x %d", encoder.name, *text.shape)
    return ItemTexts(content_mod.l2_rows(text - center), layout, encoder)


def add_item_text(content: np.ndarray, texts: ItemTexts | None, share: float) -> tuple[np.ndarray, dict[str, Any]]:
    """The content vectors with the item texts appended (training.content.with_text) and the
    manifest's `content.text` entry; unchanged without texts."""
    if texts is None:
        return content, {}
    return content_mod.with_text(content, texts.vectors, share), {"offset": int(content.shape[1]), **texts.layout}


def user_searches(ds: Dataset, user_ids: list[str], texts: ItemTexts | None
                  ) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Per user row: (search times in ms, ascending; centred query vectors), for the user
    tower's search input; None without an encoder or without searches in the data."""
    if texts is None or not len(ds.searches):
        return None
    index = {u: r for r, u in enumerate(user_ids)}
    queries = list(ds.searches["query"])  # each distinct query encoded once (the encoder's cache)
    vectors = np.vstack([texts.encoder.encode(queries[i : i + 256]) for i in range(0, len(queries), 256)])
    vectors -= texts.center
    times = ds.searches["timestamp"].to_numpy(np.int64) * 1000
    rows = ds.searches["user_id"].map(index).to_numpy(dtype=float, na_value=-1).astype(np.int64)
    out = [(np.zeros(0, np.int64), np.zeros((0, texts.encoder.dim), np.float32)) for _ in user_ids]
    for r in np.unique(rows[rows >= 0]).tolist():
        sel = np.flatnonzero(rows == r)  # ds.searches is sorted by time
        out[r] = (times[sel], vectors[sel])
    log.info("searches: %d queries of %d users for the user tower", len(times), len(np.unique(rows[rows >= 0])))
    return out


def search_before(searches: tuple[np.ndarray, np.ndarray], time_ms: int) -> list[float]:
    """The search profile serving would send at `time_ms`: the newest MAX_SEARCHES queries
    strictly before it, recency-weighted (recsys.text_encoder.search_profile); [] = none."""
    from recsys.text_encoder import MAX_SEARCHES, search_profile

    times, vectors = searches
    n = int(np.searchsorted(times, time_ms, side="left"))
    if n == 0:
        return []
    lo = max(0, n - MAX_SEARCHES)
    return search_profile(vectors[lo:n], times[lo:n], time_ms).tolist()


def build_index(embeddings: np.ndarray, p: IndexParams, path: Path) -> None:
    index = Index(
        ndim=embeddings.shape[1],
        metric="cos",
        dtype=p.dtype,
        connectivity=p.connectivity,
        expansion_add=p.expansion_add,
        expansion_search=p.expansion_search,
    )
    index.add(np.arange(len(embeddings), dtype=np.uint64), embeddings)
    index.save(str(path))


@dataclass
class RankerExample:
    user: int
    history: np.ndarray  # item indices, most recent first (what serving would know)
    target: int
    time_ms: int
    mf_user: np.ndarray
    seen: np.ndarray  # excluded from the pool, as serving excludes seen items


def ranker_examples(
    inter: Interactions,
    fit_pos: list[np.ndarray],
    fit_time: list[np.ndarray],
    target: list[int],
    mf_users: np.ndarray,
    mf_items: np.ndarray,
    mf: MFParams,
    seed: int,
) -> list[RankerExample]:
    """Three kinds of example, so the ranker meets every history length it will serve:
    warm (the validation item after the user's whole fit history), cold (the same
    validation item after only the user's first 3 positives, WALS folded in from those 3
    as serving folds in an unknown user's events) and new (no history at all: demographics
    and context only). Cold and new targets are the user's late item, as in the
    evaluation's cold-start slice."""
    rng = np.random.default_rng(seed)
    warm = [
        RankerExample(u, fit_pos[u][::-1], target[u], int(inter.pos_time[u][-1]) * 1000,
                      mf_users[u], np.setdiff1d(inter.seen[u], [target[u]]))
        for u, t in enumerate(target) if t >= 0
    ]
    yty = np.ascontiguousarray(mf_items.T @ mf_items, dtype=np.float32)
    cold, new = [], []
    for ex in warm:
        if rng.random() < 0.5:
            first = np.unique(fit_pos[ex.user][:3].astype(np.int64))
            conf = np.full(len(first), 1.0 + mf.alpha, dtype=np.float32)
            x = kernels.wals_fold_in(first, conf, mf_items, yty, mf.reg, mf.w0)
            cold.append(RankerExample(ex.user, fit_pos[ex.user][:3][::-1], ex.target, ex.time_ms, x, first))
        else:
            new.append(RankerExample(ex.user, np.zeros(0, np.int64), ex.target, ex.time_ms,
                                     np.zeros(mf_items.shape[1], np.float32), np.zeros(0, np.int64)))
    return warm + cold + new


def fit_ranker(
    examples: list[RankerExample],
    inter: Interactions,
    demo: list[UserInput],
    spec: FeatureSpec,
    user_tower_path: Path,
    item_emb: np.ndarray,
    mf_items: np.ndarray,
    content: np.ndarray,
    static: np.ndarray,
    negatives: int,
    pool_size: int,
    seed: int,
    listwise: bool = True,
):
    """Positives vs negatives, both from the candidate pool the funnel would rank
    (two-tower top `pool_size - popular` plus popular top `popular`, minus what the user
    has seen). Only examples whose positive is in the pool count: the ranker orders
    candidates, so it must learn from the candidates' distribution (fitting on positives
    from outside the pool teaches it that a low two-tower score is good). `static` must be
    computed from the fit data only (popularity that counts the validation items leaks)."""
    rng = np.random.default_rng(seed)
    if not examples:
        return None
    inputs = []
    for ex in examples:
        d = demo[ex.user]
        inputs.append(UserInput(ex.history.tolist(), d.age, d.gender, d.occupation, d.region, ex.time_ms))
    tt_users = user_embeddings(user_tower_path, spec, inputs)
    n_popular = pool_size // 5
    n_ann = min(pool_size - n_popular, len(static) - 1)
    popular = np.argsort(-static[:, 0], kind="stable")[:n_popular]
    feats, labels, lengths, groups = [], [], [], []
    for j, ex in enumerate(examples):
        scores = item_emb @ tt_users[j]
        pool = np.union1d(np.argpartition(-scores, n_ann)[:n_ann], popular)
        pool = np.setdiff1d(pool, ex.seen)
        if ex.target not in pool:
            continue
        pool = pool[pool != ex.target]
        if len(pool) == 0:
            continue
        neg = rng.choice(pool, size=min(negatives, len(pool)), replace=False)
        cands = np.concatenate([[ex.target], neg]).astype(np.int64)
        state = UserState(
            tt_user=np.ascontiguousarray(tt_users[j], dtype=np.float32),
            mf_user=np.ascontiguousarray(ex.mf_user, dtype=np.float32),
            profile=content_profile(content, ex.history),
            disliked=disliked_rows(content, inter.neg[ex.user][::-1]),
            coldness=coldness(len(ex.history)),
        )
        feats.append(build_features(state, item_emb, mf_items, content, static, cands))
        labels.append(np.r_[1.0, np.zeros(len(neg))])
        lengths.append(np.full(len(cands), len(ex.history), dtype=np.int64))
        groups.append(np.full(len(cands), j, dtype=np.int64))
    if not feats:
        return None
    return fit_segmented(np.vstack(feats), np.concatenate(labels), np.concatenate(lengths), list(FEATURE_NAMES),
                         np.concatenate(groups) if listwise else None)


def train(
    ds: Dataset, out_root: str | Path, config: TrainConfig | None = None, extra_manifest: dict | None = None
) -> Path:
    """Train every model on `ds` and publish a new bundle version under `out_root`;
    `extra_manifest` entries (e.g. how the config was tuned) are recorded in the manifest."""
    config = config or TrainConfig()
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 3)
        log.info("%s done in %.2fs", name, timings[name])
        return time.perf_counter()

    t0 = time.perf_counter()
    inter = index_interactions(ds)
    n_items = len(inter.item_ids)
    spec = build_spec(ds, config.history_length, config.max_tags)
    demo = user_inputs(ds, inter.user_ids)
    item_features = spec.encode_item_features(ds.items["genres"], ds.items["tags"])
    fit_pos, fit_time, target = split_validation(inter)
    t0 = lap("index", t0)

    texts = encode_item_texts(ds, config)
    searches = user_searches(ds, inter.user_ids, texts)
    if searches is not None:  # the user tower gets a search_profile input (recsys.features)
        spec.search_dim = texts.encoder.dim
    if texts is not None:
        t0 = lap("text_encoder", t0)

    mf_users_fit, mf_items, mf_losses = train_wals(fit_pos, n_items, config.mf)
    t0 = lap("wals", t0)

    examples = two_tower_examples(spec, fit_pos, fit_time, demo, inter.neg, config.two_tower.seed, searches)
    if len(examples.target) == 0:
        raise ValueError("dataset has no positive interactions to train on")
    towers = tt.train_two_tower(examples, item_features, spec.cardinalities, config.two_tower)
    t0 = lap("two_tower", t0)

    version = bundle_fmt.new_version_name(fingerprint(ds))
    with bundle_fmt.BundleWriter(out_root, version) as w:
        parity = tt.export_onnx(towers, item_features, spec.history_length, w.tmp)
        worst = max(parity.values())
        if not worst <= config.parity_tolerance:
            raise RuntimeError(f"ONNX parity check failed: max |torch - onnx| = {worst:.3g} > {config.parity_tolerance}")
        item_emb = embed_items(w.path("item_tower.onnx"), item_features)
        build_index(item_emb, config.index, w.path("index.usearch"))
        content, token_model = item_content(ds, item_features, config)
        content, text_layout = add_item_text(content, texts, config.text_share)
        if token_model is not None:
            token_model.save(w.tmp)
        popularity = np.zeros(n_items, dtype=np.float32)
        for p in inter.pos:
            np.add.at(popularity, p, 1.0)
        for name, array in _source_arrays(ds, inter, spec, demo, item_emb, w.path("index.usearch")).items():
            w.save_array(name, array)
        t0 = lap("export_index", t0)

        # Item-side ranking features as of the end of the fit data (no validation leak).
        fit_popularity = np.zeros(n_items, dtype=np.float32)
        for p in fit_pos:
            np.add.at(fit_popularity, p, 1.0)
        fit_end = max((int(t[-1]) for t in fit_time if len(t)), default=0)
        created = ds.items["created_at"].to_numpy(np.int64)
        fit_static = item_static(fit_popularity, source_arrays.trending(fit_pos, fit_time, n_items), created, fit_end)
        ranked = ranker_examples(inter, fit_pos, fit_time, target, mf_users_fit, mf_items, config.mf,
                                 config.two_tower.seed)
        ranker = fit_ranker(
            ranked, inter, demo, spec, w.path("user_tower.onnx"), item_emb, mf_items, content,
            fit_static, config.ranker_negatives, config.ranker_pool, config.two_tower.seed,
        )
        t0 = lap("ranker", t0)

        # Final user factors see every positive, including the validation ones.
        uptr, uidx = csr([np.unique(r) for r in inter.pos])
        conf = np.full(len(uidx), 1.0 + config.mf.alpha, dtype=np.float32)
        mf_users = kernels.wals_half_step(uptr, uidx, conf, mf_items, config.mf.reg, config.mf.w0)

        w.save_array("item_embeddings", item_emb)
        w.save_array("mf_item_factors", mf_items)
        w.save_array("mf_user_factors", mf_users)
        w.save_array("content", content)
        w.save_array("popularity", popularity)
        for name, rows in (
            ("user_pos", [p[::-1] for p in inter.pos]),
            ("user_seen", inter.seen),
            ("user_neg", [n[::-1] for n in inter.neg]),
        ):
            indptr, indices = csr(rows)
            w.save_array(f"{name}_indptr", indptr)
            w.save_array(f"{name}_indices", indices)
        items = ds.items
        w.save_json(
            "catalog.json",
            {
                "item_ids": inter.item_ids,
                "titles": [str(t) for t in items["title"]],
                "genres": [list(g) for g in items["genres"]],
                "creators": [str(c) for c in items["creator"]],
                "flags": [list(f) for f in items["flags"]],
                "owners": [str(o) for o in items["owner_id"]],
                "created_at": [int(c) for c in items["created_at"]],
            },
        )
        w.save_json(
            "users.json",
            {
                "user_ids": inter.user_ids,
                "age": [d.age for d in demo],
                "gender": [d.gender for d in demo],
                "occupation": [d.occupation for d in demo],
                "region": [d.region for d in demo],
            },
        )
        manifest: dict[str, Any] = {
            "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
            "dataset": {**_jsonable(ds.meta), "fingerprint": fingerprint(ds)},
            "counts": {
                "users": len(inter.user_ids),
                "items": n_items,
                "positives": int(sum(len(p) for p in inter.pos)),
                "two_tower_examples": int(len(examples.target)),
            },
            "features": spec.to_json(),
            "two_tower": {**tt.params_json(config.two_tower), "losses": towers.losses, **parity},
            "mf": {**asdict(config.mf), "losses": mf_losses},
            "index": {**asdict(config.index), "metric": "cos", "file": "index.usearch"},
            "content": {
                "kind": config.content,
                "dim": int(content.shape[1]),
                "multihot_dim": int(item_features.shape[1]),
                **({"cbow": asdict(config.cbow), "vocabulary": len(token_model.vocab)}
                   if token_model is not None else {}),
                **({"text": text_layout} if text_layout else {}),
            },
            "ranker": ranker.to_json() if ranker else _default_ranker(),
            "timings_s": {**timings, "total": round(time.perf_counter() - started, 3)},
            "software": _software(),
            **(extra_manifest or {}),
        }
        path = w.publish(manifest)
    log.info("bundle %s written in %.1fs", path, time.perf_counter() - started)
    return path


def _source_arrays(ds: Dataset, inter: Interactions, spec: FeatureSpec, demo: list[UserInput],
                   item_emb: np.ndarray, index_path: Path) -> dict[str, np.ndarray]:
    """The candidate sources' arrays (recsys.bundle.OPTIONAL_ARRAY_FILES)."""
    n_items = len(inter.item_ids)
    clicks, impressions = source_arrays.clicks_impressions(ds.interactions, inter.item_ids)
    near, near_sims = source_arrays.neighbours(
        Index.restore(str(index_path), view=True), item_emb, np.arange(n_items, dtype=np.int64)
    )
    return {
        "trending": source_arrays.trending(inter.pos, inter.pos_time, n_items),
        "regional_popularity": source_arrays.regional_popularity(inter.pos, demo, spec, n_items),
        "item_clicks": clicks,
        "item_impressions": impressions,
        "item_created_at": ds.items["created_at"].to_numpy(np.int64),
        "item_neighbours": near,
        "item_neighbour_scores": near_sims,
    }


def _default_ranker() -> dict[str, object]:
    """Used only when the data has no user with 3+ positives to validate on: the two
    retrieval scores, equally weighted (stated as such in the manifest)."""
    return {
        "model": "fixed",
        "features": list(FEATURE_NAMES),
        "weights": [1.0, 1.0] + [0.0] * (len(FEATURE_NAMES) - 2),
        "bias": 0.0,
        "metrics": {},
    }


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in meta.items():
        if isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.floating,)):
            v = float(v)
        out[k] = v
    return out


def _software() -> dict[str, str]:
    import numba
    import torch
    import usearch

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "usearch": usearch.__version__,
    }
