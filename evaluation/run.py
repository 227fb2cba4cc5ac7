"""`recsys eval`: the protocol of docs/ARCHITECTURE.md, the served funnel beside baselines.

The funnel is evaluated exactly as served: the same Retriever (ONNX user tower + usearch +
popular source) and the same Ranker (kernels, fitted ranker, rules) that the services wrap,
called in process instead of over gRPC (the only difference is the transport). This module
is the one place allowed to import both services' pure parts and the trainer; nothing
imports it (see the import rules in docs/ARCHITECTURE.md).

Rows of the table:
  popularity   most positive train interactions
  ease         EASE, closed form (lambda tuned on nothing: 500, Steck's ML default range)
  wals         our WALS factors from the bundle (dot product over all items)
  two_tower, item_to_item, regional, trending, fresh
               each candidate source alone (its own top k after exclusions)
  funnel       candidates -> ranker -> rules, as served
Plus the same rows on the cold-start slice (each test user cut to their first 3 train
positives, served as an unknown user whose 3 events are in the event store), and a
long-tail slice (the main lists scored against only the test items with at most
TAIL_MAX_POSITIVES train positives).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from candidate_svc.retrieval import Request, Retriever
from evaluation.baselines import EASE, InteractionMatrix, Popularity, recommend_ids, top_k_excluding
from evaluation.metrics import evaluate, format_table, train_popularity
from evaluation.split import temporal_split, validation_split
from ranking_svc.events import MemoryEventStore, StoredEvent
from ranking_svc.ranker import CandidateList, Demographics, Ranker
from recsys.bundle import Bundle, load_bundle
from recsys.features import UserInput
from training.data import Dataset, positive_mask
from training.pipeline import TrainConfig, train

log = logging.getLogger(__name__)

COLD_ITEMS = 3
TAIL_MAX_POSITIVES = 5  # long-tail slice: test items with at most this many train positives
SERVED = "funnel"


class InProcessCandidateSource:
    """CandidateSource calling the candidate tier's Retriever directly (no transport)."""

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    def fetch(self, user_id, history_ids, demographics, time_ms, num, exclude_ids, timeout_s) -> CandidateList:
        index = self.retriever.bundle.item_index
        user = UserInput(
            history=[index[i] for i in history_ids if i in index],
            age=demographics.age,
            gender=demographics.gender,
            occupation=demographics.occupation,
            region=demographics.region,
            time_ms=time_ms,
        )
        exclude = np.fromiter((index[i] for i in exclude_ids if i in index), dtype=np.int64)
        (c,) = self.retriever.retrieve([Request(user, num, exclude)])
        ids = self.retriever.bundle.item_ids
        return CandidateList(
            item_ids=[ids[i] for i in c.items.tolist()],
            two_tower_scores=c.two_tower_scores.tolist(),
            sources=[list(s) for s in c.sources],
            user_embedding=c.user_embedding,
        )


def _factor_recs(bundle: Bundle, user_ids: Sequence[str], k: int) -> dict[str, list[str]]:
    """Our WALS alone: x_u . y_i over every item, minus the user's train items."""
    out = {}
    y = bundle.mf_item_factors
    for u in user_ids:
        row = bundle.user_index.get(u)
        if row is None:
            continue
        scores = y @ bundle.mf_user_factors[row]
        scores[bundle.user_seen.row(row)] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        out[u] = [bundle.item_ids[i] for i in top if np.isfinite(scores[i])]
    return out


def _funnel_recs(ranker: Ranker, users: Sequence[str], times: dict[str, int], k: int,
                 demo: dict[str, Demographics]) -> dict[str, list[str]]:
    return {
        u: [it.item_id for it in ranker.recommend(u, k, demo.get(u, Demographics()), time_ms=times[u]).items]
        for u in users
    }


def _source_recs(ranker: Ranker, retriever: Retriever, users: Sequence[str], times: dict[str, int], k: int,
                 demo: dict[str, Demographics], name: str = "two_tower") -> dict[str, list[str]]:
    """One candidate source alone: the request asks only it for k items (a quota of k), and
    its own proposals are kept in its own score order (the merge's popularity top-up is
    dropped)."""
    out = {}
    b = ranker.bundle
    for u in users:
        h = ranker.history(u, demo.get(u, Demographics()))
        d = h.demographics
        user = UserInput(h.positives[: b.spec.history_length], d.age, d.gender, d.occupation, d.region, times[u])
        exclude = np.fromiter(h.seen, dtype=np.int64, count=len(h.seen))
        (c,) = retriever.retrieve([Request(user, max(k, 1), exclude, user_id=u, quotas={name: max(k, 1)})])
        own = [(s[name], int(i)) for i, s in zip(c.items.tolist(), c.sources) if name in s]
        own.sort(key=lambda t: -t[0])
        out[u] = [b.item_ids[i] for _, i in own[:k]]
    return out


def run_eval(
    ds: Dataset,
    work_dir: str | Path,
    ks: Sequence[int] = (10, 20),
    config: TrainConfig | None = None,
    ease_lambdas: Sequence[float] = (100.0, 250.0, 500.0, 1000.0, 2000.0),
) -> dict[str, Any]:
    started = time.perf_counter()
    kmax = max(ks)
    pos = positive_mask(ds.interactions)
    split = temporal_split(ds.interactions, pos)
    train_ds = replace(ds, interactions=split.train.reset_index(drop=True))
    bundle_path = train(train_ds, Path(work_dir) / "bundles", config)
    bundle = load_bundle(bundle_path)
    item_ids = bundle.item_ids
    test = split.test
    users = sorted(test)
    last_train = split.train.groupby("user_id")["timestamp"].max()
    times = {u: int(last_train.get(u, 0)) * 1000 for u in users}
    item_genres = {i: set(g) for i, g in zip(item_ids, bundle.genres)}
    popularity = train_popularity(split.train, split.train_positive)

    matrix = InteractionMatrix.from_frame(split.train, split.train_positive, item_ids)
    timing: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        timing[name] = round(time.perf_counter() - t0, 3)
        return out

    # Baselines are tuned on a validation split carved from train (never on test).
    tuned: dict[str, Any] = {}
    ease_lambda = timed("tune_ease", lambda: tune_ease(split, item_ids, item_genres, popularity, ease_lambdas))
    tuned["ease_lambda"] = ease_lambda
    pop, ease = Popularity(), EASE(ease_lambda)
    pop.fit(matrix)
    ease.fit(matrix)
    retriever = Retriever(bundle)
    source = InProcessCandidateSource(retriever)
    ranker = Ranker(bundle, source, events=None)
    ranker.warmup()
    demo: dict[str, Demographics] = {}

    def table_row(recs: dict[str, list[str]], test_sets: dict[str, list[str]]) -> dict[int, dict]:
        return {k: evaluate(recs, test_sets, k, len(item_ids), item_genres, popularity) for k in ks}

    recs: dict[str, dict[str, list[str]]] = {
        "popularity": timed("popularity", lambda: recommend_ids(pop, matrix, users, kmax)),
        "ease": timed("ease", lambda: recommend_ids(ease, matrix, users, kmax)),
    }
    als = timed("tune_als", lambda: tuned_implicit_als(split, matrix, item_ids, item_genres, popularity))
    if als is not None:
        model, params = als
        tuned["implicit_als"] = params
        recs["implicit_als"] = recommend_ids(model, matrix, users, kmax)
    recs["wals"] = timed("wals", lambda: _factor_recs(bundle, users, kmax))
    for name in retriever.sources:
        if name != "popular":
            recs[name] = timed(name, lambda name=name: _source_recs(ranker, retriever, users, times, kmax, demo, name))
    recs[SERVED] = timed(SERVED, lambda: _funnel_recs(ranker, users, times, kmax, demo))
    rows = [(name, table_row(r, test)) for name, r in recs.items()]
    # Long tail: the same lists scored against only the test items with few train positives.
    tail_test = _long_tail_test(test, split.train[split.train_positive], TAIL_MAX_POSITIVES)
    tail_rows = [(name, table_row(recs[name], tail_test)) for name in ("popularity", "ease", "wals", "two_tower", SERVED)
                 if name in recs]
    # The ranker's gain over its best single feature: the same funnel ranked by one feature.
    single = []
    fitted, segments = ranker.weights.copy(), ranker.segments
    ranker.segments = []  # one feature for every user
    for j, name in enumerate(bundle.manifest["ranker"]["features"]):
        ranker.weights = np.zeros_like(fitted)
        ranker.weights[j] = -1.0 if fitted[j] < 0 else 1.0
        single.append((f"{SERVED}[only {name}]", table_row(_funnel_recs(ranker, users, times, kmax, demo), test)))
    ranker.weights, ranker.segments = fitted, segments
    best_single = max(single, key=lambda r: r[1][ks[0]]["ndcg"])

    # Cold-start slice: each test user reduced to their first COLD_ITEMS train positives.
    cold_rows = _cold_start_rows(split, users, times, bundle, source, matrix, ease, pop, kmax, table_row)
    # Brand-new users: demographics and region only, no history at all.
    new_rows = _new_user_rows(ds, users, times, bundle, source, matrix, kmax, test, table_row)

    all_rows = rows + [best_single]
    report = {
        "dataset": ds.meta.get("name", ""),
        "dataset_meta": {k: v for k, v in ds.meta.items() if isinstance(v, (str, int, float))},
        "served": SERVED,
        "bundle": bundle.version,
        "test_users": len(users),
        "ks": list(ks),
        "models": {name: _flat(r) for name, r in all_rows},
        "slices": {"cold": {name: _flat(r) for name, r in cold_rows},
                   "new_user": {name: _flat(r) for name, r in new_rows},
                   "long_tail": {name: _flat(r) for name, r in tail_rows}},
        "ranker_single_features": {name: _flat(r) for name, r in single},
        "tuned": tuned,
        "timings_s": {**timing, "total": round(time.perf_counter() - started, 2)},
        "bundle_manifest": {
            "ranker": bundle.manifest["ranker"],
            "timings_s": bundle.manifest["timings_s"],
        },
        "table": format_table(all_rows, ks),
        "cold_start_table": format_table(cold_rows, ks),
        "new_user_table": format_table(new_rows, ks),
        "long_tail_table": format_table(tail_rows, ks),
    }
    return report


def tune_ease(split, item_ids, item_genres, popularity, lambdas: Sequence[float]) -> float:
    """EASE's lambda by nDCG@10 on a validation split carved from train."""
    if len(lambdas) == 1:
        return float(lambdas[0])
    val = validation_split(split.train, split.train_positive)
    vm = InteractionMatrix.from_frame(val.train, val.train_positive, item_ids)
    vusers = sorted(val.test)
    best, best_score = float(lambdas[0]), -1.0
    for lam in lambdas:
        model = EASE(lam)
        model.fit(vm)
        score = evaluate(recommend_ids(model, vm, vusers, 10), val.test, 10, len(item_ids), item_genres, popularity)["ndcg"]
        if score > best_score:
            best, best_score = float(lam), score
    return best


class _ImplicitALS:
    """implicit's ALS behind the baselines' Recommender interface (benchmark only)."""

    name = "implicit_als"

    def __init__(self, **params: Any) -> None:
        from implicit.als import AlternatingLeastSquares

        self.params = params
        self.model = AlternatingLeastSquares(random_state=0, iterations=15, **params)
        self._matrix: InteractionMatrix | None = None

    def fit(self, train: InteractionMatrix) -> None:
        import scipy.sparse as sp

        x = sp.csr_matrix((train.values, train.indices, train.indptr), shape=(train.n_users, train.n_items))
        self.model.fit(x, show_progress=False)
        self._matrix = train

    def recommend(self, user_rows: np.ndarray, k: int) -> np.ndarray:
        scores = np.asarray(self.model.user_factors[user_rows] @ self.model.item_factors.T, dtype=np.float32)
        return top_k_excluding(scores, self._matrix, user_rows, k)


def tuned_implicit_als(split, matrix, item_ids, item_genres, popularity):
    """The `implicit` package's ALS, grid-tuned on a validation split carved from train;
    None when implicit is not installed (it is a benchmark-only dependency: `bench` extra)."""
    try:
        import implicit  # noqa: F401
    except ImportError:
        log.warning("implicit not installed: the tuned-ALS baseline is skipped (pip install implicit)")
        return None
    import threadpoolctl

    val = validation_split(split.train, split.train_positive)
    vm = InteractionMatrix.from_frame(val.train, val.train_positive, item_ids)
    vusers = sorted(val.test)
    best, best_score = None, -1.0
    with threadpoolctl.threadpool_limits(1, "blas"):  # implicit's own advice for its solver
        for factors in (16, 32, 64):
            for reg in (0.01, 0.1, 1.0):
                for alpha in (1.0, 5.0, 20.0):
                    params = {"factors": factors, "regularization": reg, "alpha": alpha}
                    m = _ImplicitALS(**params)
                    m.fit(vm)
                    score = evaluate(recommend_ids(m, vm, vusers, 10), val.test, 10, len(item_ids),
                                     item_genres, popularity)["ndcg"]
                    if score > best_score:
                        best, best_score = params, score
        model = _ImplicitALS(**best)
        model.fit(matrix)
    return model, {**best, "validation_ndcg@10": round(best_score, 5)}


def _new_user_rows(ds, users, times, bundle, source, matrix, kmax, test, table_row):
    """Each test user served as a brand-new user: no history, only their demographics."""
    known = {str(r.user_id): r for r in ds.users.itertuples(index=False)}
    ranker = Ranker(bundle, source, None)
    new_test, new_times, demo = {}, {}, {}
    for u in users:
        r = known.get(u)
        d = Demographics(int(r.age or 0), str(r.gender or ""), str(r.occupation or ""), str(r.region or "")) if r else Demographics()
        new_id = f"new::{u}"
        demo[new_id] = d
        new_test[new_id] = test[u]
        new_times[new_id] = times[u]
    recs = _funnel_recs(ranker, list(new_test), new_times, kmax, demo)
    two_tower = _source_recs(ranker, source.retriever, list(new_test), new_times, kmax, demo)
    order = np.argsort(-matrix.item_counts(), kind="stable")[:kmax]  # no history: popularity
    pop_list = [matrix.item_ids[c] for c in order]
    return [
        ("popularity", table_row({u: pop_list for u in new_test}, new_test)),
        ("two_tower", table_row(two_tower, new_test)),
        (SERVED, table_row(recs, new_test)),
    ]


def _cold_start_rows(split, users, times, bundle, source, matrix, ease, pop, kmax, table_row):
    first: dict[str, list[str]] = {}
    train = split.train[split.train_positive].sort_values("timestamp", kind="stable")
    for u, items in train.groupby("user_id", sort=False)["item_id"]:
        if u in split.test:
            first[str(u)] = list(dict.fromkeys(items.astype(str)))[:COLD_ITEMS]
    cold_users = [u for u in users if first.get(u)]
    store = MemoryEventStore()
    for u in cold_users:
        store.append([
            StoredEvent(f"cold-{u}-{j}", f"cold::{u}", item, "like", 1.0, times[u] - 1000 * (len(first[u]) - j))
            for j, item in enumerate(first[u])
        ])
    ranker = Ranker(bundle, source, store)
    test = {f"cold::{u}": [i for i in split.test[u] if i not in first[u]] for u in cold_users}
    test = {u: t for u, t in test.items() if t}
    cold_times = {f"cold::{u}": times[u] for u in cold_users}
    ids = list(test)
    funnel = _funnel_recs(ranker, ids, cold_times, kmax, {})
    two_tower = _source_recs(ranker, source.retriever, ids, cold_times, kmax, {})
    # Baselines see the same 3 items: EASE scores x B, popularity is history-free.
    cold_matrix = _matrix_from(first, cold_users, matrix.item_ids)
    ease_recs = {f"cold::{u}": r for u, r in _ease_rows(ease, cold_matrix, kmax).items()}
    cold_pop = pop.with_history(cold_matrix)  # the global order, excluding only those 3 items
    pop_recs = {f"cold::{u}": r for u, r in recommend_ids(cold_pop, cold_matrix, cold_users, kmax).items()}
    return [
        ("popularity", table_row(pop_recs, test)),
        ("ease", table_row(ease_recs, test)),
        ("two_tower", table_row(two_tower, test)),
        (SERVED, table_row(funnel, test)),
    ]


def _long_tail_test(test: dict[str, list[str]], train_positives: pd.DataFrame, max_positives: int
                    ) -> dict[str, list[str]]:
    """Each user's test items with <= `max_positives` positives in train (users left with none
    drop out): recall@k on it is how much of the long tail the lists reach."""
    counts = train_positives["item_id"].astype(str).value_counts()
    out = {u: [i for i in items if int(counts.get(i, 0)) <= max_positives] for u, items in test.items()}
    return {u: items for u, items in out.items() if items}


def _matrix_from(rows: dict[str, list[str]], users: list[str], item_ids: list[str]) -> InteractionMatrix:
    frame = pd.DataFrame(
        [(u, i, 0) for u in users for i in rows[u]], columns=["user_id", "item_id", "timestamp"]
    )
    return InteractionMatrix.from_frame(frame, np.ones(len(frame), dtype=bool), item_ids)


def _ease_rows(ease: EASE, cold: InteractionMatrix, k: int) -> dict[str, list[str]]:
    """EASE's B from the full train, applied to the cold users' 3-item rows."""
    rows = np.arange(cold.n_users, dtype=np.int64)
    scores = cold.dense_rows(rows, np.float32) @ ease.B
    cols = top_k_excluding(scores, cold, rows, k)
    return {u: [cold.item_ids[c] for c in r if c >= 0] for u, r in zip(cold.user_ids, cols)}


def _flat(by_k: dict[int, dict[str, float]]) -> dict[str, float]:
    """{"ndcg@10": .., "precision@10": .., ...}: one flat dict per model, for scripts."""
    return {f"{m}@{k}": float(v) for k, metrics in by_k.items() for m, v in metrics.items() if m != "users"} | {
        "users": float(next(iter(by_k.values()))["users"])}


def write_report(report: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2))
