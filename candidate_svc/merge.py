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

Every chosen item carries every source that proposed it, with that source's score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from candidate_svc.sources import SOURCE_ORDER, TWO_TOWER, Proposal, first_allowed


@dataclass
class Merged:
    items: np.ndarray  # int64[m], distinct, in admission order
    sources: list[dict[str, float]]  # per item: every source that proposed it -> its score
    admitted: dict[str, int]  # per source: items it added (quota + shortfall fill)


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
    """`fallback` = (source name, best-first item order, scores by item index)."""
    order = [n for n in SOURCE_ORDER if n in proposals] + sorted(set(proposals) - set(SOURCE_ORDER))
    chosen: dict[int, dict[str, float]] = {}
    admitted = dict.fromkeys(order, 0)
    cursor = dict.fromkeys(order, 0)
    ids = {name: proposals[name].items.tolist() for name in order}  # Python ints: fast dict keys

    def admit(name: str, limit: int) -> None:
        items = ids[name]
        i = cursor[name]
        while i < len(items) and admitted[name] < limit and len(chosen) < num:
            item = items[i]
            i += 1
            if item not in chosen:
                chosen[item] = {}
                admitted[name] += 1
        cursor[name] = i

    for name in order:
        admit(name, quotas.get(name, 0))
    for name in order:
        admit(name, num)
    fb_name, fb_order, fb_scores = fallback
    if len(chosen) < num:
        taken = excluded.copy()
        taken[np.fromiter(chosen, dtype=np.int64, count=len(chosen))] = True
        extra = first_allowed(fb_order, fb_scores, num - len(chosen), taken)
        for item, score in zip(extra.items.tolist(), extra.scores.tolist()):
            chosen[item] = {fb_name: score}
        admitted[fb_name] = admitted.get(fb_name, 0) + len(extra)
    for name in order:  # provenance: every source that proposed a chosen item
        for item, score in zip(ids[name], proposals[name].scores.tolist()):
            prov = chosen.get(item)
            if prov is not None and name not in prov:
                prov[name] = score
    items = np.fromiter(chosen, dtype=np.int64, count=len(chosen))
    return Merged(items, [chosen[i] for i in items.tolist()], admitted)
