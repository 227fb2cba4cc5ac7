"""The feature encoding the two towers were trained on, shared by trainer and candidate tier.

The trainer builds a `FeatureSpec` from the training data and stores it in the bundle
manifest; the candidate service rebuilds it from the manifest and encodes each request with
exactly the same code, so a model never sees features encoded differently from training.

User tower inputs (ONNX names):
- `hist_items`  int64[B, H]: history item index + 1, 0 = padding (most recent first).
- `hist_mask`   float32[B, H]: 1 where `hist_items` holds an item.
- `user_cats`   int64[B, C]: one index per categorical field in `USER_FIELDS`, 0 = unknown.
- `search_profile` float32[B, S]: only when the bundle was trained with searches
  (`search_dim` S > 0): the user's search profile (recsys.text_encoder.SearchProfiles:
  recency-weighted mean of their query vectors, centred and L2-normalised); zeros = none.
Item tower inputs:
- `item_ids`    int64[B]: item index + 1; 0 = "an item the towers never saw" (new items are
  embedded from their features alone; training drops ids at random to learn that).
- `item_feats`  float32[B, G + T]: genre multi-hot then tag multi-hot (top-T tags).
"""

from __future__ import annotations

import bisect
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

# The categorical fields of the user tower, in input order.
USER_FIELDS = ("age", "gender", "occupation", "region", "hour", "weekday", "season")
# Age buckets: 0 unknown, then [1,18), [18,25), [25,35), [35,45), [45,55), [55,inf).
AGE_EDGES = (1, 18, 25, 35, 45, 55)
HOUR_BUCKETS = 6  # four-hour blocks of the day (UTC)


@dataclass(frozen=True)
class UserInput:
    """What the user tower needs for one user, before encoding."""

    history: Sequence[int] = ()  # item indices, most recent first
    age: int = 0
    gender: str = ""
    occupation: str = ""
    region: str = ""
    time_ms: int = 0
    search: Sequence[float] = ()  # search profile (search_dim values) or () for none


@dataclass
class FeatureSpec:
    """Vocabularies and sizes; serialisable to and from the bundle manifest."""

    history_length: int
    genders: list[str]
    occupations: list[str]
    regions: list[str]
    genres: list[str]
    tags: list[str]
    search_dim: int = 0  # width of the user tower's search_profile input; 0 = no such input
    _lookup: dict[str, dict[str, int]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Index 0 of every vocabulary is "unknown".
        self._lookup = {
            "gender": {v: i + 1 for i, v in enumerate(self.genders)},
            "occupation": {v: i + 1 for i, v in enumerate(self.occupations)},
            "region": {v: i + 1 for i, v in enumerate(self.regions)},
            "genre": {v: i for i, v in enumerate(self.genres)},
            "tag": {v: i for i, v in enumerate(self.tags)},
        }

    @property
    def cardinalities(self) -> list[int]:
        """Embedding-table size per field of `USER_FIELDS` (index 0 = unknown)."""
        return [
            len(AGE_EDGES) + 1,
            len(self.genders) + 1,
            len(self.occupations) + 1,
            len(self.regions) + 1,
            HOUR_BUCKETS + 1,
            7 + 1,
            4 + 1,
        ]

    @property
    def item_feature_dim(self) -> int:
        return len(self.genres) + len(self.tags)

    def to_json(self) -> dict[str, Any]:
        return {
            "history_length": self.history_length,
            "user_fields": list(USER_FIELDS),
            "genders": self.genders,
            "occupations": self.occupations,
            "regions": self.regions,
            "genres": self.genres,
            "tags": self.tags,
            "search_dim": self.search_dim,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FeatureSpec":
        if list(data["user_fields"]) != list(USER_FIELDS):
            raise ValueError(f"bundle user_fields {data['user_fields']} != {list(USER_FIELDS)}")
        return cls(
            history_length=int(data["history_length"]),
            genders=list(data["genders"]),
            occupations=list(data["occupations"]),
            regions=list(data["regions"]),
            genres=list(data["genres"]),
            tags=list(data["tags"]),
            search_dim=int(data.get("search_dim", 0)),  # older bundles: no search input
        )

    # ---- user side -------------------------------------------------------------------
    def encode_users(self, users: Sequence[UserInput]) -> dict[str, np.ndarray]:
        """Encode a batch of users into the user tower's ONNX inputs."""
        n, h = len(users), self.history_length
        hist = np.zeros((n, h), dtype=np.int64)
        mask = np.zeros((n, h), dtype=np.float32)
        cats = np.zeros((n, len(USER_FIELDS)), dtype=np.int64)
        for row, user in enumerate(users):
            recent = list(user.history[:h])
            hist[row, : len(recent)] = np.asarray(recent, dtype=np.int64) + 1
            mask[row, : len(recent)] = 1.0
            cats[row] = self.user_categories(user)
        feeds = {"hist_items": hist, "hist_mask": mask, "user_cats": cats}
        if self.search_dim:
            search = np.zeros((n, self.search_dim), dtype=np.float32)
            for row, user in enumerate(users):
                if len(user.search) == self.search_dim:  # anything else: no search signal
                    search[row] = np.asarray(user.search, dtype=np.float32)
            feeds["search_profile"] = search
        return feeds

    def user_categories(self, user: UserInput) -> list[int]:
        hour, weekday, season = time_context(user.time_ms)
        return [
            age_bucket(user.age),
            self._lookup["gender"].get(user.gender, 0),
            self._lookup["occupation"].get(user.occupation, 0),
            self.region_index(user.region),
            hour,
            weekday,
            season,
        ]

    def region_index(self, region: str) -> int:
        """The region's category (1-based index into the vocabulary), 0 when unknown."""
        return self._lookup["region"].get(region, 0)

    # ---- item side -------------------------------------------------------------------
    def encode_item_features(
        self, genres: Iterable[Sequence[str]], tags: Iterable[Sequence[str]]
    ) -> np.ndarray:
        """Genre multi-hot then tag multi-hot; unknown genres/tags are ignored."""
        genre_lists, tag_lists = list(genres), list(tags)
        g = len(self.genres)
        out = np.zeros((len(genre_lists), self.item_feature_dim), dtype=np.float32)
        for row, (gs, ts) in enumerate(zip(genre_lists, tag_lists, strict=True)):
            for name in gs:
                col = self._lookup["genre"].get(name)
                if col is not None:
                    out[row, col] = 1.0
            for name in ts:
                col = self._lookup["tag"].get(name)
                if col is not None:
                    out[row, g + col] = 1.0
        return out


def age_bucket(age: int) -> int:
    """0 = unknown, else 1 + the number of edges at or below `age` minus one."""
    if age <= 0:
        return 0
    return bisect.bisect_right(AGE_EDGES, age)


def time_context(time_ms: int) -> tuple[int, int, int]:
    """(hour bucket, weekday, season), each 1-based; 0 means unknown (time_ms == 0 is
    resolved to "now" by the caller, never here, so tests stay deterministic)."""
    if time_ms <= 0:
        return 0, 0, 0
    t = dt.datetime.fromtimestamp(time_ms / 1000.0, tz=dt.UTC)
    season = (t.month % 12) // 3  # 0 winter (DJF), 1 spring, 2 summer, 3 autumn
    return 1 + t.hour * HOUR_BUCKETS // 24, 1 + t.weekday(), 1 + season
