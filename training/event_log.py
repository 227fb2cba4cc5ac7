"""Closing the loop: the ranking service's logged events as training data.

`merge_events` appends event-store rows to a canonical dataset (docs/DATA.md), so the next
`recsys train` learns from what users did with the served lists. It takes plain rows, not
a store: training never imports a service (`recsys events export` reads the store).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd

from training.data import EVENT_TYPES, Dataset, make_dataset


@dataclass(frozen=True)
class LoggedEvent:
    user_id: str
    item_id: str
    event_type: str  # the event store's names; a "search" becomes a row of the dataset's searches
    value: float
    timestamp_ms: int
    query: str = ""  # the search text of a "search" event


@dataclass
class MergeReport:
    merged: int = 0
    searches: int = 0  # search events added to the dataset's searches (docs/DATA.md)
    skipped: Counter = field(default_factory=Counter)  # reason -> events


def merge_events(ds: Dataset, events: Iterable[LoggedEvent]) -> tuple[Dataset, MergeReport]:
    """`ds` plus one interaction per logged event about a known item (timestamps to Unix
    seconds; value as logged: the rating, watch seconds, 1.0 otherwise), and one search row
    per logged search with its query. Events about items missing from items.csv are skipped
    and counted."""
    known = set(ds.items["item_id"])
    report = MergeReport()
    rows, searches = [], []
    for e in events:
        if e.event_type == "search" and e.query:
            searches.append((e.user_id, e.timestamp_ms // 1000, e.query))
        elif e.event_type not in EVENT_TYPES:
            report.skipped[f"event type {e.event_type!r} is not a dataset interaction"] += 1
        elif e.item_id not in known:
            report.skipped["item not in items.csv"] += 1
        else:
            rows.append((e.user_id, e.item_id, e.timestamp_ms // 1000, e.event_type, float(e.value)))
    report.merged, report.searches = len(rows), len(searches)
    logged = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value"])
    searched = pd.DataFrame(searches, columns=["user_id", "timestamp", "query"])
    meta = {**ds.meta, "events_merged": ds.meta.get("events_merged", 0) + len(rows)}
    merged = make_dataset(pd.concat([ds.interactions, logged], ignore_index=True), ds.items, ds.users, meta,
                          pd.concat([ds.searches, searched], ignore_index=True) if searches else ds.searches)
    return merged, report
