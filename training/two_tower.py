"""Two-tower retrieval model in PyTorch, exported to ONNX for the candidate tier.

The only module of the project that imports torch. Inputs and their encoding are defined
once in recsys.features (the candidate tier encodes requests with the same code).

User tower: mean of learned history-item embeddings (masked) + one embedding per
categorical field (demographics, region, time context) [+ a linear map of the user's
search profile, when the data has searches] -> MLP -> L2-normalised vector.
Item tower: id embedding (id 0 = unseen item) + linear map of genre/tag multi-hot -> MLP ->
L2-normalised vector. Score = cosine / temperature.

Training examples are (the user's positives before time t, most recent first; the positive
at t; one of the user's explicit negatives). The user tower sees the plain mean of the
history embeddings and a recency-weighted mean (half-life in positions). Loss: softmax cross-entropy of the positive against the other positives in the batch
plus a shared set of uniformly sampled negatives (mixed negative sampling), so every
example sees in-batch (popularity-skewed) and uniform negatives, with log-Q correction of
each column by its expected count in the batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from recsys.features import USER_FIELDS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TwoTowerParams:
    dim: int = 32
    hidden: int = 64
    field_dim: int = 8
    epochs: int = 8
    batch_size: int = 512
    learning_rate: float = 3e-3
    weight_decay: float = 1e-6
    temperature: float = 0.1
    uniform_negatives: int = 256
    id_dropout: float = 0.15  # chance an item id is hidden so the tower learns features alone
    logq_correction: bool = True  # subtract log(expected count in the batch) per column
    recency_half_life: float = 5.0  # history positions; the user tower also sees a recency mean
    explicit_negatives: bool = True  # each row's softmax also holds one of the user's dislikes
    seed: int = 0


class UserTower(nn.Module):
    def __init__(self, n_items: int, cardinalities: list[int], p: TwoTowerParams, history_length: int,
                 search_dim: int = 0) -> None:
        super().__init__()
        self.history = nn.Embedding(n_items + 1, p.dim, padding_idx=0)
        self.fields = nn.ModuleList(nn.Embedding(c, p.field_dim) for c in cardinalities)
        self.search_dim = search_dim
        # the search profile (zeros = no searches) mapped to the item-embedding width
        self.search = nn.Linear(search_dim, p.dim) if search_dim else None
        self.mlp = nn.Sequential(
            nn.Linear((3 if search_dim else 2) * p.dim + p.field_dim * len(cardinalities), p.hidden),
            nn.ReLU(),
            nn.Linear(p.hidden, p.dim),
        )
        # position j (0 = most recent) weighs 0.5 ** (j / half-life) in the recency mean
        self.register_buffer("recency", 0.5 ** (torch.arange(history_length, dtype=torch.float32) / p.recency_half_life))

    def forward(
        self, hist_items: torch.Tensor, hist_mask: torch.Tensor, user_cats: torch.Tensor,
        search_profile: torch.Tensor | None = None,
    ) -> torch.Tensor:
        e = self.history(hist_items)
        # mean = sum_j m_j e_j / max(sum_j m_j, 1); recent = the same with weights m_j r_j
        mean = (e * hist_mask.unsqueeze(-1)).sum(1) / hist_mask.sum(1, keepdim=True).clamp(min=1.0)
        w = hist_mask * self.recency[: hist_mask.shape[1]]
        recent = (e * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp(min=1e-6)
        cats = [emb(user_cats[:, j]) for j, emb in enumerate(self.fields)]
        parts = [mean, recent, *cats]
        if self.search is not None:
            parts.append(self.search(search_profile))
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


class ItemTower(nn.Module):
    def __init__(self, n_items: int, feature_dim: int, p: TwoTowerParams) -> None:
        super().__init__()
        self.ids = nn.Embedding(n_items + 1, p.dim)
        self.features = nn.Linear(max(feature_dim, 1), p.dim)
        self.feature_dim = feature_dim
        self.mlp = nn.Sequential(nn.Linear(2 * p.dim, p.hidden), nn.ReLU(), nn.Linear(p.hidden, p.dim))

    def forward(self, item_ids: torch.Tensor, item_feats: torch.Tensor) -> torch.Tensor:
        if self.feature_dim == 0:
            item_feats = torch.zeros(item_ids.shape[0], 1)
        x = torch.cat([self.ids(item_ids), self.features(item_feats)], dim=1)
        return F.normalize(self.mlp(x), dim=-1)


@dataclass
class TrainingExamples:
    """Per positive: the user's earlier positives (encoded) and the positive item."""

    hist_items: np.ndarray  # int64[N, H] (item index + 1, 0 = pad)
    hist_mask: np.ndarray  # float32[N, H]
    user_cats: np.ndarray  # int64[N, C]
    target: np.ndarray  # int64[N] item index (0-based)
    negative: np.ndarray | None = None  # int64[N] an explicit negative of the user, -1 = none
    search: np.ndarray | None = None  # float32[N, S] search profile before the positive; None = no input


@dataclass
class TrainedTowers:
    user: UserTower
    item: ItemTower
    params: TwoTowerParams
    losses: list[float]


def train_two_tower(
    examples: TrainingExamples,
    item_features: np.ndarray,
    cardinalities: list[int],
    params: TwoTowerParams,
) -> TrainedTowers:
    """Fit both towers; deterministic for params.seed on one machine."""
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))  # offline: use every core
    n_items = item_features.shape[0]
    search_dim = 0 if examples.search is None else int(examples.search.shape[1])
    user = UserTower(n_items, cardinalities, params, examples.hist_items.shape[1], search_dim)
    item = ItemTower(n_items, item_features.shape[1], params)
    opt = torch.optim.Adam(
        [*user.parameters(), *item.parameters()],
        lr=params.learning_rate,
        weight_decay=params.weight_decay,
    )
    feats = torch.from_numpy(np.ascontiguousarray(item_features, dtype=np.float32))
    negative = examples.negative if examples.negative is not None else np.full(len(examples.target), -1)
    tensors = [
        torch.from_numpy(examples.hist_items),
        torch.from_numpy(examples.hist_mask),
        torch.from_numpy(examples.user_cats),
        torch.from_numpy(examples.target),
        torch.from_numpy(np.asarray(negative, dtype=np.int64)),
        torch.from_numpy(np.ascontiguousarray(examples.search, dtype=np.float32)) if search_dim
        else torch.zeros(len(examples.target), 0),
    ]
    n = len(examples.target)
    # log-Q correction (Yi et al. 2019): a candidate column j appears in a batch of B
    # positives and U uniform negatives with expected count B * p_j + U / n_items, where p_j
    # is its share of training targets; without subtracting its log, popular items are
    # pushed down merely for being sampled as negatives often.
    share = np.bincount(examples.target, minlength=n_items) / max(n, 1)
    expected = params.batch_size * share + params.uniform_negatives / n_items
    log_q = torch.from_numpy(np.log(np.maximum(expected, 1e-12)).astype(np.float32))
    losses: list[float] = []
    for epoch in range(params.epochs):
        order = torch.from_numpy(rng.permutation(n))
        total, batches = 0.0, 0
        user.train()
        item.train()
        for start in range(0, n, params.batch_size):
            rows = order[start : start + params.batch_size]
            hist, mask, cats, target, neg, search = (t[rows] for t in tensors)
            negatives = torch.from_numpy(rng.integers(0, n_items, params.uniform_negatives))
            candidates = torch.cat([target, negatives])
            ids = candidates + 1
            drop = torch.from_numpy(rng.random(len(ids)) < params.id_dropout)
            ids = torch.where(drop, torch.zeros_like(ids), ids)
            u = user(hist, mask, cats, search if search_dim else None)
            v = item(ids, feats[candidates])
            logits = u @ v.T / params.temperature
            if params.logq_correction:
                logits = logits - log_q[candidates].unsqueeze(0)
            # The same item may stand in several columns (a repeated positive or a sampled
            # negative equal to the target): mask every column equal to the target except
            # the target's own, so the model is not pushed away from the right item.
            same = target.unsqueeze(1) == candidates.unsqueeze(0)
            own = torch.zeros_like(same)
            own[torch.arange(len(rows)), torch.arange(len(rows))] = True
            logits = logits.masked_fill(same & ~own, float("-inf"))
            if params.explicit_negatives and bool((neg >= 0).any()):
                # one extra column per row: the user's own explicit negative (a dislike or a
                # low rating) must score below the positive; -inf where the user has none
                has = neg >= 0
                safe = torch.where(has, neg, torch.zeros_like(neg))
                v_neg = item(safe + 1, feats[safe])
                extra = (u * v_neg).sum(-1) / params.temperature
                if params.logq_correction:
                    extra = extra - log_q[safe]
                extra = extra.masked_fill(~has | (safe == target), float("-inf"))
                logits = torch.cat([logits, extra.unsqueeze(1)], dim=1)
            loss = F.cross_entropy(logits, torch.arange(len(rows)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
        losses.append(total / max(batches, 1))
        log.info("two-tower epoch %d/%d loss %.4f", epoch + 1, params.epochs, losses[-1])
    user.eval()
    item.eval()
    return TrainedTowers(user=user, item=item, params=params, losses=losses)


def export_onnx(towers: TrainedTowers, item_features: np.ndarray, history_length: int, out_dir: Path) -> dict[str, float]:
    """Write user_tower.onnx and item_tower.onnx; return the max |torch - onnxruntime|
    per tower on a sample batch (the parity check; the caller fails above 1e-5)."""
    rng = np.random.default_rng(0)
    n_items = item_features.shape[0]
    b = 4
    hist = torch.from_numpy(rng.integers(0, n_items + 1, (b, history_length)))
    mask = torch.from_numpy((rng.random((b, history_length)) < 0.7).astype(np.float32))
    cards = [emb.num_embeddings for emb in towers.user.fields]
    cats = torch.from_numpy(np.stack([rng.integers(0, c, b) for c in cards], axis=1))
    search_dim = towers.user.search_dim
    search = torch.from_numpy(rng.standard_normal((b, search_dim)).astype(np.float32))
    user_args = (hist, mask, cats, search) if search_dim else (hist, mask, cats)
    user_names = ["hist_items", "hist_mask", "user_cats", "search_profile"][: len(user_args)]
    ids = torch.from_numpy(rng.integers(0, n_items + 1, b))
    feats = torch.from_numpy(np.ascontiguousarray(item_features[rng.integers(0, n_items, b)], dtype=np.float32))
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    user_path, item_path = out_dir / "user_tower.onnx", out_dir / "item_tower.onnx"
    with torch.no_grad():
        torch.onnx.export(
            towers.user,
            user_args,
            str(user_path),
            input_names=user_names,
            output_names=["user_embedding"],
            dynamic_shapes=tuple({0: batch} for _ in user_args),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        torch.onnx.export(
            towers.item,
            (ids, feats),
            str(item_path),
            input_names=["item_ids", "item_feats"],
            output_names=["item_embedding"],
            dynamic_shapes=({0: batch}, {0: batch}),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        want_user = towers.user(*user_args).numpy()
        want_item = towers.item(ids, feats).numpy()
    got_user = _session(user_path).run(None, {n: t.numpy() for n, t in zip(user_names, user_args, strict=True)})[0]
    got_item = _session(item_path).run(None, {"item_ids": ids.numpy(), "item_feats": feats.numpy()})[0]
    return {
        "user_tower_max_abs_diff": float(np.abs(got_user - want_user).max()),
        "item_tower_max_abs_diff": float(np.abs(got_item - want_item).max()),
    }


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def params_json(params: TwoTowerParams) -> dict[str, object]:
    return {**asdict(params), "user_fields": list(USER_FIELDS)}
