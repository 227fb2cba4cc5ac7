"""The artifact bundle: what training writes and both services load.

A bundle root holds immutable version directories and a `LATEST` pointer:

    ROOT/
      LATEST                      the current version's name (replaced atomically)
      <version>/manifest.json     dims, vocabularies, model arguments, metrics, checksums
      <version>/user_tower.onnx   user tower (see recsys.features for its inputs)
      <version>/item_tower.onnx   item tower
      <version>/index.usearch     ANN index over item_embeddings (cosine), memory-mapped
      <version>/*.npy             item_embeddings, mf_item_factors, mf_user_factors,
                                  content, popularity, user_pos_{indptr,indices},
                                  user_seen_{indptr,indices}, user_neg_{indptr,indices}
      <version>/catalog.json      item ids, titles, genres, creators, flags, owners
      <version>/content_vocab.json, content_token_vectors.npy, content_token_idf.npy
                                  optional: the CBOW token model behind `content`
                                  (training.content), read only by catalogue updates
      <version>/users.json        known user ids and their demographics

A version directory is written under a temporary name and renamed into place, then LATEST
is replaced with os.replace, so a reader never sees a half-written bundle. Loading checks
every file's sha256 against the manifest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.features import USER_FIELDS, FeatureSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "LATEST"

ARRAY_FILES = (
    "item_embeddings",
    "mf_item_factors",
    "mf_user_factors",
    "content",
    "popularity",
    "user_pos_indptr",
    "user_pos_indices",
    "user_seen_indptr",
    "user_seen_indices",
    "user_neg_indptr",
    "user_neg_indices",
)
# Arrays the candidate sources read, written by training since bundle format 1 gained
# them; a bundle without them still loads (the sources that need them propose nothing).
#   trending             float32[n_items]   time-decayed positives over the last window
#   regional_popularity  float32[R+1, n_items] positives per region (row 0 = unknown region)
#   item_clicks, item_impressions  float32[n_items]  for the fresh source's click-rate
#   item_created_at      int64[n_items]     Unix seconds the item was created
#   item_neighbours      int64[n_items, N]  nearest items by item-tower cosine, -1 = none
#   item_neighbour_scores float32[n_items, N] their cosines
OPTIONAL_ARRAY_FILES = (
    "trending",
    "regional_popularity",
    "item_clicks",
    "item_impressions",
    "item_created_at",
    "item_neighbours",
    "item_neighbour_scores",
)


class BundleError(RuntimeError):
    """A bundle is missing, incomplete or inconsistent."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_version_dir(path: str | Path) -> Path:
    """A version directory as given, or the one a bundle root's LATEST names."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    latest = path / LATEST
    if latest.is_file():
        version = latest.read_text().strip()
        if (path / version / MANIFEST).is_file():
            return path / version
        raise BundleError(f"{latest} names version {version!r}, which has no manifest")
    raise BundleError(f"{path} is neither a bundle version (no {MANIFEST}) nor a root (no {LATEST})")


@dataclass
class CSR:
    """Rows of item indices per user (compressed sparse rows, no values)."""

    indptr: np.ndarray  # int64[n_users + 1]
    indices: np.ndarray  # int64[nnz]

    def row(self, r: int) -> np.ndarray:
        return self.indices[self.indptr[r] : self.indptr[r + 1]]


@dataclass
class Bundle:
    """Everything a service needs, loaded from one version directory."""

    path: Path
    manifest: dict[str, Any]
    spec: FeatureSpec
    item_ids: list[str]
    titles: list[str]
    genres: list[list[str]]
    creators: list[str]
    flags: list[list[str]]
    owners: list[str]
    user_ids: list[str]
    user_features: dict[str, list[Any]]
    item_embeddings: np.ndarray  # float32[n_items, d_tt], L2-normalised
    mf_item_factors: np.ndarray  # float32[n_items, d_mf]
    mf_user_factors: np.ndarray  # float32[n_users, d_mf]
    content: np.ndarray  # float32[n_items, d_content], L2-normalised rows
    popularity: np.ndarray  # float32[n_items], positive interactions in training
    user_pos: CSR  # positives, most recent first
    user_seen: CSR  # every item the user interacted with in training
    user_neg: CSR  # explicit negatives
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # OPTIONAL_ARRAY_FILES present
    item_index: dict[str, int] = field(default_factory=dict)
    user_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        self.user_index = {user: u for u, user in enumerate(self.user_ids)}

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def file(self, name: str) -> Path:
        return self.path / name

    def user_demographics(self, user_row: int) -> dict[str, Any]:
        return {key: values[user_row] for key, values in self.user_features.items()}


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Load a version directory (or the LATEST of a root) and check it."""
    vdir = resolve_version_dir(path)
    manifest = json.loads((vdir / MANIFEST).read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{vdir}: format_version {manifest.get('format_version')} != {FORMAT_VERSION}"
        )
    files: dict[str, str] = manifest["files"]
    for name, digest in files.items():
        fpath = vdir / name
        if not fpath.is_file():
            raise BundleError(f"{vdir}: missing file {name}")
        if verify and sha256_file(fpath) != digest:
            raise BundleError(f"{vdir}: checksum mismatch for {name}")
    # Loaded into (writable) memory, not memory-mapped: Numba compiles a separate
    # signature for read-only arrays, which warm-up would not cover. The ANN index, the
    # largest artefact, is memory-mapped by the candidate tier.
    arrays = {name: np.load(vdir / f"{name}.npy") for name in ARRAY_FILES}
    extras = {n: np.load(vdir / f"{n}.npy") for n in OPTIONAL_ARRAY_FILES if f"{n}.npy" in files}
    catalog = json.loads((vdir / "catalog.json").read_text())
    users = json.loads((vdir / "users.json").read_text())
    bundle = Bundle(
        path=vdir,
        manifest=manifest,
        spec=FeatureSpec.from_json(manifest["features"]),
        item_ids=catalog["item_ids"],
        titles=catalog["titles"],
        genres=catalog["genres"],
        creators=catalog["creators"],
        flags=catalog["flags"],
        owners=catalog["owners"],
        user_ids=users.pop("user_ids"),
        user_features=users,
        item_embeddings=np.ascontiguousarray(arrays["item_embeddings"], dtype=np.float32),
        mf_item_factors=np.ascontiguousarray(arrays["mf_item_factors"], dtype=np.float32),
        mf_user_factors=np.ascontiguousarray(arrays["mf_user_factors"], dtype=np.float32),
        content=np.ascontiguousarray(arrays["content"], dtype=np.float32),
        popularity=np.ascontiguousarray(arrays["popularity"], dtype=np.float32),
        user_pos=CSR(arrays["user_pos_indptr"], arrays["user_pos_indices"]),
        user_seen=CSR(arrays["user_seen_indptr"], arrays["user_seen_indices"]),
        user_neg=CSR(arrays["user_neg_indptr"], arrays["user_neg_indices"]),
        extras=extras,
    )
    _check_shapes(bundle)
    return bundle


def _check_shapes(b: Bundle) -> None:
    n, u = b.n_items, len(b.user_ids)
    expect = {
        "item_embeddings": (b.item_embeddings.shape[0], n),
        "mf_item_factors": (b.mf_item_factors.shape[0], n),
        "mf_user_factors": (b.mf_user_factors.shape[0], u),
        "content": (b.content.shape[0], n),
        "popularity": (b.popularity.shape[0], n),
        "user_pos_indptr": (b.user_pos.indptr.shape[0], u + 1),
        "user_seen_indptr": (b.user_seen.indptr.shape[0], u + 1),
        "user_neg_indptr": (b.user_neg.indptr.shape[0], u + 1),
        "titles": (len(b.titles), n),
    }
    for name, arr in b.extras.items():
        expect[name] = (arr.shape[-1] if name == "regional_popularity" else arr.shape[0], n)
    for name, (got, want) in expect.items():
        if got != want:
            raise BundleError(f"{b.path}: {name} has {got} rows, expected {want}")
    neighbours = b.extras.get("item_neighbours")  # read by a kernel without bounds checks
    if neighbours is not None and neighbours.size and (neighbours.min() < -1 or neighbours.max() >= n):
        raise BundleError(f"{b.path}: item_neighbours holds ids outside [-1, {n})")
    dim = int(b.manifest["two_tower"]["dim"])
    if b.item_embeddings.shape[1] != dim:
        raise BundleError(f"{b.path}: item_embeddings dim {b.item_embeddings.shape[1]} != {dim}")


def check_user_tower(bundle: Bundle, session: Any = None) -> None:
    """The ONNX user tower takes the inputs recsys.features encodes (names, and the fixed
    dims: history length, user fields) and returns the manifest's embedding dim; raises
    BundleError naming what differs. Both services run it before a bundle serves (at start
    and on hot reload), so the tiers accept or refuse a version alike. `session`: an
    onnxruntime.InferenceSession already open on the file (else one is opened here)."""
    if session is None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(bundle.file("user_tower.onnx")), opts,
                                           providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for an unreadable model
            raise BundleError(f"{bundle.path}: user_tower.onnx does not load: {e}") from None
    h, dim = bundle.spec.history_length, int(bundle.manifest["two_tower"]["dim"])
    want = {"hist_items": h, "hist_mask": h, "user_cats": len(USER_FIELDS)}
    if bundle.spec.search_dim:  # trained with searches (recsys.features)
        want["search_profile"] = bundle.spec.search_dim
    got = {i.name: i.shape for i in session.get_inputs()}
    if set(got) != set(want):
        raise BundleError(f"{bundle.path}: user_tower.onnx inputs {sorted(got)} != {sorted(want)}")
    for name, width in want.items():
        shape = got[name]
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != width):
            raise BundleError(f"{bundle.path}: user_tower.onnx input {name} shape {shape}, want [batch, {width}]")
    outputs = session.get_outputs()
    if not outputs:
        raise BundleError(f"{bundle.path}: user_tower.onnx has no output")
    shape = outputs[0].shape
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != dim):
        raise BundleError(f"{bundle.path}: user_tower.onnx output {outputs[0].name} shape {shape}, want [batch, {dim}]")


def new_version_name(fingerprint: str, now: dt.datetime | None = None) -> str:
    """`YYYYmmddTHHMMSSZ-<8 hex of the data fingerprint>`: sortable and traceable."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{fingerprint[:8]}"


class BundleWriter:
    """Collects a bundle's files in a temporary directory and publishes it atomically.

    with BundleWriter(root, version) as w:
        w.save_array("popularity", arr); w.save_json("catalog.json", {...}); ...
        w.publish(manifest)          # checksums added; rename; LATEST replaced
    """

    def __init__(self, root: str | Path, version: str) -> None:
        self.root = Path(root)
        self.version = version
        self.root.mkdir(parents=True, exist_ok=True)
        if (self.root / version).exists():
            raise BundleError(f"bundle version {version} already exists in {self.root}")
        self.tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=self.root))

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, name: str) -> Path:
        return self.tmp / name

    def save_array(self, name: str, array: np.ndarray) -> None:
        np.save(self.tmp / f"{name}.npy", np.ascontiguousarray(array))

    def save_json(self, name: str, data: Any) -> None:
        (self.tmp / name).write_text(json.dumps(data, ensure_ascii=False))

    def publish(self, manifest: dict[str, Any], *, make_latest: bool = True) -> Path:
        missing = [n for n in ARRAY_FILES if not (self.tmp / f"{n}.npy").is_file()]
        if missing:
            raise BundleError(f"bundle {self.version} lacks arrays {missing}")
        files = {
            p.name: sha256_file(p) for p in sorted(self.tmp.iterdir()) if p.name != MANIFEST
        }
        manifest = dict(manifest, format_version=FORMAT_VERSION, version=self.version, files=files)
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        for p in self.tmp.iterdir():
            _fsync_file(p)
        final = self.root / self.version
        os.chmod(self.tmp, 0o755)  # mkdtemp makes 0700; serving may run as another uid
        os.rename(self.tmp, final)
        if make_latest:
            set_latest(self.root, self.version)
        return final


def set_latest(root: Path, version: str) -> None:
    """Point ROOT/LATEST at `version` atomically (write a temp file, fsync, os.replace)."""
    tmp = root / f".{LATEST}.tmp"
    tmp.write_text(version + "\n")
    _fsync_file(tmp)
    os.replace(tmp, root / LATEST)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
