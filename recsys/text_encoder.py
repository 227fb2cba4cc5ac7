"""The search-history encoder on the serving side: a BERT-family sentence encoder run with
onnxruntime, tokenised with the `tokenizers` library. No torch, no transformers, no hub:
everything comes from one local directory written once, offline, by
`recsys export-encoder` (training/text_encoder_export.py):

    DIR/model.onnx      input_ids, attention_mask[, token_type_ids] int64[B, T]
                        -> last_hidden_state float32[B, T, H]
    DIR/tokenizer.json  the Hugging Face fast tokenizer of the same model
    DIR/encoder.json    {"dim": H, "max_length": T_max, "source": ..., "parity_max_abs_diff": ...}

A sentence vector is the attention-masked mean of the last hidden states, L2-normalised
(sentence-transformers' "mean pooling", what all-MiniLM-L6-v2 was trained with). One
intra-op thread, as every serving model here (docs/ARCHITECTURE.md).

Each query is encoded once: an LRU cache keyed by the normalised query text (Unicode
NFKC, whitespace collapsed) holds the vectors, with hit/miss counters. A user's search
profile is the recency-weighted mean of their query vectors (`search_profile`).
"""

from __future__ import annotations

import json
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "encoder.json"
ENCODER_FILES = (MODEL_FILE, TOKENIZER_FILE, META_FILE)
DEFAULT_MAX_LENGTH = 128  # tokens; search queries are short, truncation bounds the worst case
SEARCH_HALF_LIFE_MS = 7 * 86_400_000  # a week-old search weighs half of one made now
MAX_SEARCHES = 20  # most recent queries in a user's search profile


class TextEncoderError(Exception):
    """The encoder directory is missing a file or holds something unusable."""


def normalise_query(text: str) -> str:
    """The cache key and the text actually encoded: NFKC, whitespace collapsed, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    size: int
    capacity: int


class TextEncoder:
    """`encode(texts) -> float32[n, dim]`, unit rows (a text with no token gives zeros)."""

    def __init__(self, directory: str | Path, cache_size: int = 10_000) -> None:
        import onnxruntime as ort

        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TextEncoderError("a search encoder needs the `tokenizers` package: "
                                   "pip install 'recsys-serving[search]'") from None
        self.directory = Path(directory)
        missing = [f for f in ENCODER_FILES if not (self.directory / f).is_file()]
        if missing:
            raise TextEncoderError(f"{self.directory}: missing {', '.join(missing)} "
                                   "(write it with `recsys export-encoder SRC_DIR OUT_DIR`)")
        self.meta = json.loads((self.directory / META_FILE).read_text())
        self.dim = int(self.meta["dim"])
        self.max_length = int(self.meta.get("max_length") or DEFAULT_MAX_LENGTH)
        self.tokenizer = Tokenizer.from_file(str(self.directory / TOKENIZER_FILE))
        self.tokenizer.no_padding()  # batches are padded here, to the longest in the batch
        self.tokenizer.enable_truncation(max_length=self.max_length)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.directory / MODEL_FILE), opts,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = set(self.input_names) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown or "input_ids" not in self.input_names:
            raise TextEncoderError(f"{self.directory / MODEL_FILE}: inputs {self.input_names}, want input_ids, "
                                   "attention_mask[, token_type_ids]")
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        got = self.encode_uncached(["warm up"])
        if got.shape != (1, self.dim):
            raise TextEncoderError(f"{self.directory}: model gives shape {got.shape}, encoder.json says dim {self.dim}")

    @property
    def name(self) -> str:
        return str(self.meta.get("source") or self.directory.name)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._cache), self.cache_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32[n, dim] through the cache: each distinct normalised text not cached is
        encoded once, in one onnxruntime batch."""
        keys = [normalise_query(t) for t in texts]
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        with self._lock:
            for row, key in enumerate(keys):
                vec = self._cache.get(key)
                if vec is None:
                    todo.setdefault(key, []).append(row)
                    self._misses += 1
                else:
                    self._cache.move_to_end(key)
                    out[row] = vec
                    self._hits += 1
        if todo:
            fresh = self.encode_uncached(list(todo))
            with self._lock:
                for (key, rows), vec in zip(todo.items(), fresh, strict=True):
                    out[rows] = vec
                    self._cache[key] = vec.copy()  # a view would keep the whole batch alive
                    self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out

    def encode_uncached(self, texts: Sequence[str]) -> np.ndarray:
        """float32[n, dim]: tokenise, run the model once, mean-pool over the mask, L2-normalise."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self.tokenizer.encode_batch([normalise_query(t) for t in texts])
        width = max(1, max(len(e.ids) for e in encodings))
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            mask[row, :n] = e.attention_mask
            types[row, :n] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = self.session.run(None, {k: feeds[k] for k in self.input_names})[0]
        return mean_pool(hidden, mask)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sum_t m_t h_t / max(sum_t m_t, 1), rows L2-normalised (zero rows stay zero)."""
    m = mask.astype(np.float32)[:, :, None]
    pooled = (hidden.astype(np.float32) * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return np.ascontiguousarray(pooled / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def search_profile(vectors: np.ndarray, timestamps_ms: Sequence[int], now_ms: int,
                   half_life_ms: float = SEARCH_HALF_LIFE_MS) -> np.ndarray:
    """Recency-weighted mean of query vectors, L2-normalised; zeros for no query.

    w_i = 0.5 ** (max(0, now - t_i) / half_life); profile = sum_i w_i v_i / |sum_i w_i v_i|."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) == 0:
        return np.zeros(vectors.shape[1] if vectors.ndim == 2 else 0, dtype=np.float32)
    age = np.maximum(0.0, now_ms - np.asarray(timestamps_ms, dtype=np.float64))
    w = 0.5 ** (age / half_life_ms)
    profile = (w[:, None] * vectors).sum(axis=0)
    norm = float(np.linalg.norm(profile))
    return (profile / norm if norm > 0 else profile).astype(np.float32)


def load_text_encoder(directory: str, cache_size: int = 10_000) -> TextEncoder | None:
    """The configured encoder, or None when `directory` is empty (the search signal is off)."""
    return TextEncoder(directory, cache_size) if directory else None


@dataclass(frozen=True, eq=False)
class TextLayout:
    """Where a bundle's content vectors hold the encoded item text (manifest `content.text`,
    written by training.pipeline.add_item_text): columns offset..offset+dim, holding
    sqrt(share) * unit(v - center), center = the catalogue's mean text vector;
    model_sha256 names the encoder that made them."""

    offset: int
    dim: int
    share: float
    model_sha256: str = ""
    encoder: str = ""
    center: np.ndarray | None = None  # float32[dim]

    @classmethod
    def from_manifest(cls, manifest: dict) -> "TextLayout | None":
        t = (manifest.get("content") or {}).get("text")
        if not t:
            return None
        center = np.asarray(t["center"], dtype=np.float32) if t.get("center") else None
        return cls(int(t["offset"]), int(t["dim"]), float(t["share"]), str(t.get("model_sha256", "")),
                   str(t.get("encoder", "")), center)


class SearchProfiles:
    """A bundle's view of the search signal: a user's recent queries -> a unit vector in
    the encoder's space, added to the text part of the user's content profile."""

    def __init__(self, encoder: TextEncoder, layout: TextLayout, half_life_ms: float = SEARCH_HALF_LIFE_MS) -> None:
        self.encoder, self.layout, self.half_life_ms = encoder, layout, half_life_ms

    @classmethod
    def for_bundle(cls, manifest: dict, encoder: TextEncoder | None) -> "tuple[SearchProfiles | None, str]":
        """(profiles, why) for a bundle: None with the reason when the signal cannot be used."""
        if encoder is None:
            return None, "search encoder: off (no RECSYS_TEXT_ENCODER)"
        layout = TextLayout.from_manifest(manifest)
        if layout is None:
            return None, "search encoder: off for ranking (the bundle has no item text vectors: train --text-encoder)"
        if layout.dim != encoder.dim or (layout.model_sha256 and layout.model_sha256 != encoder.meta.get("model_sha256")):
            return None, (f"search encoder: off (the bundle's item texts were encoded by {layout.encoder!r}, "
                          f"dim {layout.dim}; configured {encoder.name!r}, dim {encoder.dim})")
        return cls(encoder, layout), f"search encoder: on ({encoder.name}, dim {encoder.dim})"

    def profile(self, searches: Sequence[tuple[str, int]], now_ms: int) -> np.ndarray:
        """The recency-weighted mean of the newest MAX_SEARCHES queries (query, time ms)."""
        recent = list(searches)[:MAX_SEARCHES]
        if not recent:
            return np.zeros(self.encoder.dim, dtype=np.float32)
        vectors = self.encoder.encode([q for q, _ in recent])
        if self.layout.center is not None:  # measured from the catalogue's mean, as item texts are
            vectors = vectors - self.layout.center
        return search_profile(vectors, [t for _, t in recent], now_ms, self.half_life_ms)

    def add_to(self, content_profile: np.ndarray, n_items: int, search: np.ndarray, n_searches: int) -> np.ndarray:
        """(n p + m e) / (n + m), e = the search vector placed in the text columns scaled by
        sqrt(share) as item rows are: each query counts as much as one profile item."""
        m = min(n_searches, MAX_SEARCHES)
        if m == 0 or not np.any(search):
            return content_profile
        lo = self.layout.offset
        out = content_profile.astype(np.float32) * n_items
        out[lo : lo + self.layout.dim] += m * np.sqrt(self.layout.share) * search
        return np.ascontiguousarray(out / (n_items + m), dtype=np.float32)
