"""Catalogue update without retraining: new items embedded by the bundle's ONNX item tower
(id 0, features only), added to a copy of the index, published as a new version that the
candidate tier serves."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from candidate_svc.retrieval import Request, Retriever
from candidate_svc.sources import FRESH, ITEM_TO_ITEM
from recsys.bundle import load_bundle
from recsys.features import UserInput
from training.catalog_update import embed_new_items, update_catalog
from training.data import Dataset, save_dataset

pytestmark = pytest.mark.slow
T = 1_700_000_000_000
NEW = 5


@pytest.fixture(scope="module")
def updated(tmp_path_factory, bundle_root, bundle, tiny_dataset):
    root = tmp_path_factory.mktemp("cu") / "bundles"
    shutil.copytree(bundle_root, root)
    items = tiny_dataset.items
    clones = items.iloc[:NEW].copy()  # the features of the first 5 items, new ids
    clones["item_id"] = [f"new{j}" for j in range(NEW)]
    clones["created_at"] = int(items["created_at"].max()) + 86_400
    data = tmp_path_factory.mktemp("cu-data") / "ds"
    ds = Dataset(tiny_dataset.interactions, pd.concat([items, clones], ignore_index=True),
                 tiny_dataset.users, dict(tiny_dataset.meta))
    save_dataset(ds, data)
    path = update_catalog(root, data)
    return root, path, data


def test_new_version_holds_the_new_items(updated, bundle):
    root, path, _ = updated
    assert path is not None and path.parent == root
    new = load_bundle(root)  # LATEST moved, every checksum and shape verified
    assert new.path == path and new.version != bundle.version
    assert new.n_items == bundle.n_items + NEW
    assert new.item_ids[-NEW:] == [f"new{j}" for j in range(NEW)]
    np.testing.assert_array_equal(new.item_embeddings[: bundle.n_items], bundle.item_embeddings)
    assert new.manifest["catalog_update"] == {
        "base_version": bundle.version, "tower_items": bundle.n_items, "added": NEW, "added_total": NEW,
    }
    assert (root / bundle.version / "manifest.json").is_file(), "the old version is untouched"
    for name, arr in new.extras.items():
        assert (arr.shape[-1] if name == "regional_popularity" else arr.shape[0]) == new.n_items, name


def test_new_items_are_embedded_from_features_alone(updated, bundle):
    root, _, _ = updated
    new = load_bundle(root)
    feats = bundle.spec.encode_item_features(
        [new.genres[i] for i in range(NEW)], [[] for _ in range(NEW)]
    )
    # the clone of item j has item j's features; embedded as an unseen id (0)
    tags_free = embed_new_items(bundle.file("item_tower.onnx"), feats)
    assert tags_free.shape == (NEW, bundle.item_embeddings.shape[1])
    np.testing.assert_allclose(np.linalg.norm(new.item_embeddings[-NEW:], axis=1), 1.0, atol=1e-5)
    sims = np.sum(new.item_embeddings[-NEW:] * new.item_embeddings[:NEW], axis=1)
    assert np.all(sims > 0.5), f"a clone should sit near its original (cosine {sims})"


def test_the_index_finds_the_new_items(updated):
    root, _, _ = updated
    new = load_bundle(root)
    r = Retriever(new)
    for j in range(new.n_items - NEW, new.n_items):
        keys, _ = r.sources["two_tower"].search(new.item_embeddings[j], 1)
        assert keys[0] == j or np.isclose(new.item_embeddings[keys[0]] @ new.item_embeddings[j], 1.0, atol=1e-5)


def test_served_with_a_new_item_in_the_history(updated):
    root, _, _ = updated
    new = load_bundle(root)
    r = Retriever(new)
    r.warmup()
    fresh_id = new.n_items - 1
    (c,) = r.retrieve([Request(UserInput(history=[fresh_id, 3], time_ms=T), num=40, user_id="x")])
    assert len(c.items) == 40 and c.history_used == 1, "the tower reads only items it was trained on"
    from_i2i = {int(i) for i, s in zip(c.items, c.sources) if ITEM_TO_ITEM in s}
    assert from_i2i & set(new.extras["item_neighbours"][fresh_id].tolist()), "new item's neighbours proposed"
    added = set(range(new.n_items - NEW, new.n_items))
    assert added <= set(r.sources[FRESH].eligible.tolist()), "new items are explored by the fresh source"
    n_fresh = len(r.sources[FRESH].eligible)
    (f,) = r.retrieve([Request(UserInput(time_ms=T), num=n_fresh, user_id="y", quotas={FRESH: n_fresh})])
    assert added <= {int(i) for i, s in zip(f.items, f.sources) if FRESH in s}


def test_nothing_new_publishes_nothing(updated):
    root, _, data = updated
    latest = (root / "LATEST").read_text()
    assert update_catalog(root, data) is None
    assert (root / "LATEST").read_text() == latest
