"""WALS and two-tower against `implicit` ALS and EASE: one command, one run, ratios.

    python bench/bench_quality.py --data var/ml100k [--threads 2] [--iterations 15]

On the evaluation protocol's split (docs/ARCHITECTURE.md) it measures, in the same process:
  - seconds per ALS iteration: our WALS (kernels.wals_half_step, Numba threads = --threads)
    vs implicit's CPU ALS (num_threads = --threads, BLAS pinned to 1 thread), same factors,
    regularisation, confidence and iterations
  - nDCG@10 / precision@10 / recall@20 of both at those settings, and of EASE
  - the full `recsys eval` table (funnel, two-tower, baselines) unless --no-eval
and prints each as a ratio against implicit (speed) and against the better baseline (quality).
Benchmark only: implicit and scipy come from the `bench` extra, never from serving.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="canonical dataset directory (recsys data ...)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--factors", type=int, default=32)
    ap.add_argument("--reg", type=float, default=0.1)
    ap.add_argument("--alpha", type=float, default=10.0, help="confidence c = 1 + alpha for positives")
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--ease-lambda", type=float, default=250.0)
    ap.add_argument("--repeats", type=int, default=5, help="timed fits per solver; the best counts")
    ap.add_argument("--no-eval", action="store_true", help="skip the full recsys eval table")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    import numba
    import scipy.sparse as sp
    import threadpoolctl
    from implicit.cpu.als import AlternatingLeastSquares

    import kernels
    from evaluation.baselines import EASE, InteractionMatrix, recommend_ids, top_k_excluding
    from evaluation.metrics import evaluate, train_popularity
    from evaluation.split import temporal_split
    from training.data import load_dataset, positive_mask

    numba.set_num_threads(args.threads)
    ds = load_dataset(args.data)
    split = temporal_split(ds.interactions, positive_mask(ds.interactions))
    items = [str(i) for i in ds.items.item_id]
    m = InteractionMatrix.from_frame(split.train, split.train_positive, items)
    users = sorted(split.test)
    rows = np.array([m.user_ids.index(u) for u in users], dtype=np.int64)
    pop = train_popularity(split.train, split.train_positive)
    genres = {i: set(g) for i, g in zip(items, ds.items.genres)}

    def quality(user_f: np.ndarray, item_f: np.ndarray) -> dict[str, float]:
        scores = np.asarray(user_f[rows] @ item_f.T, dtype=np.float32)
        cols = top_k_excluding(scores, m, rows, 20)
        recs = {u: [items[c] for c in r if c >= 0] for u, r in zip(users, cols)}
        at10 = evaluate(recs, split.test, 10, len(items), genres, pop)
        at20 = evaluate(recs, split.test, 20, len(items), genres, pop)
        return {"ndcg@10": at10["ndcg"], "precision@10": at10["precision"], "recall@20": at20["recall"]}

    # ---- ours: alternate half steps; time per iteration (both half steps)
    conf = np.full(len(m.indices), 1.0 + args.alpha, dtype=np.float32)
    users_of = np.repeat(np.arange(m.n_users), np.diff(m.indptr))
    order = np.lexsort((users_of, m.indices))
    iptr = np.zeros(m.n_items + 1, dtype=np.int64)
    iptr[1:] = np.cumsum(np.bincount(m.indices, minlength=m.n_items))
    iidx = users_of[order].astype(np.int64)
    rng = np.random.default_rng(0)
    y = (rng.standard_normal((m.n_items, args.factors)) * 0.01).astype(np.float32)
    uidx = m.indices.astype(np.int64)
    y0 = y.copy()
    kernels.wals_half_step(m.indptr, uidx, conf, y, args.reg, 1.0)  # compile / load from cache
    kernels.wals_half_step_cg(m.indptr, uidx, conf, y, np.zeros((m.n_users, args.factors), np.float32),
                              args.reg, 1.0, 3)
    timings, qualities = {}, {}
    for solver in ("exact", "cg"):
        best = float("inf")
        for _ in range(args.repeats):  # the best of N fits: the machine is shared and noisy
            y = y0.copy()
            x = np.zeros((m.n_users, args.factors), dtype=np.float32)
            t0 = time.perf_counter()
            for _ in range(args.iterations):
                if solver == "cg":  # implicit's default: 3 warm-started CG steps per row
                    x = kernels.wals_half_step_cg(m.indptr, uidx, conf, y, x, args.reg, 1.0, 3)
                    y = kernels.wals_half_step_cg(iptr, iidx, conf[order], x, y, args.reg, 1.0, 3)
                else:
                    x = kernels.wals_half_step(m.indptr, uidx, conf, y, args.reg, 1.0)
                    y = kernels.wals_half_step(iptr, iidx, conf[order], x, args.reg, 1.0)
            best = min(best, (time.perf_counter() - t0) / args.iterations)
        timings[solver] = best
        qualities[solver] = quality(x, y)
    ours_s, ours_q = timings["cg"], qualities["cg"]

    # ---- implicit: the same loss (c = 1 + alpha, unobserved weight 1, L2 reg)
    X = sp.csr_matrix((m.values, m.indices, m.indptr), shape=(m.n_users, m.n_items))
    with threadpoolctl.threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(factors=args.factors, regularization=args.reg, alpha=args.alpha,
                                      iterations=args.iterations, num_threads=args.threads, random_state=0,
                                      calculate_training_loss=False)
        als.fit(X, show_progress=False)  # first fit warms up
        implicit_s = float("inf")
        for _ in range(args.repeats):
            als = AlternatingLeastSquares(factors=args.factors, regularization=args.reg, alpha=args.alpha,
                                          iterations=args.iterations, num_threads=args.threads,
                                          random_state=0, calculate_training_loss=False)
            t0 = time.perf_counter()
            als.fit(X, show_progress=False)
            implicit_s = min(implicit_s, (time.perf_counter() - t0) / args.iterations)
    implicit_q = quality(als.user_factors, als.item_factors)

    ease = EASE(args.ease_lambda)
    t0 = time.perf_counter()
    ease.fit(m)
    ease_fit_s = time.perf_counter() - t0
    recs = recommend_ids(ease, m, users, 20)
    ease_q = {"ndcg@10": evaluate(recs, split.test, 10, len(items), genres, pop)["ndcg"],
              "precision@10": evaluate(recs, split.test, 10, len(items), genres, pop)["precision"],
              "recall@20": evaluate(recs, split.test, 20, len(items), genres, pop)["recall"]}

    out = {
        "dataset": ds.meta.get("name"), "threads": args.threads, "factors": args.factors,
        "iterations": args.iterations, "reg": args.reg, "alpha": args.alpha,
        "seconds_per_iteration": {"ours_wals_cg": ours_s, "ours_wals_exact": timings["exact"],
                                  "implicit_als": implicit_s},
        "speed_ratio_implicit_over_ours": implicit_s / ours_s,
        "quality": {"ours_wals_cg": ours_q, "ours_wals_exact": qualities["exact"], "implicit_als": implicit_q,
                    "ease": ease_q},
        "ease_fit_s": ease_fit_s,
    }
    print(f"dataset {out['dataset']}: {m.n_users} users x {m.n_items} items, {len(m.indices)} positives")
    print(f"per ALS iteration ({args.threads} threads, {args.factors} factors): ours (CG) {ours_s * 1000:.1f} ms,"
          f" ours (exact) {timings['exact'] * 1000:.1f} ms, implicit {implicit_s * 1000:.1f} ms"
          f"  -> ours (CG) runs at {implicit_s / ours_s:.2f}x implicit's speed")
    for name, q in out["quality"].items():
        print(f"  {name:<13} " + "  ".join(f"{k} {v:.4f}" for k, v in q.items()))
    print(f"  ours / implicit nDCG@10: {ours_q['ndcg@10'] / max(implicit_q['ndcg@10'], 1e-12):.3f}")

    if not args.no_eval:
        import tempfile

        from evaluation.run import run_eval
        from training.pipeline import TrainConfig

        report = run_eval(ds, tempfile.mkdtemp(prefix="bench-quality-"), config=replace(TrainConfig()))
        models = report["models"]
        best = max((models[n]["ndcg@10"], n) for n in ("ease", "implicit_als", "wals") if n in models)
        funnel = models[report["served"]]
        print(report["table"])
        print(f"funnel nDCG@10 {funnel['ndcg@10']:.4f} = {funnel['ndcg@10'] / best[0]:.3f}x the best baseline ({best[1]})")
        out["eval"] = {k: report[k] for k in ("models", "slices", "tuned")}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
