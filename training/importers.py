"""Importers: MovieLens 100K, MovieLens latest-small and generic CSV into the canonical format.

Each importer reads the source files as text (so ids like "007" survive), maps them onto
the columns of docs/DATA.md and returns a validated `Dataset` via `make_dataset`.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from training.data import (
    EVENT_TYPES,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    LIST_SEP,
    USER_COLUMNS,
    Dataset,
    DatasetError,
    make_dataset,
)

_NUMERIC_RE = r"[+-]?(\d+(\.\d*)?|\.\d+)"
_YEAR_RE = r"\((\d{4})\)\s*$"
_ML_NO_GENRES = "(no genres listed)"
_ML100K_UNKNOWN_GENRE = "unknown"


def _read_text(path: Path, **kwargs: Any) -> pd.DataFrame:
    """A delimited file with every cell as str: no NA guessing, so "NA" and "007" survive."""
    if not path.is_file():
        raise DatasetError(f"{path.name}: file not found at {path}")
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, **kwargs)


def parse_timestamps(values: pd.Series, file: str, column: str) -> np.ndarray:
    """Unix seconds (int or decimal, floored) or ISO-8601 text (naive = UTC) -> int64 seconds."""
    text = values.astype(str).str.strip().reset_index(drop=True)
    out = np.zeros(len(text), dtype=np.int64)
    numeric = text.str.fullmatch(_NUMERIC_RE).to_numpy(bool)
    if numeric.any():
        seconds = np.floor(text[numeric].astype(np.float64).to_numpy())
        too_big = np.flatnonzero(np.abs(seconds) >= 1e11)  # past the year 5000
        if len(too_big):
            row = int(np.flatnonzero(numeric)[too_big[0]])
            raise DatasetError(
                f"{file}: column {column!r}, row {row}: {text.iloc[row]!r} is not plausible "
                "Unix seconds (milliseconds? divide by 1000 first)"
            )
        out[numeric] = seconds.astype(np.int64)
    rest = np.flatnonzero(~numeric)
    if len(rest):
        parsed = pd.to_datetime(text.iloc[rest], utc=True, format="ISO8601", errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy())
        if len(bad):
            row = int(rest[bad[0]])
            raise DatasetError(
                f"{file}: column {column!r}, row {row}: {text.iloc[row]!r} is neither Unix "
                "seconds nor an ISO-8601 time"
            )
        epoch = pd.Timestamp(0, tz="UTC")
        out[rest] = ((parsed - epoch) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    return out


def _first_times(interactions: pd.DataFrame) -> pd.Series:
    """item_id -> earliest interaction timestamp."""
    return interactions.groupby("item_id", sort=False)["timestamp"].min()


def _fill_created_at(items: pd.DataFrame, known: pd.Series, interactions: pd.DataFrame) -> None:
    """created_at = `known` where given, else the item's first interaction, else the
    dataset's first interaction (an item nobody touched has no better date), else 0."""
    first = items["item_id"].map(_first_times(interactions))
    fallback = int(interactions["timestamp"].min()) if len(interactions) else 0
    items["created_at"] = known.fillna(first).fillna(fallback).astype(np.int64).to_numpy()


# ------------------------------------------------------------------------ MovieLens 100K


def import_ml100k(src_dir: str | Path) -> Dataset:
    """MovieLens 100K: u.data (ratings), u.item (latin-1 titles, 19 genre flags), u.user.

    The "unknown" genre flag means "no genre known" and becomes an empty list, like
    ml-latest's "(no genres listed)". Regions are "zip-" + the zip code's first digit
    ("zip-other" for Canadian and other non-numeric codes, "" for an empty one).
    """
    src = Path(src_dir)
    ratings = _read_text(src / "u.data", sep="\t", header=None, quoting=csv.QUOTE_NONE)
    if ratings.shape[1] != 4:
        raise DatasetError(f"u.data: expected 4 tab-separated columns, got {ratings.shape[1]}")
    ratings.columns = ["user_id", "item_id", "rating", "timestamp"]
    interactions = pd.DataFrame({
        "user_id": ratings["user_id"],
        "item_id": ratings["item_id"],
        "timestamp": parse_timestamps(ratings["timestamp"], "u.data", "timestamp"),
        "event_type": "rating",
        "value": pd.to_numeric(ratings["rating"], errors="coerce"),
    })  # fmt: skip

    genre_lines = (src / "u.genre").read_text(encoding="latin-1").splitlines()
    genre_pairs = [line.rsplit("|", 1) for line in genre_lines if line.strip()]
    genre_names = [name for name, _ in sorted(genre_pairs, key=lambda p: int(p[1]))]
    raw = _read_text(src / "u.item", sep="|", header=None, encoding="latin-1",
                     quoting=csv.QUOTE_NONE)  # fmt: skip
    if raw.shape[1] != 5 + len(genre_names):
        raise DatasetError(
            f"u.item: expected {5 + len(genre_names)} '|'-separated columns "
            f"(5 + {len(genre_names)} genres from u.genre), got {raw.shape[1]}"
        )
    flags = raw.iloc[:, 5:].to_numpy() == "1"
    genres = [
        [g for g, on in zip(genre_names, row) if on and g != _ML100K_UNKNOWN_GENRE] for row in flags
    ]
    released = pd.to_datetime(raw[2].str.strip(), format="%d-%b-%Y", utc=True, errors="coerce")
    release_s = (released - pd.Timestamp(0, tz="UTC")).dt.total_seconds()  # NaN when missing
    items = pd.DataFrame({"item_id": raw[0], "title": raw[1].str.strip(), "genres": genres})
    _fill_created_at(items, release_s, interactions)

    u = _read_text(src / "u.user", sep="|", header=None, quoting=csv.QUOTE_NONE,
                   encoding="latin-1")  # fmt: skip
    if u.shape[1] != 5:
        raise DatasetError(f"u.user: expected 5 '|'-separated columns, got {u.shape[1]}")
    zips = u[4].str.strip()
    first = zips.str[:1]
    region = np.where(first.str.isdigit(), "zip-" + first, np.where(zips.eq(""), "", "zip-other"))
    users = pd.DataFrame({
        "user_id": u[0],
        "age": pd.to_numeric(u[1], errors="coerce").fillna(0).astype(np.int64),
        "gender": u[2],
        "occupation": u[3],
        "region": region,
    })  # fmt: skip
    meta = {"name": "ml-100k", "source": f"MovieLens 100K (GroupLens) from {src}",
            "created_by": "recsys data ml-100k", "rating_scale_max": 5}  # fmt: skip
    return make_dataset(interactions, items, users, meta)


# ------------------------------------------------------------------ MovieLens latest-small


def _clean_tag(tag: str) -> str:
    return " ".join(tag.replace(LIST_SEP, " ").lower().split())


def _year_start(title: pd.Series) -> pd.Series:
    """Jan 1 (UTC) of the "(1995)" year at the end of a title, in Unix seconds; NaN if none."""
    years = pd.to_numeric(title.str.extract(_YEAR_RE, expand=False), errors="coerce")
    seconds = [
        dt.datetime(int(y), 1, 1, tzinfo=dt.UTC).timestamp() if y == y else np.nan
        for y in years
    ]
    return pd.Series(seconds, index=title.index, dtype=np.float64)


def import_ml_latest(src_dir: str | Path) -> Dataset:
    """MovieLens latest-small: ratings.csv, movies.csv, tags.csv (tags attached to items).

    Tags are lower-cased, whitespace-collapsed, with '|' replaced by a space, and kept once
    per movie in order of first application. Tags on movies missing from movies.csv are
    dropped. No demographics exist, so users.csv is header-only.
    """
    src = Path(src_dir)
    ratings = _read_text(src / "ratings.csv", encoding="utf-8")
    interactions = pd.DataFrame({
        "user_id": ratings["userId"],
        "item_id": ratings["movieId"],
        "timestamp": parse_timestamps(ratings["timestamp"], "ratings.csv", "timestamp"),
        "event_type": "rating",
        "value": pd.to_numeric(ratings["rating"], errors="coerce"),
    })  # fmt: skip

    movies = _read_text(src / "movies.csv", encoding="utf-8")
    genres = [
        [] if cell.strip() in ("", _ML_NO_GENRES) else [g.strip() for g in cell.split(LIST_SEP)]
        for cell in movies["genres"]
    ]
    title = movies["title"].str.strip()
    items = pd.DataFrame({"item_id": movies["movieId"], "title": title, "genres": genres})

    tags_by_item: dict[str, dict[str, None]] = {}
    tags_path = src / "tags.csv"
    if tags_path.is_file():
        tags = _read_text(tags_path, encoding="utf-8")
        for item_id, tag in zip(tags["movieId"], tags["tag"]):
            clean = _clean_tag(tag)
            if clean:
                tags_by_item.setdefault(item_id, {})[clean] = None  # dict: ordered set
    items["tags"] = [list(tags_by_item.get(i, {})) for i in items["item_id"]]
    _fill_created_at(items, _year_start(title), interactions)

    meta = {"name": "ml-latest-small", "source": f"MovieLens latest-small (GroupLens) from {src}",
            "created_by": "recsys data ml-latest", "rating_scale_max": 5}  # fmt: skip
    return make_dataset(interactions, items, None, meta)


# --------------------------------------------------------------------------- generic CSV


def _source_column(mapping: Mapping[str, str], file_key: str, column: str) -> tuple[str, bool]:
    """(source column name, explicitly mapped for this file)."""
    qualified = f"{file_key}.{column}"
    if qualified in mapping:
        return mapping[qualified], True
    return mapping.get(column, column), False


def _pick(
    df: pd.DataFrame, file: str, file_key: str, mapping: Mapping[str, str], column: str,
    *, required: bool,
) -> pd.Series | None:  # fmt: skip
    source, strict = _source_column(mapping, file_key, column)
    if source in df.columns:
        return df[source].str.strip()
    if required or strict:
        raise DatasetError(
            f"{file}: column {source!r} (for {column!r}) not found; columns: {list(df.columns)}"
        )
    return None


def _check_mapping(mapping: Mapping[str, str]) -> None:
    known = set(INTERACTION_COLUMNS) | set(ITEM_COLUMNS) | set(USER_COLUMNS)
    scoped = {"interactions": INTERACTION_COLUMNS, "items": ITEM_COLUMNS, "users": USER_COLUMNS}
    for key in mapping:
        file_key, _, column = key.rpartition(".")
        if file_key:
            ok = file_key in scoped and column in scoped[file_key]
        else:
            ok = column in known
        if not ok:
            raise ValueError(
                f"mapping: unknown canonical column {key!r}; use one of {sorted(known)}, "
                "optionally prefixed by 'interactions.', 'items.' or 'users.'"
            )


def import_csv(
    interactions: str | Path,
    items: str | Path | None = None,
    users: str | Path | None = None,
    mapping: Mapping[str, str] | None = None,
    default_event_type: str = "rating",
) -> Dataset:
    """Generic CSV files (UTF-8, header row, comma separated) into the canonical format.

    `mapping` maps canonical column -> source column, e.g. {"user_id": "uid", "value":
    "stars"}; a key may be scoped to one file ("users.user_id": "id"). Unmapped canonical
    columns are looked up under their own name. Required: user_id, item_id, timestamp (Unix
    seconds or ISO-8601) and, when any row is a rating, value. Optional columns default as
    in docs/DATA.md; an empty event_type is `default_event_type`, an empty value of a
    non-rating event is 1.0. Without an items file, items are the ids the interactions
    mention, with empty metadata. An item's missing created_at is its first interaction.
    """
    mapping = dict(mapping or {})
    _check_mapping(mapping)
    if default_event_type not in EVENT_TYPES:
        raise ValueError(f"default_event_type: {default_event_type!r} is not one of "
                         f"{list(EVENT_TYPES)}")  # fmt: skip
    path = Path(interactions)
    raw = _read_text(path, encoding="utf-8-sig")
    name = path.name

    def pick(column: str, required: bool = False) -> pd.Series | None:
        return _pick(raw, name, "interactions", mapping, column, required=required)

    event = pick("event_type")
    event = (
        pd.Series(default_event_type, index=raw.index)
        if event is None
        else event.where(event.ne(""), default_event_type)
    )
    value_text = pick("value")
    is_rating = event.eq("rating").to_numpy()
    if value_text is None:
        if is_rating.any():
            raise DatasetError(
                f"{name}: rating events need a value column (map 'value' to the rating column)"
            )
        value = pd.Series(1.0, index=raw.index)
    else:
        value = pd.to_numeric(value_text, errors="coerce")
        missing = value.isna().to_numpy()
        bad = np.flatnonzero(missing & (is_rating | value_text.ne("").to_numpy()))
        if len(bad):
            row = int(bad[0])
            raise DatasetError(f"{name}: column {value_text.name!r}, row {row}: "
                               f"{value_text.iloc[row]!r} is not a number")  # fmt: skip
        value = value.fillna(1.0)
    ts = pick("timestamp", required=True)
    inter = pd.DataFrame({
        "user_id": pick("user_id", required=True),
        "item_id": pick("item_id", required=True),
        "timestamp": parse_timestamps(ts, name, str(ts.name)),
        "event_type": event,
        "value": value.astype(np.float64),
    })  # fmt: skip

    if items is None:
        item_frame = pd.DataFrame({"item_id": pd.unique(inter["item_id"])})
        known_created = pd.Series(np.nan, index=item_frame.index)
    else:
        item_frame, known_created = _read_items(Path(items), mapping)
    _fill_created_at(item_frame, known_created, inter)

    user_frame = None if users is None else _read_users(Path(users), mapping)
    ratings = inter["value"][is_rating]
    meta = {
        "name": path.stem,
        "source": f"CSV files {[str(p) for p in (interactions, items, users) if p is not None]}",
        "created_by": "recsys data csv",
        # Best guess of the scale from the data: the largest rating given.
        "rating_scale_max": float(ratings.max()) if len(ratings) else None,
    }
    return make_dataset(inter, item_frame, user_frame, meta)


def _read_items(path: Path, mapping: Mapping[str, str]) -> tuple[pd.DataFrame, pd.Series]:
    raw = _read_text(path, encoding="utf-8-sig")
    out = pd.DataFrame(index=raw.index)
    known = pd.Series(np.nan, index=raw.index)
    for column in ITEM_COLUMNS:
        series = _pick(raw, path.name, "items", mapping, column, required=column == "item_id")
        if series is None:
            continue
        if column == "created_at":
            given = series.ne("").to_numpy()
            if given.any():
                secs = parse_timestamps(series[given], path.name, str(series.name))
                known[given] = secs.astype(np.float64)
        else:
            out[column] = series
    return out, known


def _read_users(path: Path, mapping: Mapping[str, str]) -> pd.DataFrame:
    raw = _read_text(path, encoding="utf-8-sig")
    out = pd.DataFrame(index=raw.index)
    for column in USER_COLUMNS:
        series = _pick(raw, path.name, "users", mapping, column, required=column == "user_id")
        if series is None:
            continue
        if column == "age":
            age = pd.to_numeric(series.where(series.ne(""), "0"), errors="coerce")
            bad = np.flatnonzero((age.isna() | (age % 1 != 0)).to_numpy())
            if len(bad):
                row = int(bad[0])
                raise DatasetError(f"{path.name}: column {series.name!r}, row {row}: "
                                   f"{series.iloc[row]!r} is not a whole number")  # fmt: skip
            series = age.astype(np.int64)
        out[column] = series
    return out
