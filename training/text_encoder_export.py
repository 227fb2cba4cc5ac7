"""`recsys export-encoder SRC_DIR OUT_DIR`: a local Hugging Face / sentence-transformers
BERT-family model directory to the serving encoder directory (recsys/text_encoder.py),
once, offline. Nothing is fetched from a hub (`local_files_only=True`).

SRC_DIR holds config.json, the weights and tokenizer.json (a sentence-transformers model
directory such as all-MiniLM-L6-v2 has them at its top level). OUT_DIR gets model.onnx
(input_ids, attention_mask[, token_type_ids] -> last_hidden_state, batch and sequence
dims dynamic), a copy of tokenizer.json and encoder.json. The export is refused unless
onnxruntime's pooled sentence vectors match PyTorch's within `tolerance` on sample texts
of different lengths.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from recsys.bundle import sha256_file
from recsys.text_encoder import (
    DEFAULT_MAX_LENGTH,
    META_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    TextEncoder,
    mean_pool,
)

log = logging.getLogger(__name__)

PARITY_TEXTS = (
    "space adventure",
    "a quiet romantic comedy set in paris with a happy ending",
    "x",
    "documentaries about the deep ocean and its strange animals, narrated slowly",
)


class _Encoder(torch.nn.Module):
    """The transformer with named tensor inputs and one output: last_hidden_state."""

    def __init__(self, model: torch.nn.Module, with_types: bool) -> None:
        super().__init__()
        self.model = model
        self.with_types = with_types

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if self.with_types else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state


def max_length_of(src: Path) -> int:
    """sentence-transformers' max_seq_length, else the tokenizer's model_max_length (<= 512)."""
    st = src / "sentence_bert_config.json"
    if st.is_file():
        return int(json.loads(st.read_text()).get("max_seq_length") or DEFAULT_MAX_LENGTH)
    tc = src / "tokenizer_config.json"
    if tc.is_file():
        n = json.loads(tc.read_text()).get("model_max_length")
        if isinstance(n, int) and 0 < n <= 512:
            return n
    return DEFAULT_MAX_LENGTH


def export_encoder(src: str | Path, out: str | Path, tolerance: float = 1e-4,
                   texts: Sequence[str] = PARITY_TEXTS) -> dict[str, object]:
    """Write OUT (atomically: built beside it, then renamed) and return encoder.json."""
    from transformers import AutoModel

    src, out = Path(src), Path(out)
    if not (src / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"{src}: no {TOKENIZER_FILE} (a fast tokenizer is required)")
    model = AutoModel.from_pretrained(str(src), local_files_only=True)
    model.eval()
    with_types = getattr(model.config, "type_vocab_size", 0) > 0
    wrapper = _Encoder(model, with_types).eval()
    # positions past the model's table would index out of it: truncate there at the latest
    max_length = min(max_length_of(src), int(getattr(model.config, "max_position_embeddings", 512) or 512))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp.chmod(0o755)
        shutil.copyfile(src / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        dim = int(model.config.hidden_size)
        meta: dict[str, object] = {"dim": dim, "max_length": max_length, "source": f"{src.parent.name}/{src.name}",
                                   "model_type": str(model.config.model_type), "pooling": "mean", "normalize": True}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        _export_onnx(wrapper, with_types, tmp / MODEL_FILE)
        # parity: the serving path (tokenizers + onnxruntime + numpy pooling) vs PyTorch
        encoder = TextEncoder(tmp, cache_size=0)
        got = encoder.encode_uncached(list(texts))
        want = torch_sentence_vectors(wrapper, encoder, texts)
        diff = float(np.abs(got - want).max())
        if not diff <= tolerance:
            raise RuntimeError(f"encoder ONNX parity check failed: max |torch - onnx| = {diff:.3g} > {tolerance}")
        meta["parity_max_abs_diff"] = diff
        meta["model_sha256"] = sha256_file(tmp / MODEL_FILE)  # bundles record which encoder made their vectors
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("encoder %s -> %s: dim %d, parity max |diff| %.2g", src, out, dim, diff)
    return meta


def _export_onnx(wrapper: _Encoder, with_types: bool, path: Path) -> None:
    ids = torch.tensor([[2, 5, 7, 3], [2, 6, 3, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    args: tuple[torch.Tensor, ...] = (ids, mask, torch.zeros_like(ids)) if with_types else (ids, mask)
    names = ["input_ids", "attention_mask", "token_type_ids"][: len(args)]
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("sequence", min=1, max=4096)
    with torch.no_grad():
        torch.onnx.export(
            wrapper, args, str(path),
            input_names=names, output_names=["last_hidden_state"],
            dynamic_shapes=tuple({0: batch, 1: seq} for _ in args),
            dynamo=True, external_data=False, verbose=False,
        )


def torch_sentence_vectors(wrapper: torch.nn.Module, encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
    """The same texts, tokenised by the serving tokenizer, through PyTorch, pooled the same way."""
    encodings = encoder.tokenizer.encode_batch(list(texts))
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(texts), width), np.int64)
    mask = np.zeros((len(texts), width), np.int64)
    for r, e in enumerate(encodings):
        ids[r, : len(e.ids)] = e.ids
        mask[r, : len(e.ids)] = e.attention_mask
    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        extra = (torch.zeros_like(t_ids),) if getattr(wrapper, "with_types", False) else ()
        hidden = wrapper(t_ids, t_mask, *extra).numpy()
    return mean_pool(hidden, mask)
