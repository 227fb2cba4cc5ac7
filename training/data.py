"""The canonical dataset (docs/DATA.md): load, save, validate, and the positive/negative rule.

A `Dataset` holds three frames with fixed columns and dtypes. Every constructor (the CSV
loader, the importers, the synthetic generator) goes through `make_dataset`, which coerces
to those dtypes, so a dataset built in memory and the same dataset read back from disk
compare equal frame for frame.

Canonical dtypes: ids and free text are pandas strings (never NaN: missing text is ""),
times are int64 Unix seconds, `value` is float64, list columns hold Python lists of str.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EVENT_TYPES = ("impression", "click", "like", "dislike", "watch", "rating")
ITEM_FLAGS = ("private", "blocked", "misinformation")
FORMAT_VERSION = 1
MAX_ID_CHARS = 128

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "event_type", "value")
ITEM_COLUMNS = ("item_id", "title", "genres", "tags", "created_at", "creator", "flags", "owner_id")
USER_COLUMNS = ("user_id", "age", "gender", "occupation", "region")
SEARCH_COLUMNS = ("user_id", "timestamp", "query")
MAX_QUERY_CHARS = 512  # as the ranking tier's LogEvents accepts

_FILES = {"interactions": "interactions.csv", "items": "items.csv", "users": "users.csv"}
_OPTIONAL_FILES = {"searches": "searches.csv"}  # written only when it has rows
_ALL_FILES = {**_FILES, **_OPTIONAL_FILES}
_COLUMNS = {"interactions": INTERACTION_COLUMNS, "items": ITEM_COLUMNS, "users": USER_COLUMNS,
            "searches": SEARCH_COLUMNS}
_STR_COLUMNS = {
    "interactions": ("user_id", "item_id", "event_type"),
    "items": ("item_id", "title", "creator", "owner_id"),
    "users": ("user_id", "gender", "occupation", "region"),
    "searches": ("user_id", "query"),
}
_INT_COLUMNS = {"interactions": ("timestamp",), "items": ("created_at",), "users": ("age",),
                "searches": ("timestamp",)}
_LIST_COLUMNS = {"interactions": (), "items": ("genres", "tags", "flags"), "users": (), "searches": ()}
_DEFAULTS: dict[str, Any] = {
    "value": 1.0, "title": "", "creator": "", "owner_id": "", "age": 0,
    "gender": "", "occupation": "", "region": "", "genres": None, "tags": None, "flags": None,
}  # fmt: skip
# Same rule as recsys/validation.py: 1..128 characters, no whitespace, no C0/DEL/C1 controls.
_ID_RE = r"[^\s\x00-\x1f\x7f-\x9f]{1,128}"
_INT_RE = re.compile(r"[+-]?\d+")
LIST_SEP = "|"


class DatasetError(ValueError):
    """A dataset breaks the format; the message names file, column and first bad row."""


@dataclass(eq=False)
class Dataset:
    """One dataset in canonical form (docs/DATA.md). Frames have a fresh RangeIndex."""

    interactions: pd.DataFrame  # sorted by timestamp, ties in original order
    items: pd.DataFrame
    users: pd.DataFrame  # may have zero rows
    meta: dict[str, Any] = field(default_factory=dict)
    # logged search queries (user_id, timestamp, query), sorted by time; usually empty
    searches: pd.DataFrame = field(default_factory=lambda: _coerce(None, "searches"))


def _error(frame: str, column: str, row: int | None, problem: str) -> DatasetError:
    # Row numbers count data rows from 0; in the CSV file that row is on line row + 2.
    where = f", row {row} (line {row + 2})" if row is not None else ""
    return DatasetError(f"{_ALL_FILES[frame]}: column {column!r}{where}: {problem}")


# ---------------------------------------------------------------------------- coercion


def _to_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, (tuple, np.ndarray)):
        return [str(v) for v in value]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    text = str(value)
    return text.split(LIST_SEP) if text else []


def _as_int64(series: pd.Series, frame: str, column: str) -> pd.Series:
    """Integer column or DatasetError at the first value that is not a whole number."""
    if pd.api.types.is_integer_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series):
        return series.astype(np.int64)
    if isinstance(series.dtype, pd.StringDtype) and series.notna().all():
        text = series.str.strip()  # fast path for text read from CSV
        # < 19 characters always fits in int64; longer values take the checked loop below.
        if (text.str.fullmatch(_INT_RE.pattern) & (text.str.len() < 19)).all():
            return text.astype(np.int64)
    values = series.to_numpy(dtype=object)
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if isinstance(v, str) and _INT_RE.fullmatch(v.strip()):
            v = int(v.strip())
        if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)):
            raise _error(frame, column, i, f"{v!r} is not an integer")
        if not -(2**63) <= v < 2**63:
            raise _error(frame, column, i, f"{v} does not fit in int64")
        out[i] = v
    return pd.Series(out, index=series.index, name=series.name)


def _as_float64(series: pd.Series, frame: str, column: str) -> pd.Series:
    numeric = pd.to_numeric(series, errors="coerce").astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(numeric.to_numpy()))
    if len(bad):
        raise _error(frame, column, int(bad[0]), f"{series.iloc[bad[0]]!r} is not a finite number")
    return numeric


def _as_str(series: pd.Series) -> pd.Series:
    return series.astype(object).where(series.notna(), "").astype(str)


def _coerce(df: pd.DataFrame | None, frame: str) -> pd.DataFrame:
    """Canonical columns, order and dtypes; missing optional columns get their defaults."""
    df = pd.DataFrame() if df is None else df.reset_index(drop=True)
    n = len(df)
    out: dict[str, pd.Series] = {}
    for column in _COLUMNS[frame]:
        if column in df.columns:
            series = df[column]
        elif column in _DEFAULTS or n == 0:
            series = pd.Series([_DEFAULTS.get(column)] * n, dtype=object)
        else:
            raise _error(frame, column, None, "required column is missing")
        if column in _STR_COLUMNS[frame]:
            series = _as_str(series)
        elif column in _INT_COLUMNS[frame]:
            series = _as_int64(series, frame, column)
        elif column in _LIST_COLUMNS[frame]:
            series = pd.Series([_to_list(v) for v in series], dtype=object)
        else:  # value
            series = _as_float64(series, frame, column)
        out[column] = series.reset_index(drop=True)
    return pd.DataFrame(out, index=pd.RangeIndex(n))


def make_dataset(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame | None = None,
    meta: dict[str, Any] | None = None,
    searches: pd.DataFrame | None = None,
) -> Dataset:
    """Coerce frames to the canonical dtypes, sort interactions by time, validate.

    Columns beyond the canonical ones are dropped; optional columns that are absent get
    their defaults (value 1.0, empty text, empty lists, age 0). List cells may be lists or
    `|`-joined strings.
    """
    ds = Dataset(
        interactions=_coerce(interactions, "interactions"),
        items=_coerce(items, "items"),
        users=_coerce(users, "users"),
        meta=dict(meta or {}),
        searches=_coerce(searches, "searches"),
    )
    validate(ds)  # before sorting, so reported rows are input rows
    ds.interactions = _sort_by_time(ds.interactions)
    ds.searches = _sort_by_time(ds.searches)
    ds.meta = _recount(ds)
    return ds


def _sort_by_time(interactions: pd.DataFrame) -> pd.DataFrame:
    return interactions.sort_values("timestamp", kind="stable").reset_index(drop=True)


# -------------------------------------------------------------------------- validation


def _check_columns(df: pd.DataFrame, frame: str) -> None:
    for column in _COLUMNS[frame]:
        if column not in df.columns:
            raise _error(frame, column, None, "required column is missing")


def _check_ids(series: pd.Series, frame: str, column: str, *, allow_empty: bool = False) -> None:
    text = pd.Series(series.to_numpy(dtype=object), dtype=object)
    is_str = text.map(lambda v: isinstance(v, str)).to_numpy(bool)
    as_text = text.where(is_str, "")
    ok = is_str & as_text.str.fullmatch(_ID_RE).to_numpy(bool)
    if allow_empty:
        ok |= is_str & as_text.eq("").to_numpy(bool)
    bad = np.flatnonzero(~ok)
    if len(bad):
        v = text.iloc[bad[0]]
        if not isinstance(v, str):
            problem = f"{v!r} is not a string id"
        elif v == "":
            problem = "id is empty"
        elif len(v) > MAX_ID_CHARS:
            problem = f"id is {len(v)} characters, at most {MAX_ID_CHARS} allowed"
        else:
            problem = f"id {v!r} contains whitespace or control characters"
        raise _error(frame, column, int(bad[0]), problem)


def _check_unique(series: pd.Series, frame: str, column: str) -> None:
    dup = np.flatnonzero(series.duplicated().to_numpy())
    if len(dup):
        raise _error(frame, column, int(dup[0]), f"duplicate id {series.iloc[dup[0]]!r}")


def _check_lists(series: pd.Series, frame: str, column: str, allowed: tuple[str, ...] = ()) -> None:
    for i, cell in enumerate(series):
        if not isinstance(cell, list):
            raise _error(frame, column, i, f"expected a list, got {type(cell).__name__}")
        for v in cell:
            if not isinstance(v, str) or not v or LIST_SEP in v or "\n" in v or "\r" in v:
                raise _error(frame, column, i, f"bad list element {v!r} (non-empty text, no '|')")
            if allowed and v not in allowed:
                raise _error(frame, column, i, f"unknown value {v!r}; allowed: {list(allowed)}")


def _check_int(series: pd.Series, frame: str, column: str) -> None:
    if pd.api.types.is_integer_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series):
        return
    _as_int64(series, frame, column)  # raises at the first non-integer value
    raise _error(frame, column, None, f"dtype is {series.dtype}, expected int64")


def validate(ds: Dataset) -> None:
    """Raise DatasetError on the first break of docs/DATA.md; return None if the data is valid.

    Checks: required columns; ids well formed (1..128 chars, no whitespace/control chars)
    and unique in items/users; every interaction's item in items; event types and flags
    from the known sets; integer times and ages; finite values; list cells are lists of
    non-empty strings without '|'.
    """
    inter, items, users = ds.interactions, ds.items, ds.users
    for frame, df in (("interactions", inter), ("items", items), ("users", users)):
        if not isinstance(df, pd.DataFrame):
            raise _error(frame, "*", None, f"expected a DataFrame, got {type(df).__name__}")
        _check_columns(df, frame)

    _check_ids(items["item_id"], "items", "item_id")
    _check_unique(items["item_id"], "items", "item_id")
    _check_int(items["created_at"], "items", "created_at")
    _check_lists(items["genres"], "items", "genres")
    _check_lists(items["tags"], "items", "tags")
    _check_lists(items["flags"], "items", "flags", ITEM_FLAGS)
    _check_ids(items["owner_id"], "items", "owner_id", allow_empty=True)

    _check_ids(users["user_id"], "users", "user_id")
    _check_unique(users["user_id"], "users", "user_id")
    _check_int(users["age"], "users", "age")
    negative_age = np.flatnonzero(users["age"].to_numpy() < 0)
    if len(negative_age):
        raise _error("users", "age", int(negative_age[0]), "age is negative (0 = unknown)")

    _check_ids(inter["user_id"], "interactions", "user_id")
    _check_ids(inter["item_id"], "interactions", "item_id")
    unknown_item = np.flatnonzero(~inter["item_id"].isin(items["item_id"]).to_numpy())
    if len(unknown_item):
        i = int(unknown_item[0])
        raise _error("interactions", "item_id", i, f"{inter['item_id'].iloc[i]!r} not in items.csv")
    bad_event = np.flatnonzero(~inter["event_type"].isin(EVENT_TYPES).to_numpy())
    if len(bad_event):
        i = int(bad_event[0])
        raise _error(
            "interactions", "event_type", i,
            f"unknown event type {inter['event_type'].iloc[i]!r}; allowed: {list(EVENT_TYPES)}",
        )  # fmt: skip
    _check_int(inter["timestamp"], "interactions", "timestamp")
    _as_float64(inter["value"], "interactions", "value")
    if not pd.api.types.is_float_dtype(inter["value"].dtype):
        dtype = inter["value"].dtype
        raise _error("interactions", "value", None, f"dtype is {dtype}, expected float64")
    _validate_searches(ds.searches)


def _validate_searches(searches: pd.DataFrame) -> None:
    if not isinstance(searches, pd.DataFrame):
        raise _error("searches", "*", None, f"expected a DataFrame, got {type(searches).__name__}")
    _check_columns(searches, "searches")
    _check_ids(searches["user_id"], "searches", "user_id")
    _check_int(searches["timestamp"], "searches", "timestamp")
    for i, q in enumerate(searches["query"]):
        if not isinstance(q, str) or not q.strip() or len(q) > MAX_QUERY_CHARS or any(
                ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in q):
            raise _error("searches", "query", i,
                         f"{q!r}: expected 1..{MAX_QUERY_CHARS} characters of text, no control characters")


# --------------------------------------------------------------------------- positives


def positive_mask(interactions: pd.DataFrame, rating_threshold: float = 4.0) -> np.ndarray:
    """True for rows that say "the user wanted this": rating >= threshold, like, click, watch."""
    event = interactions["event_type"].to_numpy(dtype=object)
    value = interactions["value"].to_numpy(dtype=np.float64)
    rated_high = (event == "rating") & (value >= rating_threshold)
    return np.asarray(rated_high | np.isin(event, ("like", "click", "watch")), dtype=bool)


def negative_mask(interactions: pd.DataFrame, rating_threshold: float = 2.0) -> np.ndarray:
    """True for explicit negatives: dislike, or rating <= threshold."""
    event = interactions["event_type"].to_numpy(dtype=object)
    value = interactions["value"].to_numpy(dtype=np.float64)
    rated_low = (event == "rating") & (value <= rating_threshold)
    return np.asarray(rated_low | (event == "dislike"), dtype=bool)


# ----------------------------------------------------------------------------- CSV i/o


def _to_csv_text(df: pd.DataFrame, frame: str) -> str:
    out = df.copy()
    for column in _LIST_COLUMNS[frame]:
        out[column] = [LIST_SEP.join(cell) for cell in out[column]]
    # repr-precision floats and "\n" line ends: the file reads back to identical values.
    return out.to_csv(index=False, lineterminator="\n")


def _read_csv(path: Path, frame: str) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{_ALL_FILES[frame]}: file not found at {path}")
    try:
        # Everything as text first: "007" stays "007", "NA" stays "NA", "" stays "".
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                          encoding="utf-8")  # fmt: skip
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{_ALL_FILES[frame]}: cannot parse CSV: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{_ALL_FILES[frame]}: file is empty (a header row is required)") from exc
    _check_columns(raw, frame)
    for column in _INT_COLUMNS[frame]:
        empty = np.flatnonzero(raw[column].eq("").to_numpy())
        if frame == "users" and column == "age":
            raw.loc[raw[column].eq(""), column] = "0"  # empty age = unknown
        elif len(empty):
            raise _error(frame, column, int(empty[0]), "is empty, expected an integer")
    return _coerce(raw, frame)


def _recount(ds: Dataset) -> dict[str, Any]:
    """meta with counts and time range recomputed from the frames."""
    meta = dict(ds.meta)
    ts = ds.interactions["timestamp"]
    all_users = pd.concat([ds.users["user_id"], ds.interactions["user_id"]]).unique()
    meta.setdefault("name", "")
    meta.setdefault("source", "")
    meta.setdefault("created_by", "")
    meta.update(
        format_version=FORMAT_VERSION,
        n_users=int(len(all_users)),
        n_items=int(len(ds.items)),
        n_interactions=int(len(ds.interactions)),
        time_min=int(ts.min()) if len(ts) else None,
        time_max=int(ts.max()) if len(ts) else None,
    )
    return meta


def load_dataset(path: str | Path) -> Dataset:
    """Read DIR/{interactions,items,users}.csv and DIR/dataset.json, then validate."""
    root = Path(path)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"dataset.json: file not found at {meta_path}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"dataset.json: invalid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise DatasetError("dataset.json: expected a JSON object")
    frames = {frame: _read_csv(root / name, frame) for frame, name in _FILES.items()}
    # Validate in file order so reported row numbers match the file, then sort.
    searches = (_read_csv(root / _OPTIONAL_FILES["searches"], "searches")
                if (root / _OPTIONAL_FILES["searches"]).is_file() else None)
    ds = Dataset(frames["interactions"], frames["items"], frames["users"], meta, _coerce(searches, "searches"))
    validate(ds)
    ds.interactions = _sort_by_time(ds.interactions)
    ds.searches = _sort_by_time(ds.searches)
    for key, actual in (("n_items", len(ds.items)), ("n_interactions", len(ds.interactions))):
        if key in meta and meta[key] != actual:
            raise DatasetError(f"dataset.json: {key} is {meta[key]} but the CSV has {actual} rows")
    return ds


def save_dataset(ds: Dataset, path: str | Path) -> None:
    """Validate and write DIR atomically: build a sibling temp dir, then rename it into place.

    Counts and time range in dataset.json are recomputed. An existing DIR is replaced.
    """
    validate(ds)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = _recount(ds)
    # A plain mkdir (not mkdtemp, which is 0700) so the result gets the usual umask mode.
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        frames = {"interactions": _sort_by_time(ds.interactions), "items": ds.items,
                  "users": ds.users}  # fmt: skip
        for frame, name in _FILES.items():
            df = frames[frame][list(_COLUMNS[frame])]
            (tmp / name).write_text(_to_csv_text(df, frame), encoding="utf-8", newline="")
        if len(ds.searches):
            df = _sort_by_time(ds.searches)[list(SEARCH_COLUMNS)]
            (tmp / _OPTIONAL_FILES["searches"]).write_text(_to_csv_text(df, "searches"), encoding="utf-8",
                                                          newline="")
        (tmp / "dataset.json").write_text(
            json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        if target.exists():
            # A directory cannot replace a non-empty one in one rename: move the old one
            # aside first. Readers may briefly find no DIR, never a half-written one.
            old = target.parent / f".{target.name}.old-{secrets.token_hex(6)}"
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except OSError:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -------------------------------------------------------------------------- fingerprint


def fingerprint(ds: Dataset) -> str:
    """sha256 hex of the data (not of meta): same rows -> same string, whatever their order.

    Items and users are sorted by id and interactions by every column, then serialised as
    the canonical CSV text, so a dataset loaded from disk and the same dataset built in
    memory agree. List elements keep their order (it is part of the data).
    """
    frames = {
        "interactions": _coerce(ds.interactions, "interactions").sort_values(
            list(INTERACTION_COLUMNS), kind="stable"
        ),
        "items": _coerce(ds.items, "items").sort_values("item_id", kind="stable"),
        "users": _coerce(ds.users, "users").sort_values("user_id", kind="stable"),
    }
    digest = hashlib.sha256(f"recsys-dataset-v{FORMAT_VERSION}\n".encode())
    for frame in ("interactions", "items", "users"):
        text = _to_csv_text(frames[frame], frame).encode("utf-8")
        digest.update(f"{frame} {len(text)}\n".encode())
        digest.update(text)
    if len(ds.searches):  # only when present: datasets without searches keep their fingerprint
        text = _to_csv_text(_coerce(ds.searches, "searches").sort_values(list(SEARCH_COLUMNS), kind="stable"),
                            "searches").encode("utf-8")
        digest.update(f"searches {len(text)}\n".encode())
        digest.update(text)
    return digest.hexdigest()
