"""Incremental catalogue update: add new items to a bundle without retraining the towers.

New items (in the dataset's items.csv, not in the bundle) are embedded by the bundle's own
ONNX item tower with id 0 ("an item the towers never saw", features only: the tower was
trained with ids dropped at random for exactly this), added to a copy of the usearch index,
and published as a new bundle version (the old one is untouched; LATEST moves).

What new items get, besides their embedding and index entry:
- catalog.json rows from items.csv; item_created_at their creation time (so the fresh
  source can explore them at once);
- zero popularity, trending, regional counts, clicks and impressions (no events yet), zero
  WALS factors (the ranking tier's MF feature is 0 for them until the next training);
- content vectors with the IDF of the grown catalogue (old rows keep theirs: the drift is
  one term of the IDF, refreshed at the next training); for a `cbow` bundle the multi-hot
  part so, and the CBOW part from the bundle's token model (training.content: vocabulary,
  IDF and vectors frozen at training; tokens it does not know are skipped); for a bundle
  trained with a search encoder (manifest `content.text`) the text part from the same
  encoder (`text_encoder`, checked against the manifest's model hash), centred on the
  training catalogue's mean;
- item_neighbours for the new items from the grown index (old items' neighbour lists are
  kept: new items reach them through the two-tower and fresh sources until retraining).

The user tower's history embedding knows only the trained items: the manifest records
`catalog_update.tower_items` and the candidate tier leaves newer ids out of the tower's
history input (the other sources still use them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from usearch.index import Index

from recsys import bundle as bundle_fmt
from recsys.bundle import Bundle, load_bundle
from training import content as content_mod
from training.data import load_dataset
from training.source_arrays import neighbours

log = logging.getLogger(__name__)

# catalog.json key -> items.csv column
CATALOG_COLUMNS = {
    "item_ids": "item_id",
    "titles": "title",
    "genres": "genres",
    "creators": "creator",
    "flags": "flags",
    "owners": "owner_id",
    "created_at": "created_at",
}
# Per-user arrays: copied unchanged (their item indices stay valid: new items are appended).
USER_ARRAYS = ("mf_user_factors", "user_pos_indptr", "user_pos_indices", "user_seen_indptr",
               "user_seen_indices", "user_neg_indptr", "user_neg_indices")
REWRITTEN = {"index.usearch", "catalog.json", bundle_fmt.MANIFEST}
# Arrays with one row per token, not per item: copied unchanged, never padded.
TOKEN_ARRAYS = (content_mod.VECTORS_ARRAY, content_mod.IDF_ARRAY)


def embed_new_items(item_tower: Path, features: np.ndarray) -> np.ndarray:
    """Item-tower embeddings from features alone (item id input 0 = unseen item)."""
    sess = ort.InferenceSession(str(item_tower), providers=["CPUExecutionProvider"])
    ids = np.zeros(len(features), dtype=np.int64)
    return np.ascontiguousarray(sess.run(None, {"item_ids": ids, "item_feats": features})[0], dtype=np.float32)


def update_catalog(bundle_path: str | Path, data: str | Path, out_root: str | Path | None = None,
                   text_encoder: str = "") -> Path | None:
    """Publish a new version of the bundle at `bundle_path` holding the items of the dataset
    at `data` that it lacks; returns its directory, or None when there is nothing new.
    `text_encoder`: the search encoder directory, required for a bundle whose content
    vectors hold item texts."""
    base = load_bundle(bundle_path)
    items = load_dataset(data).items
    new = items[~items["item_id"].astype(str).isin(base.item_index)].reset_index(drop=True)
    if len(new) == 0:
        log.info("catalog update: no new items for bundle %s", base.version)
        return None
    n_old, m = base.n_items, len(new)
    feats = base.spec.encode_item_features(new["genres"], new["tags"])
    emb = embed_new_items(base.file("item_tower.onnx"), feats)
    keys = np.arange(n_old, n_old + m, dtype=np.int64)

    root = Path(out_root) if out_root else base.path.parent
    digest = hashlib.sha256((base.version + "\n" + "\n".join(map(str, new["item_id"]))).encode()).hexdigest()
    version = bundle_fmt.new_version_name(digest)
    with bundle_fmt.BundleWriter(root, version) as w:
        index = Index.restore(str(base.file("index.usearch")))  # a loaded copy, not a view
        index.add(keys.astype(np.uint64), emb)
        index.save(str(w.path("index.usearch")))
        arrays = _grown_arrays(base, new, feats, emb, index, keys, text_encoder)
        for name, array in arrays.items():
            w.save_array(name, array)
        for src in sorted(base.path.iterdir()):
            stem = src.name.removesuffix(".npy")
            if src.name in REWRITTEN or (src.suffix == ".npy" and stem in arrays):
                continue
            if src.suffix == ".npy" and stem not in USER_ARRAYS + TOKEN_ARRAYS:
                w.save_array(stem, _pad_rows(np.load(src), n_old, m))  # another per-item array
            else:
                shutil.copy2(src, w.path(src.name))
        w.save_json("catalog.json", _grown_catalog(base, new))
        path = w.publish(_manifest(base, n_old, m))
    log.info("catalog update: %d new items -> bundle %s", m, path)
    return path


def _grown_arrays(base: Bundle, new, feats: np.ndarray, emb: np.ndarray, index: Index,
                  keys: np.ndarray, text_encoder: str = "") -> dict[str, np.ndarray]:
    m = len(new)
    x = base.extras
    out = {
        "item_embeddings": np.vstack([base.item_embeddings, emb]),
        "mf_item_factors": np.vstack([base.mf_item_factors, np.zeros((m, base.mf_item_factors.shape[1]), np.float32)]),
        "content": np.vstack([base.content, new_content_rows(base, new, feats, text_encoder)]),
        "popularity": np.concatenate([base.popularity, np.zeros(m, np.float32)]),
    }
    for name in ("trending", "item_clicks", "item_impressions"):
        if name in x:
            out[name] = np.concatenate([x[name], np.zeros(m, x[name].dtype)])
    if "regional_popularity" in x:
        r = x["regional_popularity"]
        out["regional_popularity"] = np.hstack([r, np.zeros((r.shape[0], m), r.dtype)])
    if "item_created_at" in x:
        out["item_created_at"] = np.concatenate([x["item_created_at"], new["created_at"].to_numpy(np.int64)])
    if "item_neighbours" in x:
        k = x["item_neighbours"].shape[1]
        near, sims = neighbours(index, emb, keys, k)
        out["item_neighbours"] = np.vstack([x["item_neighbours"], near])
        out["item_neighbour_scores"] = np.vstack([x["item_neighbour_scores"], sims])
    return out


def new_content_rows(base: Bundle, new, feats: np.ndarray, text_encoder: str = "") -> np.ndarray:
    """Content vectors of the new items, of the base bundle's kind (manifest `content`)."""
    from recsys.text_encoder import TextEncoder, TextLayout

    layout = TextLayout.from_manifest(base.manifest)
    if layout is None:
        return _item_content_rows(base, base.content, new, feats)
    if not text_encoder:
        raise bundle_fmt.BundleError(f"{base.path}: its content vectors hold item texts encoded by "
                                     f"{layout.encoder!r}: give that encoder (--text-encoder DIR)")
    encoder = TextEncoder(text_encoder, cache_size=0)
    if encoder.dim != layout.dim or (layout.model_sha256 and layout.model_sha256 != encoder.meta.get("model_sha256")):
        raise bundle_fmt.BundleError(f"{base.path}: item texts were encoded by {layout.encoder!r} (dim {layout.dim}),"
                                     f" not by {encoder.name!r} (dim {encoder.dim})")
    center = layout.center if layout.center is not None else np.zeros(layout.dim, np.float32)
    text = content_mod.l2_rows(encoder.encode_uncached(content_mod.catalogue_texts(new)) - center)
    # the old rows' first part is a positive multiple of what _item_content_rows reads
    rest = _item_content_rows(base, base.content[:, : layout.offset], new, feats)
    return content_mod.with_text(rest, text, layout.share)


def _item_content_rows(base: Bundle, content: np.ndarray, new, feats: np.ndarray) -> np.ndarray:
    """The multi-hot (and CBOW) part of the new items' content vectors; `content` is the
    old rows' same part."""
    g = feats.shape[1]
    kind = base.manifest.get("content", {}).get("kind", "multihot")  # older bundles: multihot
    if kind == "multihot":
        return _content_rows(content, feats)
    model = content_mod.TokenModel.load(base.path)
    if model is None or content.shape[1] != g + model.dim:
        raise bundle_fmt.BundleError(f"{base.path}: content kind {kind!r} without a matching token model")
    # Old rows' multi-hot part is a positive multiple of their multi-hot row, so its sign
    # pattern still gives the document frequencies _content_rows needs.
    multihot = _content_rows(content[:, :g], feats)
    share = float(base.manifest["content"]["cbow"]["multihot_share"])
    return content_mod.combine(multihot, model.embed(content_mod.catalogue_tokens(new)), share)


def _content_rows(content: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """IDF-weighted multi-hot rows, L2-normalised, as training.pipeline.content_vectors, with
    document frequencies recovered from the old rows (a feature is present iff its weight
    is non-zero) plus the new items."""
    df = (content > 0).sum(axis=0) + (feats > 0).sum(axis=0)
    n = content.shape[0] + feats.shape[0]
    v = feats * (np.log((1 + n) / (1 + df)) + 1.0)[None, :]
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _pad_rows(array: np.ndarray, n_old: int, m: int) -> np.ndarray:
    if array.ndim == 0 or array.shape[0] != n_old:
        return array
    return np.concatenate([array, np.zeros((m, *array.shape[1:]), array.dtype)])


def _grown_catalog(base: Bundle, new) -> dict[str, Any]:
    catalog = json.loads(base.file("catalog.json").read_text())
    for key, values in catalog.items():
        if not isinstance(values, list) or len(values) != base.n_items:
            continue
        column = CATALOG_COLUMNS.get(key)
        if key == "created_at":
            values.extend(int(v) for v in new[column])
        elif key in ("genres", "flags"):
            values.extend(list(v) for v in new[column])
        elif column is not None:
            values.extend(str(v) for v in new[column])
        else:  # a per-item key this module does not know: the type's empty value
            values.extend([type(values[0])() if values else None] * len(new))
    return catalog


def _manifest(base: Bundle, n_old: int, m: int) -> dict[str, Any]:
    manifest = {k: v for k, v in base.manifest.items() if k not in ("files", "version", "format_version")}
    previous = base.manifest.get("catalog_update", {})
    manifest["counts"] = {**manifest.get("counts", {}), "items": n_old + m}
    manifest["catalog_update"] = {
        "base_version": base.version,
        "tower_items": int(previous.get("tower_items", n_old)),
        "added": m,
        "added_total": int(previous.get("added_total", 0)) + m,
    }
    return manifest
