"""A tiny randomly initialised BERT (hidden 32, 2 layers) with a word-level WordPiece
tokenizer built in the test from a word list: no download. `make_tiny_bert(dir, words)`
writes a Hugging Face model directory that `recsys export-encoder` accepts.

`bag_of_words=True` zeroes the position and token-type embeddings and the output
projections of every attention and feed-forward block, so each layer passes its input
through (residual + LayerNorm) and a sentence vector is, by construction, the mean of its
words' normalised embeddings: texts that share words are close. A fully random BERT has no
such property (its sentence vectors are nearly parallel and their differences arbitrary),
so tests of *what the search signal does* use this one; export and parity tests use both."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def make_tiny_bert(directory: Path, words: Iterable[str], seed: int = 0, bag_of_words: bool = False) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate([*SPECIALS, *sorted({w.lower() for w in words} - set(SPECIALS))])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.save(str(directory / "tokenizer.json"))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64,
                        initializer_range=1.0 if bag_of_words else 0.02)
    model = BertModel(config).eval()
    if bag_of_words:
        with torch.no_grad():
            model.embeddings.position_embeddings.weight.zero_()
            model.embeddings.token_type_embeddings.weight.zero_()
            for layer in model.encoder.layer:
                for proj in (layer.attention.output.dense, layer.output.dense):
                    proj.weight.zero_()
                    proj.bias.zero_()
    model.save_pretrained(str(directory))
    return directory
