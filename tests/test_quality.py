"""Planted structure: users in B blocks interact only with their block's items. A funnel
that learns anything must recover the blocks; one that is broken (shuffled embeddings, a
ranker that ignores its inputs, a retrieval bug) falls to popularity's level and fails.

The bound: a user's held-out items lie in their block of M items, of which they have seen
about S in training. Drawing 20 of the block's unseen items at random would give recall@20
of about 20 / (M - S); popularity, blind to blocks, gets about 1/B of that. We ask for half
80% of the random-within-block bound and 2.5x popularity.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation.run import run_eval
from training.data import make_dataset

pytestmark = pytest.mark.slow

BLOCKS, ITEMS_PER_BLOCK, USERS_PER_BLOCK, EVENTS_PER_USER = 6, 40, 40, 16


def planted_blocks(seed: int = 3):
    rng = np.random.default_rng(seed)
    genres = [f"g{b}" for b in range(BLOCKS)]
    items = pd.DataFrame({
        "item_id": [f"i{b}-{j}" for b in range(BLOCKS) for j in range(ITEMS_PER_BLOCK)],
        "title": [f"Item {b}-{j}" for b in range(BLOCKS) for j in range(ITEMS_PER_BLOCK)],
        # genres carry the block only for half the items, so content alone cannot solve it
        "genres": [[genres[b]] if j % 2 == 0 else [] for b in range(BLOCKS) for j in range(ITEMS_PER_BLOCK)],
        "created_at": 1_600_000_000,
    })
    rows = []
    t0 = 1_600_000_000
    for b in range(BLOCKS):
        weights = rng.zipf(1.6, ITEMS_PER_BLOCK).astype(float)  # popularity inside the block
        weights /= weights.sum()
        for u in range(USERS_PER_BLOCK):
            picks = rng.choice(ITEMS_PER_BLOCK, size=EVENTS_PER_USER, replace=False, p=weights)
            for n, j in enumerate(picks):
                rows.append((f"u{b}-{u}", f"i{b}-{j}", t0 + 3600 * n + int(rng.integers(0, 3000)), "like", 1.0))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "value"])
    return make_dataset(inter, items, meta={"name": "planted-blocks"})


def test_funnel_recovers_planted_blocks(tmp_path, tiny_config):
    report = run_eval(planted_blocks(), tmp_path, ks=(10, 20), config=tiny_config, ease_lambdas=(50.0,))
    funnel = report["models"]["funnel"]
    pop = report["models"]["popularity"]
    seen = EVENTS_PER_USER * 0.8
    bound = 20 / (ITEMS_PER_BLOCK - seen)
    assert funnel["recall@20"] >= 0.8 * bound, (
        f"funnel recall@20 {funnel['recall@20']:.3f} < 80% of the within-block bound {bound:.3f}")
    assert funnel["recall@20"] >= 2.5 * pop["recall@20"], (
        f"funnel recall@20 {funnel['recall@20']:.3f} < 2.5x popularity {pop['recall@20']:.3f}")
    # every candidate source that learns (two-tower) must also find the blocks on its own
    assert report["models"]["two_tower"]["recall@20"] >= 2 * pop["recall@20"]
