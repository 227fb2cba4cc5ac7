"""Baseline recommenders printed beside every model: popularity and EASE.

All share one small interface (`Recommender`) over one input (`InteractionMatrix`, a CSR
of deduplicated positive train interactions over the whole catalogue). `recommend` returns
item columns and never a user's train item.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

# Upper bound on elements of one dense users x items block (float64: 128 MB).
_BLOCK_ELEMENTS = 16_000_000


@dataclass(frozen=True)
class InteractionMatrix:
    """Positive train interactions as CSR (rows = users, columns = the whole catalogue).

    user_ids: row -> user id (every user in the train frame, sorted; some rows may be empty).
    item_ids: column -> item id (the whole catalogue, including items never seen in train).
    indptr, indices: int64 CSR; each row's columns sorted and unique.
    values: float32, 1.0 per stored entry.
    """

    user_ids: list[str]
    item_ids: list[str]
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @classmethod
    def from_frame(
        cls, train_df: pd.DataFrame, positive_mask: np.ndarray, item_ids: Iterable[str]
    ) -> InteractionMatrix:
        """Build from a train frame, its row-aligned positive mask and the catalogue's ids."""
        item_ids = [str(i) for i in item_ids]
        catalogue = pd.Index(item_ids)
        if not catalogue.is_unique:
            raise ValueError("item_ids: contains duplicates")
        positive_mask = np.asarray(positive_mask)
        if positive_mask.dtype != np.bool_ or positive_mask.shape != (len(train_df),):
            raise ValueError(
                f"positive_mask: expected bool[{len(train_df)}], "
                f"got {positive_mask.dtype}{list(positive_mask.shape)}"
            )
        user_codes, user_uniques = pd.factorize(train_df["user_id"].astype(str), sort=True)
        item_cols = catalogue.get_indexer(train_df["item_id"].astype(str))
        unknown = positive_mask & (item_cols < 0)
        if unknown.any():
            sample = train_df["item_id"].to_numpy()[unknown][:5].tolist()
            raise ValueError(
                f"train_df.item_id: {int(unknown.sum())} not in item_ids, e.g. {sample}"
            )
        n_items = len(item_ids)
        keys = np.unique(
            user_codes[positive_mask].astype(np.int64) * n_items + item_cols[positive_mask]
        )  # sorted by (row, column) and deduplicated
        rows, indices = np.divmod(keys, n_items) if n_items else (keys, keys)
        indptr = np.zeros(len(user_uniques) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(user_uniques)), out=indptr[1:])
        return cls(
            user_ids=[str(u) for u in user_uniques],
            item_ids=item_ids,
            indptr=indptr,
            indices=indices.astype(np.int64),
            values=np.ones(len(indices), dtype=np.float32),
        )

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def row(self, u: int) -> np.ndarray:
        """Item columns of user row u (sorted)."""
        return self.indices[self.indptr[u] : self.indptr[u + 1]]

    def item_counts(self) -> np.ndarray:
        """int64[n_items]: users with a positive on each item."""
        return np.bincount(self.indices, minlength=self.n_items)

    def dense_rows(self, user_rows: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """X[user_rows] as a dense array."""
        dense = np.zeros((len(user_rows), self.n_items), dtype=dtype)
        batch, cols = self._entries(user_rows)
        dense[batch, cols] = 1.0
        return dense

    def _entries(self, user_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in user_rows, item column) of every stored entry of those rows."""
        starts, ends = self.indptr[user_rows], self.indptr[np.asarray(user_rows) + 1]
        lengths = ends - starts
        batch = np.repeat(np.arange(len(user_rows)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return batch, self.indices[np.repeat(starts, lengths) + offsets]


class Recommender(Protocol):
    name: str

    def fit(self, train: InteractionMatrix) -> None: ...

    def recommend(self, user_rows: np.ndarray, k: int) -> np.ndarray:
        """int64[len(user_rows), min(k, n_items)] item columns, best first, never one of the
        user's train items; -1 pads a row whose user has fewer eligible items than that."""
        ...


def top_k_excluding(
    scores: np.ndarray, matrix: InteractionMatrix, user_rows: np.ndarray, k: int
) -> np.ndarray:
    """Top k columns of each scores row after removing the user's train items.

    scores: float[len(user_rows), n_items], modified in place (train items set to -inf).
    Ties are broken by lower column among the selected k; -1 fills slots left without an
    eligible item.
    """
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    n_items = scores.shape[1]
    k = min(k, n_items)
    batch, cols = matrix._entries(user_rows)
    scores[batch, cols] = -np.inf
    if k < n_items:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(n_items), scores.shape).copy()
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -top_scores), axis=1)
    top = np.take_along_axis(top, order, axis=1).astype(np.int64)
    top[np.take_along_axis(top_scores, order, axis=1) == -np.inf] = -1
    return top


class Popularity:
    """Items ranked by number of positive train interactions (ties: lower column first)."""

    name = "popularity"

    def __init__(self) -> None:
        self._matrix: InteractionMatrix | None = None
        self.order: np.ndarray | None = None

    def fit(self, train: InteractionMatrix) -> None:
        self._matrix = train
        self.order = np.argsort(-train.item_counts(), kind="stable")

    def with_history(self, history: InteractionMatrix) -> "Popularity":
        """The same global order, excluding the items of `history`'s users (e.g. the cold
        slice's first 3 items each) rather than their whole train rows."""
        if self.order is None:
            raise RuntimeError("Popularity.with_history called before fit")
        other = Popularity()
        other._matrix, other.order = history, self.order
        return other

    def recommend(self, user_rows: np.ndarray, k: int) -> np.ndarray:
        if self._matrix is None or self.order is None:
            raise RuntimeError("Popularity.recommend called before fit")
        if k < 1:
            raise ValueError(f"k: must be >= 1, got {k}")
        k = min(k, self._matrix.n_items)
        out = np.full((len(user_rows), k), -1, dtype=np.int64)
        for b, u in enumerate(user_rows):
            seen = self._matrix.row(u)
            # The first k + |seen| items of the global order always hold k eligible ones.
            head = self.order[: k + len(seen)]
            eligible = head[~np.isin(head, seen)][:k]
            out[b, : len(eligible)] = eligible
        return out


class EASE:
    """Embarrassingly Shallow Autoencoder (Steck 2019), closed form.

    G = X^T X + lambda I, P = G^-1, B = -P / diag(P) (column-wise), diag(B) = 0; scores = X B.
    Dense items x items, so meant for catalogues up to about 10k items.
    """

    name = "ease"

    def __init__(self, lambda_: float = 500.0) -> None:
        if lambda_ <= 0:
            raise ValueError(f"lambda_: must be > 0, got {lambda_}")
        self.lambda_ = lambda_
        self._matrix: InteractionMatrix | None = None
        self.B: np.ndarray | None = None

    def _batch_size(self, n_items: int) -> int:
        return max(1, _BLOCK_ELEMENTS // max(1, n_items))

    def fit(self, train: InteractionMatrix) -> None:
        n = train.n_items
        gram = np.zeros((n, n), dtype=np.float64)
        step = self._batch_size(n)
        for start in range(0, train.n_users, step):
            X = train.dense_rows(np.arange(start, min(start + step, train.n_users)))
            gram += X.T @ X  # G = X^T X, accumulated over blocks of users
        gram[np.diag_indices(n)] += self.lambda_
        P = np.linalg.inv(gram)
        B = -P / np.diag(P)[np.newaxis, :]  # B_ij = -P_ij / P_jj
        B[np.diag_indices(n)] = 0.0
        self.B = B.astype(np.float32)
        self._matrix = train

    def recommend(self, user_rows: np.ndarray, k: int) -> np.ndarray:
        if self._matrix is None or self.B is None:
            raise RuntimeError("EASE.recommend called before fit")
        if k < 1:
            raise ValueError(f"k: must be >= 1, got {k}")
        user_rows = np.asarray(user_rows, dtype=np.int64)
        step = self._batch_size(self._matrix.n_items)
        parts = [np.empty((0, min(k, self._matrix.n_items)), dtype=np.int64)]
        for start in range(0, len(user_rows), step):
            rows = user_rows[start : start + step]
            scores = self._matrix.dense_rows(rows, np.float32) @ self.B  # scores = X_u B
            parts.append(top_k_excluding(scores, self._matrix, rows, k))
        return np.concatenate(parts)


def recommend_ids(
    model: Recommender, matrix: InteractionMatrix, user_ids: Iterable[str], k: int
) -> dict[str, list[str]]:
    """user id -> top-k item ids from `model`, which must be fitted on `matrix`.

    Users not in the matrix, or with no train positives, get the popularity list, as a
    cold-start user would. Padding (-1) is dropped, so a list may be shorter than k.
    """
    fitted = getattr(model, "_matrix", matrix)
    if fitted is not matrix:  # its rows are other users: it would exclude the wrong histories
        raise ValueError("matrix: not the matrix the model was fitted on (use with_history for new rows)")
    row_of = {u: r for r, u in enumerate(matrix.user_ids)}
    user_ids = [str(u) for u in user_ids]
    known = [u for u in user_ids if u in row_of and len(matrix.row(row_of[u]))]
    popular = np.argsort(-matrix.item_counts(), kind="stable")[:k]
    popular_ids = [matrix.item_ids[c] for c in popular]
    result = {u: list(popular_ids) for u in user_ids}
    if known:
        columns = model.recommend(np.array([row_of[u] for u in known], dtype=np.int64), k)
        for u, cols in zip(known, columns, strict=True):
            result[u] = [matrix.item_ids[c] for c in cols if c >= 0]
    return result
