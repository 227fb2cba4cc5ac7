"""The trainer's outputs: a complete, self-describing, verifiable bundle and ONNX towers
that agree with PyTorch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from recsys.bundle import LATEST, BundleError, load_bundle, resolve_version_dir, set_latest
from recsys.ranking_features import FEATURE_NAMES

pytestmark = pytest.mark.slow


def test_manifest_describes_the_bundle(bundle, tiny_config):
    m = bundle.manifest
    assert m["format_version"] == 1 and m["version"] == bundle.path.name
    assert set(m["files"]) >= {"user_tower.onnx", "item_tower.onnx", "index.usearch", "catalog.json",
                               "users.json", "item_embeddings.npy"}
    assert m["two_tower"]["dim"] == bundle.item_embeddings.shape[1] == tiny_config.two_tower.dim
    assert m["mf"]["factors"] == bundle.mf_item_factors.shape[1] == tiny_config.mf.factors
    assert m["two_tower"]["user_tower_max_abs_diff"] <= 1e-5
    assert m["two_tower"]["item_tower_max_abs_diff"] <= 1e-5
    assert m["ranker"]["features"] == list(FEATURE_NAMES) and len(m["ranker"]["weights"]) == len(FEATURE_NAMES)
    assert m["ranker"]["model"] == "logistic_segmented" and m["ranker"]["metrics"]["auc"] > 0.6, m["ranker"]
    for seg in m["ranker"]["segments"]:
        assert len(seg["weights"]) == len(FEATURE_NAMES), seg
    assert len(m["dataset"]["fingerprint"]) == 64
    losses = m["mf"]["losses"]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:])), f"WALS loss rose: {losses}"
    tt = m["two_tower"]["losses"]
    assert tt[-1] < tt[0], f"two-tower loss did not fall: {tt}"


def test_embeddings_are_normalised_and_index_matches(bundle):
    norms = np.linalg.norm(bundle.item_embeddings, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    from usearch.index import Index

    index = Index.restore(str(bundle.file("index.usearch")), view=True)
    assert len(index) == bundle.n_items
    q = bundle.item_embeddings[:20]
    exact = np.argsort(-(q @ bundle.item_embeddings.T), axis=1)[:, :10]
    found = index.search(q, 10).keys
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found)])
    assert recall >= 0.95, f"ANN recall@10 {recall:.3f} < 0.95 against exact search"


def test_onnx_towers_match_torch_on_fresh_inputs(tiny_dataset, tmp_path):
    """Parity of the exported towers with PyTorch at 1e-5, on inputs the exporter never saw."""
    torch = pytest.importorskip("torch")
    from dataclasses import replace

    from training import pipeline as pl
    from training import two_tower as tt

    inter = pl.index_interactions(tiny_dataset)
    spec = pl.build_spec(tiny_dataset, 10, 50)
    demo = pl.user_inputs(tiny_dataset, inter.user_ids)
    feats = spec.encode_item_features(tiny_dataset.items["genres"], tiny_dataset.items["tags"])
    examples = pl.two_tower_examples(spec, inter.pos, inter.pos_time, demo)
    towers = tt.train_two_tower(examples, feats, spec.cardinalities, replace(tt.TwoTowerParams(), epochs=1))
    tt.export_onnx(towers, feats, spec.history_length, tmp_path)
    rng = np.random.default_rng(123)
    b = 17  # a batch size the exporter never traced
    enc = spec.encode_users([pl.UserInput(history=rng.integers(0, len(feats), 7).tolist(), age=40,
                                          region=spec.regions[0] if spec.regions else "", time_ms=1_700_000_000_000)
                             for _ in range(b)])
    ids = rng.integers(0, len(feats) + 1, b)
    item_feats = feats[rng.integers(0, len(feats), b)]
    with torch.no_grad():
        want_u = towers.user(*(torch.from_numpy(enc[k]) for k in ("hist_items", "hist_mask", "user_cats"))).numpy()
        want_i = towers.item(torch.from_numpy(ids), torch.from_numpy(item_feats)).numpy()
    got_u = ort.InferenceSession(str(tmp_path / "user_tower.onnx")).run(None, enc)[0]
    got_i = ort.InferenceSession(str(tmp_path / "item_tower.onnx")).run(
        None, {"item_ids": ids, "item_feats": item_feats})[0]
    assert np.abs(got_u - want_u).max() <= 1e-5, "user tower: onnxruntime differs from torch by > 1e-5"
    assert np.abs(got_i - want_i).max() <= 1e-5, "item tower: onnxruntime differs from torch by > 1e-5"


def test_tampered_bundle_is_rejected(bundle, tmp_path):
    copy = tmp_path / bundle.path.name
    shutil.copytree(bundle.path, copy)
    arr = np.load(copy / "popularity.npy")
    arr[0] += 1
    np.save(copy / "popularity.npy", arr)
    with pytest.raises(BundleError, match="checksum mismatch for popularity.npy"):
        load_bundle(copy)
    (copy / "catalog.json").unlink()
    with pytest.raises(BundleError, match="missing file catalog.json"):
        load_bundle(copy, verify=False)


def test_neighbour_ids_outside_the_catalogue_are_refused(bundle, tmp_path):
    """item_neighbours feeds a kernel without bounds checks: an id past the catalogue must
    stop the bundle at load, not read out of bounds on a request."""
    copy = tmp_path / bundle.path.name
    shutil.copytree(bundle.path, copy)
    arr = np.load(copy / "item_neighbours.npy")
    arr[0, 0] = bundle.n_items
    np.save(copy / "item_neighbours.npy", arr)
    with pytest.raises(BundleError, match="item_neighbours holds ids outside"):
        load_bundle(copy, verify=False)


def test_latest_pointer(bundle_root, bundle, tmp_path):
    assert resolve_version_dir(bundle_root) == bundle.path
    assert (bundle_root / LATEST).read_text().strip() == bundle.version
    with pytest.raises(BundleError, match="neither a bundle version"):
        resolve_version_dir(tmp_path)
    set_latest(tmp_path, "nope")
    with pytest.raises(BundleError, match="has no manifest"):
        resolve_version_dir(tmp_path)


def test_bundle_histories_match_the_data(bundle, tiny_dataset):
    from training.data import positive_mask

    inter = tiny_dataset.interactions
    pos = inter[positive_mask(inter)]
    user = pos.user_id.value_counts().index[0]
    row = bundle.user_index[user]
    got = {bundle.item_ids[i] for i in bundle.user_pos.row(row)}
    assert got == set(pos[pos.user_id == user].item_id)
    latest = pos[pos.user_id == user].sort_values("timestamp", kind="stable").item_id.iloc[-1]
    assert bundle.item_ids[bundle.user_pos.row(row)[0]] == latest, "user_pos must be most recent first"
    catalog = json.loads((bundle.path / "catalog.json").read_text())
    assert catalog["item_ids"] == [str(i) for i in tiny_dataset.items.item_id]


def test_listwise_ranker_recovers_known_weights():
    """Requests whose positive is drawn from softmax(x . w_true) over its pool: the listwise
    fit recovers w_true's direction, and beats an all-zero model on MRR."""
    from training.ranker import fit_listwise

    rng = np.random.default_rng(5)
    w_true = np.array([2.0, -1.0, 0.0, 0.5])
    feats, labels, groups = [], [], []
    for g in range(400):
        x = rng.standard_normal((30, 4))
        p = np.exp(x @ w_true)
        p /= p.sum()
        pos = rng.choice(30, p=p)
        feats.append(x)
        labels.append(np.eye(30)[pos])
        groups.append(np.full(30, g))
    model = fit_listwise(np.vstack(feats), np.concatenate(labels), np.concatenate(groups), list("abcd"))
    cos = model.weights @ w_true / (np.linalg.norm(model.weights) * np.linalg.norm(w_true))
    assert cos > 0.95, f"listwise fit direction cosine {cos:.3f} <= 0.95"
    assert model.metrics["mrr"] > 2 * (np.log(30) / 30), model.metrics  # random MRR is ~H_30/30


# ------------------------------------------------------------------ ranker: popularity prior


def _listwise_sample(rng, n_groups: int, pool: int, coef: np.ndarray, pop: int):
    """Requests of `pool` candidates; the positive drawn by softmax(x . coef)."""
    x = rng.normal(size=(n_groups * pool, len(coef)))
    x[:, pop] = np.log1p(rng.pareto(1.5, size=len(x)) * 20)  # heavy-tailed, like log popularity
    s = (x @ coef).reshape(n_groups, pool)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.zeros((n_groups, pool))
    y[np.arange(n_groups), [rng.choice(pool, p=row) for row in p]] = 1.0
    return x, y.ravel(), np.repeat(np.arange(n_groups), pool)


def test_listwise_popularity_prior_shrinks_to_popularity_and_keeps_real_signal():
    from training.ranker import fit_listwise, fit_listwise_selected, fit_segmented, listwise_mrr

    names = list(FEATURE_NAMES)
    pop = names.index("log_popularity")
    rng = np.random.default_rng(0)
    # the prior is folded back into the served weights: with a huge L2 they are popularity alone
    x, y, g = _listwise_sample(rng, 50, 20, np.eye(len(names))[pop], pop)
    shrunk = fit_listwise(x, y, g, names, l2=1e6, prior_feature=pop)
    np.testing.assert_allclose(shrunk.weights, np.eye(len(names))[pop], atol=1e-3)
    assert listwise_mrr(np.zeros(len(y)), y, g) < 0.2, "a constant score must not rank the positive first"

    # few requests, popularity-dominated truth: the plain fit chases noise, the prior fit
    # is chosen and ranks better on fresh requests
    coef = np.zeros(len(names))
    coef[pop], coef[0] = 1.0, 0.1
    x, y, g = _listwise_sample(rng, 40, 20, coef, pop)
    xt, yt, gt = _listwise_sample(rng, 3000, 20, coef, pop)
    plain = fit_listwise(x, y, g, names)
    chosen = fit_listwise_selected(x, y, g, names, pop)
    assert chosen.metrics["prior"] == "log_popularity", chosen.metrics
    assert chosen.metrics["heldout_mrr"] >= chosen.metrics["heldout_mrr_plain"]
    assert listwise_mrr(xt @ chosen.weights, yt, gt) > listwise_mrr(xt @ plain.weights, yt, gt) + 0.01

    # plenty of signal in a non-popularity feature: the selection keeps it (near the plain fit)
    coef = np.zeros(len(names))
    coef[pop], coef[0] = 0.3, 2.0
    x, y, g = _listwise_sample(rng, 1500, 20, coef, pop)
    plain = fit_listwise(x, y, g, names)
    chosen = fit_listwise_selected(x, y, g, names, pop)
    assert chosen.weights[0] > 0.9 * plain.weights[0] > 1.5, (chosen.weights, plain.weights)

    # fit_segmented records the choice for the new / cold segments
    x, y, g = _listwise_sample(rng, 200, 20, coef, pop)
    seg = fit_segmented(x, y, np.zeros(len(y), dtype=np.int64), names, g).segments
    assert "prior" in seg[0]["metrics"] and "heldout_mrr" in seg[0]["metrics"], seg[0]
