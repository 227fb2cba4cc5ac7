"""The ranker: a logistic regression over recsys.ranking_features, fitted offline.

Pointwise logistic loss with L2, solved by Newton's method (IRLS) on standardised
features; the standardisation is folded back into the weights so the ranking service
applies `score = features . w + b` (kernels.linear_score) with no extra step.
A handful of features and a few thousand rows: Newton converges in ~10 steps and needs no
library beyond NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# History-length segments (served by ranking_svc.ranker.Ranker.weights_for): one linear
# model cannot weigh popularity for a brand-new user the way it must for a user with 200 items.
SEGMENTS = (("new", 0), ("cold", 9), ("warm", None))
MIN_SEGMENT_POSITIVES = 30  # fewer: the segment uses the pooled model
# Segments fitted as a learned correction on top of a popularity prior
# (score = log_popularity + log_trending + x.w): little personal signal, so what the
# degraded fallback serves (popular and trending, ranking_svc.ranker) is the default.
# Only "new": on ml-100k the held-out choice kept the plain fit for "cold" anyway, and on
# small data a prior there shrank the content weight that carries a user's searches.
PRIOR_SEGMENTS = ("new",)
PRIOR_FEATURES = ("log_popularity", "log_trending")
# (prior?, l2) tried per prior segment, chosen by held-out listwise MRR over 2 request folds;
# the first entry is the plain fit, so the prior is only used where it wins held-out.
PRIOR_GRID = ((False, 1e-3), (True, 1e-2), (True, 1e-1), (True, 1.0), (True, 10.0), (True, 100.0))


@dataclass
class LinearRanker:
    feature_names: list[str]
    weights: np.ndarray  # float32[f]
    bias: float
    metrics: dict[str, float]
    segments: list[dict[str, object]] | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "model": "logistic",
            "features": self.feature_names,
            "weights": [float(w) for w in self.weights],
            "bias": float(self.bias),
            "metrics": self.metrics,
        }
        if self.segments:
            out["model"] = "logistic_segmented"
            out["segments"] = self.segments
        return out


def fit_segmented(
    features: np.ndarray,
    labels: np.ndarray,
    n_history: np.ndarray,
    names: list[str],
    groups: np.ndarray | None = None,
) -> LinearRanker:
    """A pooled model plus one per history-length segment (SEGMENTS). With `groups` (one
    id per request: its positive and its candidate pool) the loss is listwise softmax,
    else pointwise logistic."""
    def fit(rows: np.ndarray | slice) -> LinearRanker:
        if groups is None:
            return fit_logistic(features[rows], labels[rows], names)
        return fit_listwise(features[rows], labels[rows], groups[rows], names)

    prior = [names.index(n) for n in PRIOR_FEATURES if n in names] or None

    pooled = fit(slice(None))
    segments: list[dict[str, object]] = []
    low = 0
    for name, bound in SEGMENTS:
        rows = (n_history >= low) & (n_history <= (bound if bound is not None else np.iinfo(np.int64).max))
        low = (bound if bound is not None else 0) + 1
        model = pooled
        if labels[rows].sum() >= MIN_SEGMENT_POSITIVES and (labels[rows] < 0.5).any():
            if groups is not None and prior is not None and name in PRIOR_SEGMENTS:
                model = fit_listwise_selected(features[rows], labels[rows], groups[rows], names, prior)
            else:
                model = fit(rows)
        segments.append({
            "name": name,
            "max_history": bound,
            "weights": [float(w) for w in model.weights],
            "bias": float(model.bias),
            "metrics": {**model.metrics, "pooled": model is pooled, "segment_rows": float(rows.sum())},
        })
    pooled.segments = segments
    return pooled


def listwise_mrr(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Mean reciprocal rank of each request's positive among its pool, a tie counting half
    (so a constant score ranks the positive mid-pool, not first)."""
    _, g = np.unique(groups, return_inverse=True)
    n_groups = int(g.max()) + 1 if len(g) else 0
    if n_groups == 0:
        return float("nan")
    pos = labels > 0.5
    pos_score = np.zeros(n_groups)
    np.add.at(pos_score, g, np.where(pos, scores, 0.0))
    above = np.bincount(g, weights=(scores > pos_score[g]).astype(np.float64), minlength=n_groups)
    tied = np.bincount(g, weights=((scores == pos_score[g]) & ~pos).astype(np.float64), minlength=n_groups)
    return float(np.mean(1.0 / (1.0 + above + 0.5 * tied)))


def fit_listwise_selected(
    features: np.ndarray, labels: np.ndarray, groups: np.ndarray, names: list[str], prior: int | list[int],
    grid: tuple[tuple[bool, float], ...] = PRIOR_GRID, seed: int = 0,
) -> LinearRanker:
    """fit_listwise with the (prior?, l2) of `grid` that ranks best on held-out requests:
    2 folds split by request group, held-out listwise MRR (ties half) averaged over folds,
    the earlier grid entry kept on a tie. Refitted on all rows; the choice and every
    candidate's held-out MRR go into the metrics."""
    ids = np.unique(groups)
    fold_of = np.random.default_rng(seed).permutation(len(ids)) % 2
    fold = fold_of[np.searchsorted(ids, groups)]
    held: list[float] = []
    for use_prior, l2 in grid:
        mrrs = []
        for k in (0, 1):
            train, test = fold != k, fold == k
            if labels[train].sum() < 1 or labels[test].sum() < 1:
                continue
            m = fit_listwise(features[train], labels[train], groups[train], names, l2=l2,
                             prior_feature=prior if use_prior else None)
            mrrs.append(listwise_mrr(features[test].astype(np.float64) @ m.weights.astype(np.float64),
                                     labels[test], groups[test]))
        held.append(float(np.mean(mrrs)) if mrrs else 0.0)
    best = int(np.argmax(held))  # first maximum: the plain fit wins ties
    use_prior, l2 = grid[best]
    cols = [prior] if isinstance(prior, int) else list(prior)
    prior_name = "+".join(names[c] for c in cols)
    model = fit_listwise(features, labels, groups, names, l2=l2, prior_feature=prior if use_prior else None)
    model.metrics.update({
        "prior": prior_name if use_prior else None,
        "l2": float(l2),
        "heldout_mrr": held[best],
        "heldout_mrr_plain": held[0],
        "heldout_grid": [[prior_name if p else None, float(v), h] for (p, v), h in zip(grid, held)],
    })
    return model


def fit_listwise(
    features: np.ndarray, labels: np.ndarray, groups: np.ndarray, names: list[str],
    l2: float = 1e-3, steps: int = 30, prior_feature: int | list[int] | None = None,
) -> LinearRanker:
    """Softmax over each request's pool (a conditional logit): maximise
    sum_g [s_pos(g) - log sum_{j in g} exp(s_j)], s = x.w, by Newton's method. It optimises
    where the positive lands among the candidates actually ranked together, which is what
    top-k metrics measure; a pointwise loss spends its capacity on easy negatives. The bias
    cancels inside a request, so it is 0.

    With `prior_feature` (a column index or several), s = sum of those columns + x.w: w is
    a learned correction on top of that prior, shrunk towards it by the L2, and the prior's
    unit weights are folded into the returned weights (serving stays a plain linear score)."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    _, g = np.unique(groups, return_inverse=True)
    n_groups = int(g.max()) + 1 if len(g) else 0
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-12] = 1.0
    z = (x - mean) / std
    f = z.shape[1]
    reg = l2 * n_groups
    prior_cols = [] if prior_feature is None else np.atleast_1d(prior_feature).astype(int).tolist()
    offset = x[:, prior_cols].sum(axis=1)

    def softmax_stats(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = offset + z @ w
        s_max = np.full(n_groups, -np.inf)
        np.maximum.at(s_max, g, s)
        e = np.exp(s - s_max[g])
        total = np.bincount(g, weights=e, minlength=n_groups)
        loss = float(np.sum(np.log(total) + s_max) - np.sum(y * s) + 0.5 * reg * w @ w)
        return loss, e / total[g]  # -log-likelihood + L2, softmax within each group

    w = np.zeros(f)
    loss, p = softmax_stats(w)
    for _ in range(steps):
        mu = np.zeros((n_groups, f))
        np.add.at(mu, g, p[:, None] * z)  # E_p[z] per group
        grad = mu.sum(axis=0) - (y[:, None] * z).sum(axis=0) + reg * w
        hess = (z * p[:, None]).T @ z - mu.T @ mu + reg * np.eye(f) + 1e-9 * np.eye(f)
        step = np.linalg.solve(hess, grad)
        t = 1.0  # backtracking: Newton overshoots when a feature nearly separates the data
        while True:
            new_loss, new_p = softmax_stats(w - t * step)
            if new_loss <= loss - 1e-4 * t * (grad @ step) or t < 1e-6:
                break
            t *= 0.5
        w, loss, p = w - t * step, new_loss, new_p
        if np.abs(t * step).max() < 1e-8:
            break
    weights = w / std
    weights[prior_cols] += 1.0
    scores = x @ weights
    # rank of the positive within its group (1 = first), for the manifest
    pos_score = np.zeros(n_groups)
    np.add.at(pos_score, g, np.where(y > 0.5, scores, 0.0))
    above = np.bincount(g, weights=(scores > pos_score[g]).astype(np.float64), minlength=n_groups)
    return LinearRanker(
        feature_names=list(names),
        weights=weights.astype(np.float32),
        bias=0.0,
        metrics={
            "auc": auc(scores, y),
            "mrr": float(np.mean(1.0 / (1.0 + above))),
            "hit@10": float(np.mean(above < 10)),
            "rows": float(len(y)),
            "positives": float(y.sum()),
        },
    )


def fit_logistic(
    features: np.ndarray, labels: np.ndarray, names: list[str], l2: float = 1e-2, steps: int = 25
) -> LinearRanker:
    """Fit P(label=1) = sigmoid(x.w + b); return raw-feature weights."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-12] = 1.0  # constant features get weight 0 through the L2 term
    z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    theta = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2 * len(x))
    reg[-1] = 0.0  # no penalty on the bias
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ theta)))
        grad = z.T @ (p - y) + reg * theta
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg) + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    w_std, b_std = theta[:-1], theta[-1]
    weights = w_std / std  # x.w + b == z_std.w_std + b_std
    bias = b_std - float((mean / std) @ w_std)
    scores = x @ weights + bias
    return LinearRanker(
        feature_names=list(names),
        weights=weights.astype(np.float32),
        bias=float(bias),
        metrics={"auc": auc(scores, y), "rows": float(len(y)), "positives": float(y.sum())},
    )


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum formula (ties get average ranks)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
