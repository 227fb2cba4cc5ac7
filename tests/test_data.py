"""Canonical dataset format, importers and the synthetic generator (training/data.py etc.).

Importer tests write tiny files in the real MovieLens formats; nothing here reads
/work/shared.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data import (
    Dataset,
    DatasetError,
    fingerprint,
    load_dataset,
    make_dataset,
    negative_mask,
    positive_mask,
    save_dataset,
    validate,
)
from training.importers import import_csv, import_ml100k, import_ml_latest
from training.synthetic import GENRE_TAGS, START, generate, generate_with_truth

# ------------------------------------------------------------------------------ helpers


def small_dataset() -> Dataset:
    interactions = pd.DataFrame({
        "user_id": ["007", "u2", "007", "NA"],
        "item_id": ["0042", "i-b", "i-b", "0042"],
        "timestamp": [300, 100, 100, 200],
        "event_type": ["rating", "click", "watch", "like"],
        "value": [4.5, 1.0, 93.0, 1.0],
    })  # fmt: skip
    items = pd.DataFrame({
        "item_id": ["0042", "i-b"],
        "title": ['Misérables, Les "2" (1995)', "two\nlines"],
        "genres": [["Drama", "Musical"], []],
        "tags": [["time travel", "classic"], ["x"]],
        "created_at": [-100, 50],
        "creator": ["", "Studio, Inc."],
        "flags": [[], ["private", "blocked"]],
        "owner_id": ["", "007"],
    })  # fmt: skip
    users = pd.DataFrame({
        "user_id": ["007", "u3"],
        "age": [0, 31],
        "gender": ["", "F"],
        "occupation": ["NA", "writer"],
        "region": ["zip-0", ""],
    })  # fmt: skip
    return make_dataset(interactions, items, users, {"name": "tiny", "source": "test"})


def assert_same(a: Dataset, b: Dataset) -> None:
    for frame in ("interactions", "items", "users"):
        pd.testing.assert_frame_equal(getattr(a, frame), getattr(b, frame), check_exact=True)


# ------------------------------------------------------------------- format round trip


def test_make_dataset_sorts_by_time_stably_and_counts() -> None:
    ds = small_dataset()
    assert ds.interactions["timestamp"].tolist() == [100, 100, 200, 300]
    # The two t=100 rows keep their input order (click before watch).
    assert ds.interactions["event_type"].tolist()[:2] == ["click", "watch"]
    assert ds.meta["n_interactions"] == 4 and ds.meta["n_items"] == 2
    assert ds.meta["n_users"] == 4  # 007, u2, NA from interactions + u3 from users.csv
    assert (ds.meta["time_min"], ds.meta["time_max"]) == (100, 300)


def test_ties_keep_input_order_on_build_and_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 500
    interactions = pd.DataFrame({
        "user_id": "u", "item_id": "i", "timestamp": rng.integers(0, 3, n),
        "event_type": "watch", "value": np.arange(n, dtype=float),  # value = input position
    })  # fmt: skip
    ds = make_dataset(interactions, pd.DataFrame({"item_id": ["i"], "created_at": [0]}))
    for _, group in ds.interactions.groupby("timestamp"):
        assert group["value"].is_monotonic_increasing, "ties must keep input order"
    save_dataset(ds, tmp_path / "d")
    assert_same(ds, load_dataset(tmp_path / "d"))


def test_save_load_round_trip_keeps_ids_text_and_lists(tmp_path: Path) -> None:
    ds = small_dataset()
    save_dataset(ds, tmp_path / "d")
    back = load_dataset(tmp_path / "d")
    assert_same(ds, back)
    assert back.items["item_id"].tolist() == ["0042", "i-b"]
    assert back.items["tags"].iloc[0] == ["time travel", "classic"]
    assert back.items["genres"].iloc[1] == []
    assert back.users["occupation"].iloc[0] == "NA"  # not turned into a missing value
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert meta["name"] == "tiny" and meta["n_interactions"] == 4 and meta["time_max"] == 300
    header = (tmp_path / "d" / "interactions.csv").read_text().splitlines()[0]
    assert header == "user_id,item_id,timestamp,event_type,value"


def test_round_trip_with_header_only_users(tmp_path: Path) -> None:
    ds = small_dataset()
    ds = make_dataset(ds.interactions, ds.items, None, ds.meta)
    save_dataset(ds, tmp_path / "d")
    assert (tmp_path / "d" / "users.csv").read_text() == "user_id,age,gender,occupation,region\n"
    back = load_dataset(tmp_path / "d")
    assert len(back.users) == 0
    assert_same(ds, back)


def test_save_replaces_existing_dir_and_leaves_no_temp(tmp_path: Path) -> None:
    ds = small_dataset()
    save_dataset(ds, tmp_path / "d")
    (tmp_path / "d" / "stale.txt").write_text("old")
    smaller = make_dataset(ds.interactions.iloc[:2], ds.items, ds.users, ds.meta)
    save_dataset(smaller, tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert not (tmp_path / "d" / "stale.txt").exists()
    assert len(load_dataset(tmp_path / "d").interactions) == 2


def test_save_refuses_invalid_dataset_without_touching_target(tmp_path: Path) -> None:
    ds = small_dataset()
    save_dataset(ds, tmp_path / "d")
    ds.interactions.loc[0, "event_type"] = "purchase"
    with pytest.raises(DatasetError, match="event_type"):
        save_dataset(ds, tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert len(load_dataset(tmp_path / "d").interactions) == 4


def test_load_reports_file_column_and_row_of_bad_timestamp(tmp_path: Path) -> None:
    save_dataset(small_dataset(), tmp_path / "d")
    path = tmp_path / "d" / "interactions.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",100,", ",100.5,")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        load_dataset(tmp_path / "d")
    message = str(err.value)
    assert "interactions.csv" in message and "'timestamp'" in message and "row 1" in message


def test_load_rejects_counts_that_disagree_with_dataset_json(tmp_path: Path) -> None:
    save_dataset(small_dataset(), tmp_path / "d")
    path = tmp_path / "d" / "interactions.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))  # drop a row
    with pytest.raises(DatasetError, match="n_interactions"):
        load_dataset(tmp_path / "d")


# ------------------------------------------------------------------------- validation


def _break(frame: str, column: str, row: int, value: object) -> Dataset:
    ds = small_dataset()
    df = getattr(ds, frame).copy()
    if column in ("timestamp", "created_at", "age") and not isinstance(value, int):
        df[column] = df[column].astype(object)
    df.at[row, column] = value
    setattr(ds, frame, df)
    return ds


@pytest.mark.parametrize(
    ("frame", "column", "row", "value", "fragment"),
    [
        ("interactions", "event_type", 1, "purchase", "unknown event type 'purchase'"),
        ("interactions", "item_id", 2, "nope", "'nope' not in items.csv"),
        ("items", "item_id", 1, "0042", "duplicate id '0042'"),
        ("users", "user_id", 1, "007", "duplicate id '007'"),
        ("interactions", "user_id", 0, "", "id is empty"),
        ("interactions", "user_id", 3, "x" * 129, "129 characters"),
        ("users", "user_id", 1, "two words", "whitespace or control"),
        ("items", "owner_id", 1, "tab\there", "whitespace or control"),
        ("interactions", "user_id", 1, "bell\x07", "whitespace or control"),
        ("interactions", "timestamp", 3, 1.5, "1.5 is not an integer"),
        ("interactions", "timestamp", 0, "soon", "'soon' is not an integer"),
        ("items", "created_at", 0, None, "None is not an integer"),
        ("items", "flags", 0, ["deleted"], "unknown value 'deleted'"),
        ("items", "genres", 1, ["a|b"], "bad list element"),
        ("users", "age", 1, -3, "negative"),
    ],
)
def test_validate_rejects_and_names_file_column_row(
    frame: str, column: str, row: int, value: object, fragment: str
) -> None:
    ds = _break(frame, column, row, value)
    with pytest.raises(DatasetError) as err:
        validate(ds)
    message = str(err.value)
    assert message.startswith(f"{frame}.csv: column {column!r}, row {row} "), message
    assert fragment in message, message


def test_validate_accepts_users_missing_from_users_csv() -> None:
    ds = small_dataset()
    assert "u2" not in set(ds.users["user_id"])
    validate(ds)  # no exception: unknown demographics are allowed


def test_validate_rejects_missing_column() -> None:
    ds = small_dataset()
    ds.items = ds.items.drop(columns=["flags"])
    with pytest.raises(DatasetError, match=r"items.csv: column 'flags': required column"):
        validate(ds)


# ------------------------------------------------------------------------------ masks


def test_positive_and_negative_masks() -> None:
    frame = pd.DataFrame({
        "event_type": ["rating", "rating", "rating", "rating", "like", "click", "watch",
                       "dislike", "impression", "rating"],
        "value": [5.0, 4.0, 3.5, 2.0, 1.0, 1.0, 30.0, 1.0, 1.0, 1.0],
    })  # fmt: skip
    pos = positive_mask(frame)
    neg = negative_mask(frame)
    assert pos.dtype == np.bool_ and neg.dtype == np.bool_
    assert pos.tolist() == [True, True, False, False, True, True, True, False, False, False]
    assert neg.tolist() == [False, False, False, True, False, False, False, True, False, True]
    assert positive_mask(frame, rating_threshold=3.5)[2]
    assert not negative_mask(frame, rating_threshold=1.5)[3]


# ------------------------------------------------------------------------ fingerprint


def test_fingerprint_is_order_independent_and_survives_round_trip(tmp_path: Path) -> None:
    ds = small_dataset()
    fp = fingerprint(ds)
    assert len(fp) == 64 and int(fp, 16) >= 0
    shuffled = Dataset(
        ds.interactions.iloc[::-1].reset_index(drop=True),
        ds.items.iloc[::-1].reset_index(drop=True),
        ds.users.iloc[::-1].reset_index(drop=True),
        {"name": "another name"},
    )
    assert fingerprint(shuffled) == fp
    save_dataset(ds, tmp_path / "d")
    assert fingerprint(load_dataset(tmp_path / "d")) == fp
    assert fingerprint(small_dataset()) == fp


@pytest.mark.parametrize(
    ("frame", "column", "row", "value"),
    [
        ("interactions", "value", 0, 4.0),
        ("interactions", "timestamp", 0, 101),
        ("items", "tags", 0, ["time travel"]),
        ("items", "title", 1, "two lines"),
        ("users", "age", 1, 32),
    ],
)
def test_fingerprint_changes_with_any_value(
    frame: str, column: str, row: int, value: object
) -> None:
    ds = small_dataset()
    before = fingerprint(ds)
    df = getattr(ds, frame).copy()
    df.at[row, column] = value
    setattr(ds, frame, df)
    assert fingerprint(ds) != before


# ------------------------------------------------------------------ MovieLens 100K

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def _ml100k_item(item_id: int, title: str, date: str, genres: list[str]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
    url = "http://us.imdb.com/M/title-exact?" + title.replace(" ", "%20")
    return f"{item_id}|{title}|{date}||{url}|{flags}\n"


def write_ml100k(root: Path) -> Path:
    root.mkdir()
    (root / "u.data").write_text(
        "196\t242\t3\t881250949\n186\t302\t1\t891717742\n22\t242\t5\t878887116\n"
        "196\t267\t4\t875000000\n"
    )
    (root / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)) + "\n")
    items = (
        _ml100k_item(242, "Kolya (1996)", "24-Jan-1997", ["Comedy"])
        + _ml100k_item(302, "Misérables, Les (1995)", "01-Jan-1995", ["Drama", "Musical"])
        + "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    )
    (root / "u.item").write_bytes(items.encode("latin-1"))
    (root / "u.user").write_text(
        "196|49|M|writer|55105\n186|39|F|executive|00000\n22|25|M|writer|T8H1N\n"
    )
    return root


def test_import_ml100k(tmp_path: Path) -> None:
    ds = import_ml100k(write_ml100k(tmp_path / "ml"))
    inter = ds.interactions
    assert inter["timestamp"].tolist() == sorted(inter["timestamp"])
    assert set(inter["event_type"]) == {"rating"}
    first = inter.iloc[0]
    assert (first["user_id"], first["item_id"], first["value"]) == ("196", "267", 4.0)
    items = ds.items.set_index("item_id")
    assert items.loc["302", "title"] == "Misérables, Les (1995)"
    assert items.loc["302", "genres"] == ["Drama", "Musical"]
    assert items.loc["242", "created_at"] == 854_064_000  # 1997-01-24T00:00:00Z
    assert items.loc["267", "genres"] == []  # the "unknown" flag is no genre
    assert items.loc["267", "created_at"] == 875_000_000  # no date: first rating
    assert all(tags == [] for tags in ds.items["tags"])
    users = ds.users.set_index("user_id")
    assert users.loc["196", "region"] == "zip-5"
    assert users.loc["186", "region"] == "zip-0"
    assert users.loc["22", "region"] == "zip-other"
    assert users.loc["186", "age"] == 39 and users.loc["186", "occupation"] == "executive"
    assert ds.meta["rating_scale_max"] == 5 and ds.meta["n_interactions"] == 4


def test_import_ml100k_round_trips_through_the_canonical_files(tmp_path: Path) -> None:
    ds = import_ml100k(write_ml100k(tmp_path / "ml"))
    save_dataset(ds, tmp_path / "out")
    back = load_dataset(tmp_path / "out")
    assert_same(ds, back)
    assert fingerprint(back) == fingerprint(ds)


# ---------------------------------------------------------------- MovieLens latest


def write_ml_latest(root: Path) -> Path:
    root.mkdir()

    def write(name: str, lines: list[str]) -> None:  # CRLF, like the GroupLens files
        (root / name).write_bytes("\r\n".join(lines + [""]).encode("utf-8"))

    write("movies.csv", [
        "movieId,title,genres",
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
        '11,"American President, The (1995)",Comedy|Drama|Romance',
        "40697,Babylon 5,Sci-Fi",
        "182727,Cosmos,(no genres listed)",
        "007,Cité (1960) ,Drama",
    ])  # fmt: skip
    write("ratings.csv", [
        "userId,movieId,rating,timestamp",
        "1,1,4.0,964982703",
        "1,11,0.5,964981247",
        "2,40697,3.5,1445714994",
        "3,007,5.0,1445714000",
    ])  # fmt: skip
    write("tags.csv", [
        "userId,movieId,tag,timestamp",
        "2,1,Pixar,1445714994",
        "2,1, pixar ,1445714995",
        "3,1,Fun|Family,1445714996",
        "2,11,politics,1445714997",
        "2,99999,orphan tag,1445714998",
    ])  # fmt: skip
    return root


def test_import_ml_latest(tmp_path: Path) -> None:
    ds = import_ml_latest(write_ml_latest(tmp_path / "ml"))
    items = ds.items.set_index("item_id")
    assert items.loc["11", "title"] == "American President, The (1995)"
    assert items.loc["11", "genres"] == ["Comedy", "Drama", "Romance"]
    assert items.loc["182727", "genres"] == []
    assert items.loc["1", "tags"] == ["pixar", "fun family"]
    assert items.loc["11", "tags"] == ["politics"]
    assert items.loc["40697", "tags"] == []
    assert items.loc["1", "created_at"] == 788_918_400  # 1995-01-01T00:00:00Z
    assert items.loc["007", "created_at"] == -315_619_200  # 1960-01-01, title had a space
    assert items.loc["007", "title"] == "Cité (1960)"
    assert items.loc["40697", "created_at"] == 1_445_714_994  # no year: first rating
    assert items.loc["182727", "created_at"] == 964_981_247  # unrated, no year: data start
    assert len(ds.users) == 0 and ds.meta["n_users"] == 3
    ratings = ds.interactions.set_index("item_id")["value"]
    assert ratings["11"] == 0.5 and ratings["007"] == 5.0


# ------------------------------------------------------------------------ generic CSV


def test_import_csv_with_mapping_and_iso_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "uid,movie,stars,when,extra\n"
        "007,m1,4,2020-01-01T00:00:00Z,x\n"
        "8,m2,2.5,2020-01-01 02:00:00+02:00,y\n"
        "8,m1,5,2020-01-02,z\n"
        "9,m3,3,1577836800,w\n"
    )
    ds = import_csv(path, None, None,
                    {"user_id": "uid", "item_id": "movie", "value": "stars", "timestamp": "when"})
    inter = ds.interactions
    assert inter["timestamp"].tolist() == [1_577_836_800, 1_577_836_800, 1_577_836_800,
                                           1_577_923_200]  # fmt: skip
    assert inter["user_id"].tolist() == ["007", "8", "9", "8"]  # ties keep file order
    assert set(inter["event_type"]) == {"rating"}
    assert inter["value"].tolist() == [4.0, 2.5, 3.0, 5.0]
    items = ds.items.set_index("item_id")
    assert sorted(items.index) == ["m1", "m2", "m3"]
    assert items.loc["m1", "created_at"] == 1_577_836_800  # first interaction
    assert items.loc["m1", "title"] == "" and items.loc["m1", "genres"] == []
    assert ds.meta["rating_scale_max"] == 5.0


def test_import_csv_with_items_users_and_event_types(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text(
        "user,item,ts,kind\n"
        "a,x,100,click\n"
        "b,x,200,like\n"
        "a,y,300,\n"
    )
    (tmp_path / "i.csv").write_text(
        "item,name,genres,created\n"
        'x,"Hello, world",Drama|Comedy,2000-01-01T00:00:00\n'
        "y,,,\n"
    )
    (tmp_path / "u.csv").write_text("id,age,gender\na,30,F\nc,,\n")
    mapping = {"user_id": "user", "item_id": "item", "timestamp": "ts", "event_type": "kind",
               "title": "name", "created_at": "created", "users.user_id": "id"}  # fmt: skip
    ds = import_csv(tmp_path / "e.csv", tmp_path / "i.csv", tmp_path / "u.csv", mapping,
                    default_event_type="watch")  # fmt: skip
    assert ds.interactions["event_type"].tolist() == ["click", "like", "watch"]
    assert ds.interactions["value"].tolist() == [1.0, 1.0, 1.0]
    items = ds.items.set_index("item_id")
    assert items.loc["x", "title"] == "Hello, world"
    assert items.loc["x", "genres"] == ["Drama", "Comedy"]
    assert items.loc["x", "created_at"] == 946_684_800
    assert items.loc["y", "created_at"] == 300  # empty: first interaction
    users = ds.users.set_index("user_id")
    assert users.loc["a", "age"] == 30 and users.loc["c", "age"] == 0
    assert users.loc["a", "region"] == ""


def test_import_csv_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,100\n")
    with pytest.raises(DatasetError, match="rating events need a value column"):
        import_csv(path, None, None, {})
    path.write_text("user_id,item_id,timestamp,value\n1,2,100,4\n1,3,yesterday,4\n")
    with pytest.raises(DatasetError, match=r"e.csv: column 'timestamp', row 1: 'yesterday'"):
        import_csv(path, None, None, {})
    path.write_text("user_id,item_id,timestamp,value\n1,2,1577836800000,4\n")
    with pytest.raises(DatasetError, match="milliseconds"):
        import_csv(path, None, None, {})
    with pytest.raises(DatasetError, match="column 'uid'"):
        import_csv(path, None, None, {"user_id": "uid"})
    with pytest.raises(ValueError, match="unknown canonical column 'stars'"):
        import_csv(path, None, None, {"stars": "value"})


# -------------------------------------------------------------------------- synthetic

SMALL = {"n_users": 300, "n_items": 400, "seed": 3}


@pytest.fixture(scope="module")
def synth() -> tuple:
    return generate_with_truth(**SMALL)


def test_synthetic_small_is_fast_valid_and_deterministic(synth: tuple) -> None:
    t0 = time.perf_counter()
    ds = generate(n_users=200, n_items=300, seed=1)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"n_users=200, n_items=300 took {elapsed:.2f}s, limit 1 s"
    validate(ds)
    assert fingerprint(generate(n_users=200, n_items=300, seed=1)) == fingerprint(ds)
    assert fingerprint(generate(n_users=200, n_items=300, seed=2)) != fingerprint(ds)
    assert 30 <= ds.meta["n_interactions"] / 200 <= 50, "about interactions_per_user rows/user"


def test_synthetic_default_size_runs_well_under_ten_seconds() -> None:
    t0 = time.perf_counter()
    ds = generate()
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0, f"default size took {elapsed:.2f}s, limit 10 s"
    assert len(ds.users) == 2000 and len(ds.items) == 1500


def test_synthetic_round_trips(synth: tuple, tmp_path: Path) -> None:
    ds, _ = synth
    save_dataset(ds, tmp_path / "s")
    assert_same(ds, load_dataset(tmp_path / "s"))


def test_synthetic_event_mix_and_ratings(synth: tuple) -> None:
    inter = synth[0].interactions
    share = inter["event_type"].value_counts(normalize=True)
    assert set(share.index) == {"impression", "click", "watch", "rating", "like", "dislike"}
    assert share["impression"] > share["click"] > share["like"] > share["dislike"] > 0.005
    ratings = inter.loc[inter["event_type"] == "rating", "value"]
    assert set(ratings.unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 0.08 < (ratings <= 2).mean() < 0.4, "some, not mostly, low ratings"
    assert 3.2 < ratings.mean() < 4.0
    watch = inter.loc[inter["event_type"] == "watch", "value"]
    assert watch.min() > 0 and watch.median() > 60, "watch value is seconds"


def test_synthetic_popularity_is_zipf_like(synth: tuple) -> None:
    ds, _ = synth
    counts = ds.interactions["item_id"].value_counts()
    top = counts.iloc[: len(ds.items) // 10].sum() / len(ds.interactions)
    assert top > 0.35, f"top 10% of items hold {top:.2f} of interactions, need > 0.35"
    per_user = ds.interactions.groupby("user_id").size()
    assert per_user.quantile(0.95) > 3 * per_user.median(), "user activity is heavy-tailed"


def test_synthetic_late_items_only_after_creation(synth: tuple) -> None:
    ds, _ = synth
    created = ds.items.set_index("item_id")["created_at"]
    inter = ds.interactions
    assert (inter["timestamp"].to_numpy() >= created[inter["item_id"]].to_numpy()).all()
    period = 180 * 86_400
    late = ds.items.loc[ds.items["created_at"] >= START + 0.8 * period, "item_id"]
    assert len(late) == round(0.1 * len(ds.items))
    assert inter["item_id"].isin(late).sum() > 0, "late items still get interactions"
    assert inter["timestamp"].between(START, START + period - 1).all()


def test_synthetic_users_concentrate_on_favourite_genres(synth: tuple) -> None:
    ds, truth = synth
    genres = dict(zip(ds.items["item_id"], ds.items["genres"]))
    fav = dict(zip(ds.users["user_id"], map(set, truth.favourite_genres)))
    pos = ds.interactions[positive_mask(ds.interactions)].drop_duplicates(["user_id", "item_id"])
    # Primary genre (listed first) among the user's favourites: observed vs catalogue rate.
    observed = np.mean([genres[i][0] in fav[u] for u, i in zip(pos["user_id"], pos["item_id"])])
    primary = pd.Series([g[0] for g in ds.items["genres"]])
    chance = np.mean([primary.isin(list(f)).mean() for f in fav.values()])
    assert observed > 2.5 * chance, f"favourite-genre share {observed:.2f} vs chance {chance:.2f}"


def test_synthetic_tags_carry_genre_signal(synth: tuple) -> None:
    items = synth[0].items
    lifts = []
    for genre, vocab in GENRE_TAGS.items():
        has_genre = items["genres"].map(lambda gs, g=genre: g in gs)
        if has_genre.sum() < 5:
            continue
        has_tag = items["tags"].map(lambda ts, v=vocab: bool(set(ts) & set(v)))
        if has_tag.sum() >= 5:
            lifts.append(has_genre[has_tag].mean() / has_genre.mean())
    assert len(lifts) >= 8
    assert np.median(lifts) > 3.0, f"P(genre | genre tag) / P(genre) median {np.median(lifts):.1f}"
    assert all(1 <= len(t) <= 5 for t in items["tags"])


def test_synthetic_catalogue_and_users_look_real(synth: tuple) -> None:
    ds, _ = synth
    items, users = ds.items, ds.users
    assert items["title"].str.fullmatch(r"[A-Z][A-Za-z ]+").all()
    assert 0.5 * len(items) / 5 <= items["creator"].nunique() <= len(items) / 5
    assert users["region"].nunique() == 8
    assert users["age"].between(0, 90).all() and (users["age"] > 0).mean() > 0.9
    flags = items["flags"].explode().value_counts()
    assert {"blocked", "misinformation", "private"} <= set(flags.index)
    assert flags["private"] < flags["blocked"] < 0.05 * len(items)
    private = items[items["flags"].map(lambda f: "private" in f)]
    assert (private["owner_id"] != "").all()
    assert (items.loc[~items.index.isin(private.index), "owner_id"] == "").all()
    owners = dict(zip(private["item_id"], private["owner_id"]))
    seen = ds.interactions[ds.interactions["item_id"].isin(owners)]
    assert (seen["user_id"] == seen["item_id"].map(owners)).all(), "private: owner only"


def test_synthetic_weekly_rhythm(synth: tuple) -> None:
    ts = synth[0].interactions["timestamp"].to_numpy()
    weekday = ((ts - START) // 86_400) % 7  # START is a Monday
    per_day = np.bincount(weekday, minlength=7)
    assert per_day[5:].mean() > 1.2 * per_day[:2].mean(), f"weekend vs Mon/Tue: {per_day}"
