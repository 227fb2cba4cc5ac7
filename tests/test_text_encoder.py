"""The search-history encoder: a tiny random BERT built here (no download), exported by
`recsys export-encoder`, run by recsys.text_encoder (tokenizers + onnxruntime) and checked
against PyTorch; the query cache; the recency-weighted search profile."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.text_encoder import TextEncoder, TextEncoderError, normalise_query, search_profile
from tests.tiny_bert import make_tiny_bert

WORDS = "space adventure robots aliens romantic comedy paris love ocean documentary nature history war".split()
TEXTS = ["space adventure", "robots and aliens in space", "romantic comedy in paris", "x",
         "a documentary about the ocean, nature and its history"]
PARITY = 1e-4  # max |torch - onnxruntime| of a pooled sentence vector


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    pytest.importorskip("transformers", reason="the export needs the train extra (make test installs it)")
    from recsys.cli import main

    root = tmp_path_factory.mktemp("tiny-bert")
    src = make_tiny_bert(root / "src", WORDS)
    assert main(["export-encoder", str(src), str(root / "encoder")]) == 0
    return src, root / "encoder"


def test_export_writes_the_encoder_directory_and_records_parity(tiny_encoder_dir):
    _, out = tiny_encoder_dir
    meta = json.loads((out / "encoder.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "model.onnx", "tokenizer.json"]
    assert meta["dim"] == 32 and meta["max_length"] == 64, "max_length is capped by max_position_embeddings"
    assert meta["parity_max_abs_diff"] <= PARITY, f"parity above {PARITY}"
    assert len(meta["model_sha256"]) == 64


def test_onnx_matches_pytorch_on_padded_batches(tiny_encoder_dir):
    from transformers import AutoModel

    from training.text_encoder_export import _Encoder, torch_sentence_vectors

    src, out = tiny_encoder_dir
    enc = TextEncoder(out)
    wrapper = _Encoder(AutoModel.from_pretrained(str(src), local_files_only=True).eval(), True).eval()
    want = torch_sentence_vectors(wrapper, enc, TEXTS)
    got = enc.encode_uncached(TEXTS)
    assert np.abs(got - want).max() <= PARITY, f"ONNX vs PyTorch above {PARITY}"
    # one text alone (no padding) gives the vector it has inside a padded batch
    alone = np.vstack([enc.encode_uncached([t]) for t in TEXTS])
    assert np.abs(alone - got).max() <= 1e-5, "padding changed a sentence vector (mask ignored?)"
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5), "rows must be unit vectors"


def test_similar_queries_are_closer_than_unrelated_ones(tiny_encoder_dir):
    enc = TextEncoder(tiny_encoder_dir[1])
    v = enc.encode(["space robots aliens", "aliens robots space adventure", "romantic comedy paris love"])
    assert v[0] @ v[1] > v[0] @ v[2], "shared words must make queries closer even in a random BERT"


def test_cache_encodes_each_normalised_query_once(tiny_encoder_dir):
    enc = TextEncoder(tiny_encoder_dir[1], cache_size=2)
    first = enc.encode(["space adventure", "space adventure", "paris"])
    s = enc.stats()
    assert (s.hits, s.misses, s.size) == (0, 3, 2), "a repeat inside one call is a miss but one entry"
    again = enc.encode(["  space\tadventure ", "paris"])
    assert enc.stats().hits == 2 and normalise_query("  space\tadventure ") == "space adventure"
    assert np.array_equal(again, first[[0, 2]]), "a cached vector must equal the computed one"
    enc.encode(["ocean"])  # capacity 2: evicts the least recently used ("space adventure")
    enc.encode(["space adventure"])
    s = enc.stats()
    assert (s.hits, s.misses, s.size, s.capacity) == (2, 5, 2, 2)


def test_missing_files_are_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(TextEncoderError, match="model.onnx, encoder.json"):
        TextEncoder(tmp_path)


def test_search_profile_is_the_recency_weighted_mean():
    day = 86_400_000
    v = np.eye(3, dtype=np.float32)
    now = 100 * day
    got = search_profile(v[:2], [now, now - 7 * day], now, half_life_ms=7 * day)
    want = np.array([1.0, 0.5, 0.0]) / np.sqrt(1.25)  # weights 1 and 0.5 ** (7 / 7)
    assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(search_profile(v[:1], [now + day], now), v[0]), "future timestamps weigh 1"
    assert search_profile(np.zeros((0, 3), np.float32), [], now).shape == (3,)
