"""Merge sources' proposals under per-source quotas, de-duplicated, provenance kept.

    1. quotas: in SOURCE_ORDER, each source admits its own proposals, best first, until it
       has added `quota` items not already chosen (an item another source already chose
       only gains this source's provenance);
    2. shortfall: when a source proposed fewer than its quota (a cold user has no
       item-to-item, an unknown region no regional), the free slots go to the sources'
       remaining proposals, again in SOURCE_ORDER (two_tower first: it was asked for the
       other sources' deficit too, see ask_for);
    3. guarantee: if still short, the `fallback` order (the whole catalogue by popularity)
       fills up, so the answer holds exactly `num` items whenever the catalogue has `num`
       items that are not excluded.

Every chosen item carries every source that proposed it, with that source's score, held as
arrays (`Provenance`: one score column per source) from here to the response encoder
(candidate_svc/server.py) and the per-source counts (recsys/metrics.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from candidate_svc.sources import SOURCE_ORDER, TWO_TOWER, Proposal, first_allowed


@dataclass
class Provenance:
    """Which sources proposed each of n candidates, and their scores, as arrays.

    Row r as a mapping (`row(r)`, `dicts()`): the sources with proposed[r, j], in column
    order, except that a row with lead[r] >= 0 (an item the fallback added) has its lead
    column first: the order the item-at-a-time merge wrote them in, which the response
    keeps."""

    names: tuple[str, ...]  # column j's source, in merge order
    scores: np.ndarray  # float[n, k] (the sources' dtype, float32): the score, NaN where not proposed
    proposed: np.ndarray  # bool[n, k]
    lead: np.ndarray | None = None  # int8[n]: column written first, -1 for none; None: no row has one
    _dicts: list | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.proposed)

    @staticmethod
    def empty(n: int = 0) -> "Provenance":
        return Provenance((), np.zeros((n, 0), np.float32), np.zeros((n, 0), np.bool_))

    def take(self, rows: np.ndarray) -> "Provenance":
        return Provenance(self.names, self.scores[rows], self.proposed[rows],
                          None if self.lead is None else self.lead[rows])

    def counts(self) -> dict[str, int]:
        """Candidates per source, for the sources that proposed at least one."""
        per = self.proposed.sum(axis=0).tolist()
        return {name: n for name, n in zip(self.names, per) if n}

    def dicts(self) -> list[dict[str, float]]:
        """Per row: source -> score, in the row's order (built once, on first use)."""
        if self._dicts is None:
            names = self.names
            cols = range(len(names))
            lead = [-1] * len(self) if self.lead is None else self.lead.tolist()
            out = []
            for first, values, mask in zip(lead, self.scores.tolist(), self.proposed.tolist()):
                row = {names[first]: values[first]} if first >= 0 and mask[first] else {}
                for j in cols:
                    if mask[j] and j != first:
                        row[names[j]] = values[j]
                out.append(row)
            self._dicts = out
        return self._dicts


@dataclass
class Merged:
    items: np.ndarray  # int64[m], distinct, in admission order
    provenance: Provenance  # per item: every source that proposed it, with its score
    admitted: dict[str, int]  # per source: items it added (quota + shortfall fill)

    @property
    def sources(self) -> list[dict[str, float]]:
        """Per item: every source that proposed it -> its score (built from `provenance`)."""
        return self.provenance.dicts()


def quotas_from_fractions(num: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """floor(num * fraction) per source; two_tower gets the rest (it is the deepest source)."""
    quotas = {name: int(math.floor(num * f)) for name, f in fractions.items() if name != TWO_TOWER}
    quotas[TWO_TOWER] = max(0, num - sum(quotas.values()))
    return quotas


def ask_for(quota: int, num: int, name: str, deficit: int = 0) -> int:
    """How many items to ask a source for. Cheap sources: their quota plus room for every
    item the sources before them may have chosen already, so overlap never starves a
    quota. two_tower (whose search cost grows with the count, and which is asked last):
    its quota, what the other sources failed to propose (`deficit`), and a tenth of num
    for overlap; further shortfall is filled from the cheap sources' extra proposals."""
    if quota <= 0 and not (name == TWO_TOWER and deficit > 0):
        return 0
    if name == TWO_TOWER:
        return min(num, quota + deficit + num // 10)
    return quota + num


def merge(
    proposals: Mapping[str, Proposal],
    quotas: Mapping[str, int],
    num: int,
    excluded: np.ndarray,
    fallback: tuple[str, np.ndarray, np.ndarray],
) -> Merged:
    """`fallback` = (source name, best-first item order, scores by item index).

    Array-at-a-time: each admission step masks a source's remaining proposals against a
    bool[n_items] of the chosen items, and the provenance is written a source column at a
    time into a Provenance's arrays (no Python object per candidate; the item-at-a-time
    loop over every proposal, kept as the twin in tests/test_candidate_sources.py, took
    ~1.6x the CPU on 300-candidate merges even with dicts per chosen item). Relies on the
    Source contract: a proposal's items are distinct.
    """
    order = [n for n in SOURCE_ORDER if n in proposals] + sorted(set(proposals) - set(SOURCE_ORDER))
    chosen = np.zeros(len(excluded), dtype=np.bool_)  # calloc'd: only the chosen pages are touched
    admitted = dict.fromkeys(order, 0)
    cursor = dict.fromkeys(order, 0)
    picked: list[np.ndarray] = []
    n_chosen = 0

    def admit(name: str, limit: int) -> None:
        # = walk the source's items from its cursor, adding each one not chosen yet, until it
        # added `limit` (in all) or num are chosen; the cursor stops after the last item added
        nonlocal n_chosen
        room = min(limit - admitted[name], num - n_chosen)
        items = proposals[name].items
        start = cursor[name]
        if room <= 0 or start >= len(items):
            return
        fresh = np.flatnonzero(~chosen[items[start:]])
        if len(fresh) >= room:
            fresh = fresh[:room]
            cursor[name] = start + int(fresh[-1]) + 1
        else:
            cursor[name] = len(items)
        new = items[start + fresh]
        chosen[new] = True
        picked.append(new)
        admitted[name] += len(new)
        n_chosen += len(new)

    for name in order:
        admit(name, quotas.get(name, 0))
    for name in order:
        admit(name, num)
    items = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    fb_name, fb_order, fb_scores = fallback
    n_merged = len(items)
    extra = None
    if n_chosen < num:
        extra = first_allowed(fb_order, fb_scores, num - n_chosen, excluded | chosen)
        chosen[extra.items] = True
        items = np.concatenate([items, extra.items])
        admitted[fb_name] = admitted.get(fb_name, 0) + len(extra)
    # provenance: every source that proposed a chosen item, one column per source in merge order
    names = order + ([fb_name] if extra is not None and fb_name not in order else [])
    dtype = np.result_type(np.float32, *(proposals[name].scores.dtype for name in order))
    scores = np.full((len(items), len(names)), np.nan, dtype=dtype)
    proposed = np.zeros((len(items), len(names)), dtype=np.bool_)
    lead = None
    if extra is not None and len(extra):  # the fallback's own entries, written first, stay
        col = names.index(fb_name)
        scores[n_merged:, col] = extra.scores
        proposed[n_merged:, col] = True
        lead = np.full(len(items), -1, dtype=np.int8)
        lead[n_merged:] = col
    position = np.argsort(items, kind="stable")
    sorted_items = items[position]
    for col, name in enumerate(order):
        p = proposals[name]
        hit = np.flatnonzero(chosen[p.items])
        if len(hit) == 0:
            continue
        rows = position[np.searchsorted(sorted_items, p.items[hit])]
        if name == fb_name and lead is not None:
            fresh = ~proposed[rows, col]
            rows, hit = rows[fresh], hit[fresh]
        scores[rows, col] = p.scores[hit]  # a source's items are distinct: one entry per row
        proposed[rows, col] = True
    return Merged(items.astype(np.int64, copy=False), Provenance(tuple(names), scores, proposed, lead), admitted)
