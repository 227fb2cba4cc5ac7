"""The Retrieve response encoder over provenance arrays (candidate_svc/server.py) against the
encoder it replaced, which walked one dict per candidate, and against the response built
field by field: the same request must give the same bytes."""

from __future__ import annotations

import struct
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import onnxruntime  # noqa: F401  (before usearch, as in test_candidate_sources)
import pytest

from candidate_svc.merge import Provenance, merge, quotas_from_fractions
from candidate_svc.retrieval import Candidates
from candidate_svc.server import _source_score_prefix, _varint, encode_wire
from candidate_svc.sources import POPULAR, SOURCE_ORDER, Proposal
from recsys.v1 import candidate_pb2
from tests.test_candidate_retrieval import _encode_field_by_field as _field_by_field
from tests.test_candidate_sources import _merge_item_at_a_time

_F32 = struct.Struct("<f")


def _encode_per_dict(items, two_tower_scores, sources, user_embedding, history_used, cold_start, bundle):
    """The encoder as it was before provenance became arrays (one dict per candidate, wire
    bytes joined candidate by candidate): the twin the array encoder must equal."""
    ids = bundle.item_ids
    scores = two_tower_scores.astype("<f4").tobytes()
    per_source: dict[str, int] = {}
    parts: list[bytes] = []
    with np.errstate(over="ignore"):  # float64 scores beyond FLT_MAX: inf
        for at, item, row in zip(range(0, len(scores), 4), items.tolist(), sources):
            item_id = ids[item].encode()
            fields = [b"\x0a", _varint(len(item_id)), item_id, b"\x15", scores[at : at + 4]]
            for name, score in row.items():
                per_source[name] = per_source.get(name, 0) + 1
                fields.append(_source_score_prefix(name))
                fields.append(_F32.pack(float(np.float32(score))))
            body = b"".join(fields)
            parts += (b"\x0a", _varint(len(body)), body)
    response = candidate_pb2.RetrieveResponse.FromString(b"".join(parts))
    response.bundle_version = bundle.version
    response.history_used = history_used
    response.cold_start = cold_start
    response.user_embedding.extend(user_embedding.tolist())
    return response, per_source


def _bundle(rng, n_items: int) -> SimpleNamespace:
    alphabet = list("abcxyz0129_-") + ["é", "€", "😀"]
    lengths = rng.choice([0, 1, 5, 12, 60, 127, 128, 200, 5000], size=n_items, p=[.02, .05, .3, .3, .1, .05, .05, .1, .03])
    ids = ["".join(rng.choice(alphabet, size=int(n))) for n in lengths]
    version = rng.choice(["", "v" + "9" * int(rng.integers(1, 200))])  # none, or a multi-byte length
    return SimpleNamespace(item_ids=ids, version=str(version))


def _random_result(rng, bundle) -> Candidates:
    n_items = len(bundle.item_ids)
    n = min(int(rng.choice([0, 1, 3, 40, 300])), n_items)
    extra = ["x" * int(rng.choice([1, 130, 20_000])), "sóurce"]
    pool = list(SOURCE_ORDER) + extra
    names = tuple(rng.permutation(pool)[: int(rng.integers(0, len(pool) + 1))].tolist())
    k = len(names)
    dtype = np.float64 if rng.random() < 0.2 else np.float32
    values = rng.normal(size=(n, k)) * rng.choice([1e-3, 1.0, 1e30, 1e40], size=(n, k))
    values[rng.random((n, k)) < 0.05] = rng.choice([0.0, -0.0, np.inf, -np.inf, 3.4e38])
    proposed = rng.random((n, k)) < rng.uniform(0, 1)
    with np.errstate(over="ignore"):
        scores = np.where(proposed, values, np.nan).astype(dtype)
    lead = None
    if k and rng.random() < 0.5:
        lead = np.full(n, -1, np.int8)
        rows = rng.random(n) < 0.3
        lead[rows] = rng.integers(0, k, int(rows.sum()))
    items = rng.permutation(n_items)[:n].astype(np.int64)
    tt = (rng.normal(size=n) * rng.choice([1.0, 1e10], size=n)).astype(np.float32)
    return Candidates(items=items, two_tower_scores=tt, provenance=Provenance(names, scores, proposed, lead),
                      user_embedding=rng.normal(size=int(rng.choice([0, 8, 40]))).astype(np.float32),
                      history_used=int(rng.choice([rng.integers(0, 50), -rng.integers(1, 2**31 + 1), 2**31 - 1])),
                      cold_start=bool(rng.random() < 0.3))


def _check(result, bundle) -> None:
    raw, per_source = encode_wire(result, bundle)  # what Retrieve sends
    got = candidate_pb2.RetrieveResponse.FromString(raw)
    want, want_per_source = _encode_per_dict(result.items, result.two_tower_scores, result.sources,
                                             result.user_embedding, result.history_used, result.cold_start, bundle)
    assert got == want
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    assert got == _field_by_field(result, bundle)
    assert per_source == want_per_source


@pytest.mark.parametrize("seed", range(80))
def test_array_encoder_equals_the_per_dict_encoder_on_random_provenance(seed):
    """Any names (long ones: multi-byte lengths), any masks, lead columns, float64 scores
    beyond FLT_MAX, signed zeros and infinities, ids from empty to 5,000 bytes of UTF-8."""
    rng = np.random.default_rng(seed)
    bundle = _bundle(rng, int(rng.integers(1, 400)))
    _check(_random_result(rng, bundle), bundle)


def test_provenance_rows_keep_their_lead_first():
    prov = Provenance(("a", "b", "c"), np.array([[1, np.nan, 3], [4, 5, 6]], np.float32),
                      np.array([[True, False, True], [True, True, True]]), np.array([2, -1], np.int8))
    assert [list(d.items()) for d in prov.dicts()] == [[("c", 3.0), ("a", 1.0)], [("a", 4.0), ("b", 5.0), ("c", 6.0)]]
    assert [list(d) for d in prov.take(np.array([1, 0])).dicts()] == [["a", "b", "c"], ["c", "a"]]
    assert prov.counts() == {"a": 2, "b": 1, "c": 2}


@pytest.mark.parametrize("seed", range(40))
def test_merge_then_encode_equals_the_item_at_a_time_merge_and_per_dict_encoder(seed):
    """Random proposals through the array merge and encoder, against the item-at-a-time
    merge (tests/test_candidate_sources.py) and the per-dict encoder: identical bytes."""
    rng = np.random.default_rng(500 + seed)
    n_items = int(rng.integers(5, 200))
    bundle = _bundle(rng, n_items)
    excluded = rng.random(n_items) < rng.uniform(0, 0.5)
    num = int(rng.integers(1, n_items + 1))
    names = [s for s in SOURCE_ORDER if rng.random() < 0.8] or [SOURCE_ORDER[0]]
    pool = np.flatnonzero(~excluded)
    proposals = {}
    for name in names:
        take = rng.permutation(pool)[: rng.integers(0, len(pool) + 1)].astype(np.int64)
        proposals[name] = Proposal(take, np.sort(rng.normal(size=len(take)).astype(np.float32))[::-1].copy())
    fallback = (POPULAR, rng.permutation(n_items).astype(np.int64), rng.random(n_items).astype(np.float32))
    quotas = quotas_from_fractions(num, {n: rng.uniform(0, 0.4) for n in names})
    m = merge(proposals, quotas, num, excluded, fallback)
    items, sources, _ = _merge_item_at_a_time(proposals, quotas, num, excluded, fallback)
    order = rng.permutation(len(m.items))  # the Retriever reorders by two-tower score
    tt = rng.normal(size=len(order)).astype(np.float32)
    emb = rng.normal(size=4).astype(np.float32)
    result = Candidates(items=m.items[order], two_tower_scores=tt, provenance=m.provenance.take(order),
                        user_embedding=emb, history_used=3, cold_start=False)
    raw, per_source = encode_wire(result, bundle)
    got = candidate_pb2.RetrieveResponse.FromString(raw)
    want, want_per_source = _encode_per_dict(np.asarray(items, np.int64)[order], tt, [sources[i] for i in order],
                                             emb, 3, False, bundle)
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    assert per_source == want_per_source
    assert got == want


def test_a_history_used_beyond_int32_is_refused_not_wrapped():
    rng = np.random.default_rng(7)
    bundle = _bundle(rng, 20)
    result = _random_result(rng, bundle)
    for bad in (2**31, -(2**31) - 1):
        with pytest.raises(ValueError, match="history_used"):
            encode_wire(replace(result, history_used=bad), bundle)
