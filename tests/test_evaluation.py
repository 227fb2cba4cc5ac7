"""Evaluation protocol: metrics against hand-computed values, the temporal split's
invariants, and the baselines against a direct NumPy implementation and known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from evaluation.baselines import (
    EASE,
    InteractionMatrix,
    Popularity,
    recommend_ids,
    top_k_excluding,
)
from evaluation.metrics import (
    average_precision_at_k,
    evaluate,
    format_table,
    intra_list_diversity,
    ndcg_at_k,
    novelty,
    precision_at_k,
    recall_at_k,
    train_popularity,
)
from evaluation.split import cold_start_slice, temporal_split, validation_split

TOL = 1e-9


def positives(frame: pd.DataFrame) -> np.ndarray:
    """Stand-in for training.data.positive_mask: rating >= 4, or like/click/watch."""
    event = frame["event_type"].to_numpy()
    value = frame["value"].to_numpy()
    return ((event == "rating") & (value >= 4.0)) | np.isin(event, ["like", "click", "watch"])


def frame(rows: list[tuple[str, str, int, str, float]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value"])
    return df.sort_values("timestamp", kind="stable").reset_index(drop=True)


def random_interactions(seed: int, n_users: int = 40, n_items: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 1500
    events = rng.choice(["rating", "like", "click", "dislike", "impression"], size=n)
    rows = [
        (f"u{rng.integers(n_users)}", f"i{rng.integers(n_items)}", int(rng.integers(0, 200)),
         str(e), float(rng.integers(1, 6)) if e == "rating" else 1.0)
        for e in events
    ]
    # one user with a single positive (then a later negative), one with none
    rows += [("solo", "i0", 50, "like", 1.0), ("solo", "i1", 150, "dislike", 1.0),
             ("cold", "i2", 60, "rating", 2.0), ("cold", "i3", 70, "impression", 1.0)]
    return frame(rows)


# ---------------------------------------------------------------- metrics, hand-computed

RECS = ["a", "b", "c", "d"]
HELD = ["b", "d", "e"]


def test_accuracy_metrics_match_hand_computation_at_k4() -> None:
    # hits at ranks 2 and 4 out of |test| = 3
    assert precision_at_k(RECS, HELD, 4) == pytest.approx(0.5, abs=TOL)
    assert recall_at_k(RECS, HELD, 4) == pytest.approx(2 / 3, abs=TOL)
    assert average_precision_at_k(RECS, HELD, 4) == pytest.approx((1 / 2 + 2 / 4) / 3, abs=TOL)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(RECS, HELD, 4) == pytest.approx(dcg / idcg, abs=TOL)
    assert ndcg_at_k(RECS, HELD, 4) == pytest.approx(0.4981893, abs=1e-6)


def test_accuracy_metrics_truncate_at_k_and_ideal_uses_min_k_test() -> None:
    # top 2 = [a, b]: one hit at rank 2; ideal is min(2, 3) = 2 hits
    assert precision_at_k(RECS, HELD, 2) == pytest.approx(0.5, abs=TOL)
    assert recall_at_k(RECS, HELD, 2) == pytest.approx(1 / 3, abs=TOL)
    assert average_precision_at_k(RECS, HELD, 2) == pytest.approx((1 / 2) / 2, abs=TOL)
    assert ndcg_at_k(RECS, HELD, 2) == pytest.approx(
        (1 / math.log2(3)) / (1 + 1 / math.log2(3)), abs=TOL
    )
    # a perfect list scores 1 even when |test| > k
    assert ndcg_at_k(["b", "d"], HELD, 2) == pytest.approx(1.0, abs=TOL)
    assert average_precision_at_k(["b", "d"], HELD, 2) == pytest.approx(1.0, abs=TOL)


def test_repeated_item_is_one_hit() -> None:
    assert precision_at_k(["b", "b", "x"], ["b"], 3) == pytest.approx(1 / 3, abs=TOL)
    assert average_precision_at_k(["b", "b"], ["b"], 2) == pytest.approx(1.0, abs=TOL)


GENRES = {"a": {"x", "y"}, "b": {"x"}, "c": set(), "d": set()}
POPULARITY = {"a": 5, "b": 3}  # 8 positive train rows, catalogue of 10 -> denominator 18


def test_diversity_uses_genre_jaccard_and_empty_pairs_count_zero() -> None:
    # pairs of [a, b, c, d]: J(a,b) = 1/2, all five others 0 (c,d both genre-less)
    assert intra_list_diversity(RECS, GENRES) == pytest.approx(1 - (1 / 2) / 6, abs=TOL)
    assert intra_list_diversity(["a", "a"], GENRES) == pytest.approx(0.0, abs=TOL)
    assert math.isnan(intra_list_diversity(["a"], GENRES))


def test_novelty_uses_add_one_smoothed_share() -> None:
    expected = (math.log2(18 / 6) + math.log2(18 / 4) + 2 * math.log2(18 / 1)) / 4
    assert novelty(RECS, POPULARITY, 10) == pytest.approx(expected, abs=TOL)


def test_evaluate_averages_over_test_users_and_missing_user_scores_zero() -> None:
    test = {"u1": HELD, "u2": ["a"], "u3": ["x"]}
    recs = {"u1": RECS, "u2": ["a", "c"], "ignored": ["z"]}  # u3 has no list
    got = evaluate(recs, test, 4, catalogue_size=10, item_genres=GENRES,
                   train_popularity=POPULARITY)
    ndcg_u1 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 0.5)
    nov_u1 = (math.log2(3) + math.log2(4.5) + 2 * math.log2(18)) / 4
    nov_u2 = (math.log2(3) + math.log2(18)) / 2
    expected = {
        "precision": (0.5 + 0.25 + 0) / 3,
        "recall": (2 / 3 + 1 + 0) / 3,
        "map": (1 / 3 + 1 + 0) / 3,
        "ndcg": (ndcg_u1 + 1 + 0) / 3,
        "coverage": 4 / 10,  # a, b, c, d; "z" belongs to a user outside test
        "diversity": (11 / 12 + 1) / 2,  # u3's empty list is skipped
        "novelty": (nov_u1 + nov_u2) / 2,
        "users": 3.0,
    }
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=TOL), key


def test_train_popularity_counts_positive_rows() -> None:
    df = frame([("u", "a", 1, "like", 1.0), ("v", "a", 2, "rating", 5.0),
                ("v", "b", 3, "rating", 2.0), ("w", "b", 4, "click", 1.0)])
    assert train_popularity(df, positives(df)) == {"a": 2, "b": 1}


def test_format_table_is_fixed_width_with_all_columns() -> None:
    metrics = {"precision": 0.12345, "recall": 0.5, "map": 0.1, "ndcg": 0.2,
               "coverage": 0.3, "diversity": 0.4, "novelty": 9.87654, "users": 3.0}
    table = format_table([("popularity", {10: metrics, 20: metrics}), ("ease", {10: metrics})])
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1, table
    for k in (10, 20):
        for label in ("P", "R", "mAP", "nDCG", "Cov", "ILD", "Nov"):
            assert f"{label}@{k}" in lines[0]
    assert lines[2].startswith("popularity") and "0.1235" in lines[2] and "9.877" in lines[2]
    assert lines[3].startswith("ease") and lines[3].rstrip().endswith("-")


# ---------------------------------------------------------------- temporal split

def hand_built_interactions() -> pd.DataFrame:
    return frame([
        # A: positives i1 i2 i4 i5 i6, negative i3 inside, dislike i7 after the last positive
        ("A", "i1", 1, "rating", 5.0), ("A", "i2", 2, "rating", 4.0),
        ("A", "i3", 3, "rating", 2.0), ("A", "i4", 4, "like", 1.0),
        ("A", "i5", 5, "rating", 5.0), ("A", "i6", 6, "click", 1.0),
        ("A", "i7", 7, "dislike", 1.0),
        # B: a single positive, then a negative: no test, every row stays in train
        ("B", "i1", 1, "rating", 5.0), ("B", "i2", 9, "impression", 1.0),
        # C: the held-out positive re-watches a train item -> dropped, C leaves test
        ("C", "j1", 1, "watch", 1.0), ("C", "j2", 2, "watch", 1.0), ("C", "j1", 3, "watch", 1.0),
        # D: tied timestamps; the later row is test and its tie leaves train
        ("D", "k1", 1, "like", 1.0), ("D", "k2", 5, "like", 1.0), ("D", "k3", 5, "like", 1.0),
    ])


def rows_of(df: pd.DataFrame, user: str) -> list[tuple[str, int]]:
    sub = df[df["user_id"] == user]
    return list(zip(sub["item_id"], sub["timestamp"], strict=True))


def test_split_on_hand_built_data() -> None:
    df = hand_built_interactions()
    split = temporal_split(df, positives(df), test_fraction=0.2)
    assert split.test == {"A": ["i6"], "D": ["k3"]}
    assert rows_of(split.train, "A") == [("i1", 1), ("i2", 2), ("i3", 3), ("i4", 4), ("i5", 5)]
    assert rows_of(split.train, "B") == [("i1", 1), ("i2", 9)]
    assert rows_of(split.train, "C") == [("j1", 1), ("j2", 2)]
    assert rows_of(split.train, "D") == [("k1", 1)]
    np.testing.assert_array_equal(split.train_positive, positives(split.train))


def test_split_holds_out_ceil_fraction_of_positives() -> None:
    df = hand_built_interactions()
    split = temporal_split(df, positives(df), test_fraction=0.4)  # ceil(0.4 * 5) = 2 for A
    assert split.test["A"] == ["i5", "i6"]
    assert rows_of(split.train, "A") == [("i1", 1), ("i2", 2), ("i3", 3), ("i4", 4)]
    hundred = frame([("E", f"e{t}", t, "like", 1.0) for t in range(100)])
    # 0.07 * 100 is 7.000000000000001 in floating point; still 7 held out, not 8
    assert len(temporal_split(hundred, positives(hundred), test_fraction=0.07).test["E"]) == 7
    two = frame([("F", "f0", 0, "like", 1.0), ("F", "f1", 1, "like", 1.0)])
    # ceil(0.9 * 2) = 2 is capped at n_pos - 1 so one positive stays in train
    capped = temporal_split(two, positives(two), test_fraction=0.9)
    assert capped.test == {"F": ["f1"]} and rows_of(capped.train, "F") == [("f0", 0)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_invariants_on_random_data(seed: int) -> None:
    df = random_interactions(seed)
    pos = positives(df)
    split = temporal_split(df, pos, test_fraction=0.2)
    assert split.test, "the random data should produce test users"
    n_pos = df[pos].groupby("user_id").size()
    for user, n in n_pos.items():
        if n < 2:
            assert user not in split.test, f"{user} has {n} positive(s) but has test items"
    for user, items in split.test.items():
        user_pos = df[pos & (df["user_id"] == user)]  # already in (time, row) order
        n_test = max(1, math.ceil(0.2 * len(user_pos) - 1e-9))
        held = user_pos.iloc[len(user_pos) - n_test:]
        assert items, user
        assert set(items) <= set(held["item_id"]), f"{user}: test must be the last positives"
        assert len(items) == len(set(items)), f"{user}: duplicate test items"
        cutoff = held["timestamp"].iloc[0]
        user_train = split.train[split.train["user_id"] == user]
        assert (user_train["timestamp"] < cutoff).all(), f"{user}: train row at/after {cutoff}"
        assert len(user_train) == int((df[df["user_id"] == user]["timestamp"] < cutoff).sum())
        train_pos_items = set(user_train["item_id"][positives(user_train)])
        assert not set(items) & train_pos_items, f"{user}: test item also a train positive"
    few = list(n_pos.index[n_pos < 2]) + list(set(df["user_id"]) - set(n_pos.index))
    assert {"solo", "cold"} <= set(few)
    assert len(split.train[split.train["user_id"].isin(few)]) == int(df["user_id"].isin(few).sum())
    np.testing.assert_array_equal(split.train_positive, positives(split.train))


def test_validation_split_stays_inside_train() -> None:
    df = random_interactions(3)
    split = temporal_split(df, positives(df))
    val = validation_split(split.train, split.train_positive, 0.2)
    assert val.test
    assert set(val.train.index) <= set(split.train.index)
    for user, items in val.test.items():
        train_pos = split.train[split.train_positive & (split.train["user_id"] == user)]
        assert set(items) <= set(train_pos["item_id"])
        fit_rows = val.train[val.train["user_id"] == user]
        first_val = train_pos[train_pos["item_id"].isin(items)]["timestamp"].min()
        assert (fit_rows["timestamp"] < first_val).all()


def test_cold_start_slice_keeps_first_three_train_positives_of_test_users() -> None:
    df = frame(
        [("A", f"a{t}", t, "like", 1.0) for t in range(6)]
        + [("A", "neg", 2, "dislike", 1.0), ("A", "late", 20, "like", 1.0)]
        + [("B", "b1", 3, "like", 1.0), ("B", "b2", 4, "impression", 1.0)]
    )
    split = temporal_split(df, positives(df))  # A: 7 positives, last 2 held out
    assert split.test == {"A": ["a5", "late"]}
    n_train = len(split.train)
    sliced = cold_start_slice(split.train, split)
    assert rows_of(sliced, "A") == [("a0", 0), ("a1", 1), ("a2", 2)]
    assert rows_of(sliced, "B") == [("b1", 3), ("b2", 4)]
    assert len(split.train) == n_train, "cold_start_slice must not modify train"


# ---------------------------------------------------------------- baselines

def matrix_from_sets(user_items: list[set[int]], n_items: int) -> InteractionMatrix:
    rows = [(f"u{u:03d}", f"i{c:03d}", 1, "like", 1.0)
            for u, items in enumerate(user_items) for c in sorted(items)]
    df = frame(rows)
    return InteractionMatrix.from_frame(df, positives(df), [f"i{c:03d}" for c in range(n_items)])


def random_sets(seed: int, n_users: int = 60, n_items: int = 25) -> list[set[int]]:
    rng = np.random.default_rng(seed)
    return [set(rng.choice(n_items, size=rng.integers(0, 8), replace=False).tolist())
            for _ in range(n_users)]


def test_interaction_matrix_dedupes_positives_over_whole_catalogue() -> None:
    df = frame([("u", "b", 1, "like", 1.0), ("u", "b", 2, "click", 1.0),
                ("u", "a", 3, "rating", 2.0), ("v", "a", 4, "rating", 5.0)])
    m = InteractionMatrix.from_frame(df, positives(df), ["a", "b", "never_seen"])
    assert m.user_ids == ["u", "v"] and m.n_items == 3
    np.testing.assert_array_equal(m.row(0), [1])  # b once; the rating-2 "a" is not positive
    np.testing.assert_array_equal(m.row(1), [0])
    assert m.indptr.dtype == np.int64 and m.indices.dtype == np.int64
    assert m.values.dtype == np.float32 and (m.values == 1.0).all()
    with pytest.raises(ValueError, match="item_id"):
        InteractionMatrix.from_frame(df, positives(df), ["b"])


def test_ease_matches_direct_numpy_formula() -> None:
    lam = 7.0
    m = matrix_from_sets(random_sets(4), 25)
    X = m.dense_rows(np.arange(m.n_users))
    G = X.T @ X + lam * np.eye(m.n_items)
    P = np.linalg.inv(G)
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    model = EASE(lambda_=lam)
    model.fit(m)
    np.testing.assert_allclose(model.B, B, atol=1e-5, err_msg="EASE B vs NumPy at 1e-5")

    scores = X @ B
    scores[X > 0] = -np.inf
    users = np.arange(m.n_users)
    recs = model.recommend(users, 5)
    expected_top = -np.sort(-scores, axis=1)[:, :5]
    np.testing.assert_allclose(np.take_along_axis(scores, recs, axis=1), expected_top,
                               atol=1e-5, err_msg="EASE top-5 scores vs NumPy at 1e-5")


def test_ease_recommends_co_occurring_item_first() -> None:
    # items 0 and 1 always together, 2 and 3 together; 4 and 5 are more popular but alone
    sets = [{0, 1}] * 20 + [{2, 3}] * 20 + [{4}] * 40 + [{5}] * 30 + [{0}, {2}]
    m = matrix_from_sets(sets, 6)
    model = EASE(lambda_=10.0)
    model.fit(m)
    recs = model.recommend(np.array([len(sets) - 2, len(sets) - 1]), 3)
    assert recs[0, 0] == 1, f"user with item 0 should get item 1 first, got {recs[0]}"
    assert recs[1, 0] == 3, f"user with item 2 should get item 3 first, got {recs[1]}"


def test_popularity_ranks_by_count_with_ties_by_column() -> None:
    # counts: item0 3, item1 1, item2 3, item3 0, item4 2
    sets = [{0, 2, 4}, {0, 2}, {0, 2, 4, 1}, {0}]
    m = matrix_from_sets(sets, 5)
    model = Popularity()
    model.fit(m)
    np.testing.assert_array_equal(model.order, [0, 2, 4, 1, 3])
    np.testing.assert_array_equal(model.recommend(np.array([3]), 5), [[2, 4, 1, 3, -1]])
    np.testing.assert_array_equal(model.recommend(np.array([1]), 2), [[4, 1]])


@pytest.mark.parametrize("make", [Popularity, lambda: EASE(lambda_=3.0)], ids=["pop", "ease"])
class TestRecommenderContract:
    """Every baseline: right shape and dtype, no duplicates, never a train item."""

    @pytest.mark.parametrize("k", [1, 10, 25, 40])
    def test_never_recommends_train_items(self, make, k: int) -> None:
        sets = random_sets(5)
        m = matrix_from_sets(sets, 25)
        model = make()
        model.fit(m)
        users = np.arange(m.n_users)[::-1].copy()
        recs = model.recommend(users, k)
        assert recs.shape == (len(users), min(k, 25)) and recs.dtype == np.int64
        for u, row in zip(users, recs, strict=True):
            train = set(m.row(u).tolist())
            real = row[row >= 0]
            assert not set(real.tolist()) & train, f"user {u} got train items"
            assert len(set(real.tolist())) == len(real), f"user {u} got duplicates"
            assert len(real) == min(k, 25 - len(train)), f"user {u}: eligible slots unfilled"
            assert (row[len(real):] == -1).all(), "padding must be trailing -1"

    def test_recommend_ids_maps_ids_and_falls_back_to_popularity(self, make) -> None:
        sets = random_sets(6, n_users=30, n_items=12)
        m = matrix_from_sets(sets, 12)
        model = make()
        model.fit(m)
        known = m.user_ids[:5]
        got = recommend_ids(model, m, known + ["stranger"], 4)
        popular = [m.item_ids[c] for c in np.argsort(-m.item_counts(), kind="stable")[:4]]
        assert got["stranger"] == popular
        for u in known:
            row = m.user_ids.index(u)
            train_ids = {m.item_ids[c] for c in m.row(row)}
            if not train_ids:
                assert got[u] == popular
                continue
            expected = [m.item_ids[c] for c in model.recommend(np.array([row]), 4)[0] if c >= 0]
            assert got[u] == expected
            assert not set(got[u]) & train_ids


def test_top_k_excluding_pads_when_user_has_too_few_eligible_items() -> None:
    m = matrix_from_sets([{0, 1, 2}], 4)
    scores = np.array([[9.0, 8.0, 7.0, 1.0]])
    np.testing.assert_array_equal(top_k_excluding(scores, m, np.array([0]), 3), [[3, -1, -1]])


def test_a_model_applied_to_rows_it_was_not_fitted_on_is_refused_and_popularity_takes_new_rows() -> None:
    """The cold-start slice once scored popularity with the full-train matrix's rows: it
    excluded each user's whole train history (what the cold protocol hides) and looked
    better than it was. recommend_ids now refuses that; with_history is the right way."""
    full = matrix_from_sets([{0, 1, 2, 3}, {0, 1}, {0, 4}], 6)  # popularity order: 0, 1, ...
    pop = Popularity()
    pop.fit(full)
    cold = matrix_from_sets([{0}, {5}, {1}], 6)
    with pytest.raises(ValueError, match="matrix"):
        recommend_ids(pop, cold, cold.user_ids, 3)
    got = recommend_ids(pop.with_history(cold), cold, cold.user_ids, 3)
    assert got[cold.user_ids[0]] == [full.item_ids[c] for c in (1, 2, 3)], "only item 0 is excluded"
    assert got[cold.user_ids[1]] == [full.item_ids[c] for c in (0, 1, 2)]
