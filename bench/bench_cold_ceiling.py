"""Oracle ceiling on the cold-start slices: how far can ANY simple personalised score beat popularity?

    python bench/bench_cold_ceiling.py --data var/ml100k [--data var/mllatest] [--json F]

On the evaluation protocol's split (docs/ARCHITECTURE.md) and evaluation/run.py's slices:
  - cold: each test user cut to their first 3 train positives by time; test = their held-out
    positives minus those 3; recommend over the whole catalogue excluding only those 3
  - new user: the same test users and test sets, no history at all
it scores popularity (train positive counts) against EASE and item-kNN on the 3 items,
time-local popularity (other users' positives in the W days up to the user's last train
event) and demographic popularity (same age decade + gender, same occupation), each blended
as w * s / std(s) + log1p(pop) / std(log1p(pop)). Every grid point, w included, is chosen ON
THE TEST SET, so the best ratio is an upper bound for these families, not a fair model and not
something we serve. It documents that "cold-slice nDCG@10 >= 1.3x popularity" is out of reach
on MovieLens with 3 positives per user.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

K, COLD_ITEMS, DAY_S = 10, 3, 86400
LAMBDAS = (50.0, 250.0, 1000.0, 5000.0)
ALPHAS = (0.0, 0.5, 1.0)
WINDOWS = (1, 7, 30, 120)
WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)


def ndcg(scores: np.ndarray, exclude: np.ndarray | None, tests: list[np.ndarray]) -> float:
    """Mean nDCG@10 (binary gains) of each row's top 10; `exclude` (bool, same shape) is never recommended."""
    s = np.where(exclude, -np.inf, scores) if exclude is not None else scores
    top = np.argpartition(-s, K, axis=1)[:, :K]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable"), axis=1)
    disc = 1.0 / np.log2(np.arange(2, K + 2))
    out = [float((disc * np.isin(row, t)).sum() / disc[: min(K, len(t))].sum()) for row, t in zip(top, tests)]
    return float(np.mean(out))


def blend_rows(name: str, params: str, s: np.ndarray, lp: np.ndarray, exclude: np.ndarray | None,
               tests: list[np.ndarray], base: float) -> dict[str, object]:
    """The blend w * s/std(s) + log1p(pop)/std(log1p(pop)) at the w that is best on test (oracle)."""
    sd = float(s.std()) or 1.0
    per_w = {w: ndcg(w * s / sd + lp, exclude, tests) for w in WEIGHTS}
    w = max(per_w, key=lambda k: per_w[k])
    return {"model": name, "params": f"{params} w={w:g}", "ndcg@10": per_w[w], "ratio": per_w[w] / base}


def window_counts(users_t: np.ndarray, tr_t: np.ndarray, tr_i: np.ndarray, tr_u: np.ndarray,
                  rows: np.ndarray, n_items: int, days: int) -> np.ndarray:
    """Per user: counts of OTHER users' train positives in [t_u - days, t_u]."""
    order = np.argsort(tr_t, kind="stable")
    t, it, us = tr_t[order], tr_i[order], tr_u[order]
    out = np.zeros((len(users_t), n_items), dtype=np.float64)
    for r, (tu, row) in enumerate(zip(users_t, rows)):
        lo, hi = np.searchsorted(t, tu - days * DAY_S, "left"), np.searchsorted(t, tu, "right")
        keep = us[lo:hi] != row
        out[r] = np.bincount(it[lo:hi][keep], minlength=n_items)
    return out


def run(path: str) -> dict[str, object]:
    from evaluation.split import temporal_split
    from training.data import load_dataset, positive_mask

    t0 = time.perf_counter()
    ds = load_dataset(path)
    split = temporal_split(ds.interactions, positive_mask(ds.interactions))
    tr = split.train[split.train_positive]
    items = [str(i) for i in ds.items.item_id]
    col = {i: c for c, i in enumerate(items)}
    train_users = sorted({str(u) for u in split.train.user_id})
    row_of = {u: r for r, u in enumerate(train_users)}
    tr_u = np.array([row_of[str(u)] for u in tr.user_id], dtype=np.int64)
    tr_i = np.array([col[str(i)] for i in tr.item_id], dtype=np.int64)
    tr_t = tr.timestamp.to_numpy(np.int64)
    X = np.zeros((len(train_users), len(items)), dtype=np.float64)
    X[tr_u, tr_i] = 1.0
    pop = X.sum(axis=0)
    lp = np.log1p(pop) / (float(np.log1p(pop).std()) or 1.0)
    last_t = split.train.groupby("user_id")["timestamp"].max()

    first: dict[str, list[str]] = {}
    for u, its in tr.sort_values("timestamp", kind="stable").groupby("user_id", sort=False)["item_id"]:
        if str(u) in split.test:
            first[str(u)] = list(dict.fromkeys(its.astype(str)))[:COLD_ITEMS]
    cold = {u: [i for i in split.test[u] if i not in first[u]] for u in sorted(split.test) if first.get(u)}
    cold = {u: t for u, t in cold.items() if t}
    cu = list(cold)
    H = np.zeros((len(cu), len(items)), dtype=np.float64)
    for r, u in enumerate(cu):
        H[r, [col[i] for i in first[u]]] = 1.0
    c_tests = [np.array([col[i] for i in cold[u]]) for u in cu]
    excl = H > 0
    nu = sorted(split.test)
    n_tests = [np.array([col[i] for i in split.test[u]]) for u in nu]

    res: dict[str, list[dict[str, object]]] = {"cold": [], "new_user": []}
    base_c, base_n = ndcg(np.tile(pop, (len(cu), 1)), excl, c_tests), ndcg(np.tile(pop, (len(nu), 1)), None, n_tests)
    res["cold"].append({"model": "popularity", "params": "", "ndcg@10": base_c, "ratio": 1.0})
    res["new_user"].append({"model": "popularity", "params": "", "ndcg@10": base_n, "ratio": 1.0})

    G = X.T @ X
    d = np.diag(G).copy()
    for lam in LAMBDAS:
        P = np.linalg.inv(G + lam * np.eye(len(items)))
        B = -P / np.diag(P)  # B_ij = -P_ij / P_jj
        np.fill_diagonal(B, 0.0)
        res["cold"].append(blend_rows("ease", f"lam={lam:g}", H @ B, lp, excl, c_tests, base_c))
        del P, B
    dd = np.maximum(d, 1.0)
    for a in ALPHAS:
        S = ((H / dd ** (1 - a)) @ G) / dd ** a  # h @ S, S_ij = G_ij / d_i^(1-a) / d_j^a
        res["cold"].append(blend_rows("item_knn", f"a={a:g}", S, lp, excl, c_tests, base_c))

    rows_c = np.array([row_of.get(u, -1) for u in cu])
    rows_n = np.array([row_of.get(u, -1) for u in nu])
    for w_days in WINDOWS:
        for sl, us, rows, ex, tests, base in (("cold", cu, rows_c, excl, c_tests, base_c),
                                             ("new_user", nu, rows_n, None, n_tests, base_n)):
            ut = np.array([int(last_t.get(u, 0)) for u in us], dtype=np.int64)
            s = window_counts(ut, tr_t, tr_i, tr_u, rows, len(items), w_days)
            res[sl].append(blend_rows("time_pop", f"W={w_days}d", s, lp, ex, tests, base))

    users = ds.users.assign(user_id=ds.users.user_id.astype(str)).set_index("user_id")
    if len(users):
        age = users.age.fillna(0).astype(int)
        keys = {"age10+gender": (age // 10).astype(str) + "|" + users.gender.fillna("").astype(str),
                "occupation": users.occupation.fillna("").astype(str)}
        for name, key in keys.items():
            tu_key = np.array([key.get(u, "") for u in train_users])
            group = {g: X[tu_key == g].sum(axis=0) for g in np.unique(tu_key) if g}
            s = np.zeros((len(nu), len(items)))
            for r, u in enumerate(nu):
                g = key.get(u, "")
                if g:
                    s[r] = group[g] - (X[rows_n[r]] if rows_n[r] >= 0 else 0.0)  # leave the user out
            res["new_user"].append(blend_rows("demo_pop", name, s, lp, None, n_tests, base_n))

    best_c = max(float(r["ratio"]) for r in res["cold"])  # type: ignore[arg-type]
    best_n = max(float(r["ratio"]) for r in res["new_user"])  # type: ignore[arg-type]
    return {"dataset": ds.meta.get("name", path), "items": len(items), "train_users": len(train_users),
            "cold_users": len(cu), "new_users": len(nu), "slices": res, "best_ratio_cold": best_c,
            "best_ratio_new_user": best_n, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True, help="canonical dataset directory (repeatable)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    out = []
    for path in args.data:
        r = run(path)
        out.append(r)
        print(f"dataset {r['dataset']}: {r['items']} items, {r['cold_users']} cold users, "
              f"{r['new_users']} new users ({r['seconds']} s)")
        for sl, rows in r["slices"].items():  # type: ignore[attr-defined]
            print(f"  [{sl}] {'model':<10} {'params':<26} nDCG@10  ratio")
            for row in rows:
                print(f"  [{sl}] {row['model']:<10} {row['params']:<26} {row['ndcg@10']:.4f}  {row['ratio']:.2f}x")
        print(f"oracle ceiling: best ratio {r['best_ratio_cold']:.2f}x on the cold slice, "
              f"{r['best_ratio_new_user']:.2f}x on new users (target 1.30x)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
