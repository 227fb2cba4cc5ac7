"""Publish copies of a trained bundle version under new names, good or deliberately broken,
for the hot-reload tests (no retraining: a copy with a new manifest version is a new
version as far as a service can tell)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from recsys.bundle import LATEST, MANIFEST, resolve_version_dir, set_latest, sha256_file


def copy_root(bundle_root: Path, dest: Path) -> Path:
    """A private bundle root holding a copy of bundle_root's LATEST version."""
    src = resolve_version_dir(bundle_root)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest / src.name)
    set_latest(dest, src.name)
    return dest


def publish(root: Path, version: str, fault: str = "", base: Path | None = None) -> Path:
    """Copy version directory `base` (default: the current LATEST) to `version` (manifest
    renamed), break it as `fault` says, and point LATEST at it.
      ""            a good new version
      "checksum"    a byte of item_embeddings.npy flipped (sha256 no longer matches)
      "onnx_dim"    user_tower.onnx replaced by a model returning 7-dim embeddings (its
                    checksum updated, so only the ONNX check can catch it)
    """
    src = base or resolve_version_dir(root)
    dst = root / version
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["version"] = version
    if fault == "checksum":
        path = dst / "item_embeddings.npy"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    elif fault == "onnx_dim":
        write_wrong_dim_user_tower(dst / "user_tower.onnx", manifest)
        manifest["files"]["user_tower.onnx"] = sha256_file(dst / "user_tower.onnx")
    elif fault:
        raise ValueError(f"unknown fault {fault!r}")
    (dst / MANIFEST).write_text(json.dumps(manifest))
    set_latest(root, version)
    assert (root / LATEST).read_text().strip() == version
    return dst


def write_wrong_dim_user_tower(path: Path, manifest: dict) -> None:
    """The user tower's inputs, but the output is the 7 user categories as floats."""
    import onnx
    from onnx import TensorProto, helper

    h = int(manifest["features"]["history_length"])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["user_cats"], ["user_embedding"], to=TensorProto.FLOAT)],
        "wrong_dim_user_tower",
        [helper.make_tensor_value_info("hist_items", TensorProto.INT64, ["batch", h]),
         helper.make_tensor_value_info("hist_mask", TensorProto.FLOAT, ["batch", h]),
         helper.make_tensor_value_info("user_cats", TensorProto.INT64, ["batch", 7])],
        [helper.make_tensor_value_info("user_embedding", TensorProto.FLOAT, ["batch", 7])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
