"""Per-user temporal train/test splits for offline evaluation.

The rule (docs/ARCHITECTURE.md, "Evaluation protocol"): for every user with at least two
positives, the last ceil(test_fraction * n_pos) positives by time are held out. The user's
training rows are everything strictly before the first held-out positive, so no later row
(negatives and impressions included) leaks into training. A held-out item the user also has
among their training positives is dropped, since the protocol excludes train items from
recommendation and such an item could never be hit.

`positive` is a boolean mask aligned row-for-row with the frame it accompanies
(`training.data.positive_mask(frame)`); it is passed in rather than recomputed so the split
does not depend on how positives are defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Guards ceil() against float noise: 0.7 * 10 is 7.000000000000001 in binary floating point.
_CEIL_EPS = 1e-9


@dataclass(frozen=True)
class Split:
    """A train frame plus held-out positives.

    train: every row usable for training (original index labels kept, original row order).
    test: user_id -> held-out positive item ids, earliest first, no duplicates, none of
        them among that user's training positives. Users without held-out items are absent.
    train_positive: the positive mask restricted to `train`, aligned row-for-row with it.
    """

    train: pd.DataFrame
    test: dict[str, list[str]]
    train_positive: np.ndarray


def _check_mask(frame: pd.DataFrame, positive: np.ndarray) -> np.ndarray:
    mask = np.asarray(positive)
    if mask.dtype != np.bool_:
        raise TypeError(f"positive: expected a boolean mask, got dtype {mask.dtype}")
    if mask.shape != (len(frame),):
        raise ValueError(f"positive: expected shape ({len(frame)},), got {mask.shape}")
    missing = {"user_id", "item_id", "timestamp"} - set(frame.columns)
    if missing:
        raise ValueError(f"interactions: missing columns {sorted(missing)}")
    return mask


def temporal_split(
    interactions: pd.DataFrame, positive: np.ndarray, test_fraction: float = 0.2
) -> Split:
    """Hold out each user's latest positives.

    For a user with n_pos >= 2 positives (sorted by timestamp, ties kept in row order), the
    last max(1, ceil(test_fraction * n_pos)) are test, capped at n_pos - 1 so at least one
    positive precedes them. The user's train rows are those with timestamp strictly below
    the first test positive's timestamp (so positives tied with it leave train too). Test
    items also among the user's train positives are dropped; a user left with none is not
    in `test` (their train rows stay cut at the same timestamp, so train never depends on
    that filter). Users with fewer than two positives keep all their rows in train.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: must be in (0, 1), got {test_fraction}")
    positive = _check_mask(interactions, positive)
    user_codes, user_uniques = pd.factorize(interactions["user_id"], sort=False)
    item_codes, item_uniques = pd.factorize(interactions["item_id"], sort=False)
    timestamps = interactions["timestamp"].to_numpy()
    n_users = len(user_uniques)

    # Positive rows ordered by (user, time, original position): each user's block is contiguous.
    pos_rows = np.flatnonzero(positive)
    order = np.lexsort((pos_rows, timestamps[pos_rows], user_codes[pos_rows]))
    pos_rows = pos_rows[order]
    pos_users = user_codes[pos_rows]

    n_pos = np.bincount(pos_users, minlength=n_users)
    n_test = np.maximum(1, np.ceil(test_fraction * n_pos - _CEIL_EPS).astype(np.int64))
    n_test = np.where(n_pos >= 2, np.minimum(n_test, n_pos - 1), 0)

    block_start = np.concatenate(([0], np.cumsum(n_pos)[:-1]))
    rank_in_user = np.arange(len(pos_rows)) - block_start[pos_users]
    is_test = rank_in_user >= (n_pos - n_test)[pos_users]

    # Cutoff = timestamp of each held-out user's first test positive.
    has_test = n_test > 0
    first_test = block_start + n_pos - n_test
    cutoff = np.zeros(n_users, dtype=timestamps.dtype)
    cutoff[has_test] = timestamps[pos_rows[first_test[has_test]]]
    train_mask = ~has_test[user_codes] | (timestamps < cutoff[user_codes])

    # Drop test items the user also has as a train positive, then duplicates within test.
    n_items = len(item_uniques)
    pair_key = user_codes.astype(np.int64) * n_items + item_codes
    train_pos_keys = pair_key[train_mask & positive]
    test_rows = pos_rows[is_test]
    test_rows = test_rows[~np.isin(pair_key[test_rows], train_pos_keys)]
    _, first_seen = np.unique(pair_key[test_rows], return_index=True)
    test_rows = test_rows[np.sort(first_seen)]

    test: dict[str, list[str]] = {}
    for row in test_rows:  # already grouped by user and ordered by time
        test.setdefault(str(user_uniques[user_codes[row]]), []).append(
            str(item_uniques[item_codes[row]])
        )
    train = interactions.iloc[np.flatnonzero(train_mask)]
    return Split(train=train, test=test, train_positive=positive[train_mask])


def validation_split(train: pd.DataFrame, positive: np.ndarray, fraction: float = 0.2) -> Split:
    """Carve a validation set out of a training frame with the same rule as the test split.

    Use it for tuning and ranker fitting; the test set never enters. `positive` is aligned
    with `train` (e.g. `split.train_positive`).
    """
    return temporal_split(train, positive, test_fraction=fraction)


def cold_start_slice(
    train: pd.DataFrame,
    split: Split,
    n_items: int = 3,
    positive: np.ndarray | None = None,
) -> pd.DataFrame:
    """A copy of `train` in which every test user keeps only their first `n_items` positive
    rows (by time, ties in row order) and nothing else; other users keep all their rows.

    `positive` is aligned with `train`; when omitted, `split.train_positive` is used, which
    requires `train` to be `split.train` (same length). The slice's own positive mask is
    `training.data.positive_mask(result)`, or `positive` indexed by the kept rows.
    """
    if n_items < 1:
        raise ValueError(f"n_items: must be >= 1, got {n_items}")
    if positive is None:
        if len(train) != len(split.train):
            raise ValueError("positive: required when train is not split.train")
        positive = split.train_positive
    positive = _check_mask(train, positive)

    users = train["user_id"].astype(str)
    is_test_user = users.isin(split.test.keys()).to_numpy()  # hashed; np.isin on objects is slow
    users = users.to_numpy()
    candidates = np.flatnonzero(is_test_user & positive)
    timestamps = train["timestamp"].to_numpy()
    user_codes, _ = pd.factorize(users[candidates])
    order = np.lexsort((candidates, timestamps[candidates], user_codes))
    candidates, user_codes = candidates[order], user_codes[order]
    # Rank of each candidate row within its user's block (blocks are contiguous after sort).
    block_start = np.flatnonzero(np.r_[True, user_codes[1:] != user_codes[:-1]])
    block_len = np.diff(np.r_[block_start, len(candidates)])
    rank = np.arange(len(candidates)) - np.repeat(block_start, block_len)

    keep = ~is_test_user
    keep[candidates[rank < n_items]] = True
    return train.iloc[np.flatnonzero(keep)].copy()
