"""ranking_svc.wire: Retrieve's answer read through the RetrieveResponseView (candidates as
wire bytes, catalogue indices from their heads) gives exactly what the full RetrieveResponse
parse gives: over random responses, over encodings other than the candidate tier's, and
over the real candidate tier's candidates for the session bundle."""

from __future__ import annotations

import random
import struct

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError

from ranking_svc.server import CandidateRejected
from ranking_svc.wire import RetrieveResponseView, RetrieveStub, decode_retrieve, item_heads
from recsys.v1 import candidate_pb2

SOURCES = ("two_tower", "item_to_item", "popular", "trending", "regional", "fresh")


def full_parse(raw: bytes, item_index: dict[str, int]) -> dict:
    """What the field-by-field reading of a parsed RetrieveResponse gives (the old path)."""
    r = candidate_pb2.RetrieveResponse.FromString(raw)
    return {
        "index": [item_index.get(c.item_id, -1) for c in r.candidates],
        "ids": [c.item_id for c in r.candidates],
        "scores": [c.two_tower_score for c in r.candidates],
        "sources": [[s.source for s in c.sources] for c in r.candidates],
        "embedding": np.asarray(r.user_embedding, dtype=np.float32),
    }


def view_parse(raw: bytes, item_index: dict[str, int], read_first: str = "index") -> dict:
    got = decode_retrieve(RetrieveResponseView.FromString(raw))
    index = got.index_in(item_index).tolist() if read_first == "index" else None
    out = {
        "ids": list(got.item_ids),
        "scores": list(got.two_tower_scores),
        "sources": [list(s) for s in got.sources],
        "embedding": got.user_embedding,
    }
    out["index"] = index if index is not None else got.index_in(item_index).tolist()
    return out


def assert_same(raw: bytes, item_index: dict[str, int], case: str, read_first: str = "index") -> None:
    want, got = full_parse(raw, item_index), view_parse(raw, item_index, read_first)
    for key in ("index", "ids", "scores", "sources"):
        assert got[key] == want[key], f"{case}: {key} differs from the full parse"
    assert got["embedding"].dtype == np.float32 and np.array_equal(got["embedding"], want["embedding"]), case


def catalogue(rng: random.Random) -> list[str]:
    """Ids of every shape the heads table must handle: short, UTF-8 beyond ASCII, 127 and
    128+ bytes (a two-byte length), punctuation."""
    ids = [f"i{n:06d}" for n in range(40)]
    ids += ["é", "item-ü-42", "x" * 126, "y" * 127, "z" * 128, "w" * 300, "🎬film", "a.b_c-d"]
    rng.shuffle(ids)
    return ids


def random_response(rng: random.Random, ids: list[str]) -> candidate_pb2.RetrieveResponse:
    r = candidate_pb2.RetrieveResponse(bundle_version="v-test", history_used=rng.randint(0, 5),
                                       cold_start=rng.random() < 0.3)
    pool = ids + ["unknown", "", "u" * 200, "ü-unknown"]
    for item_id in rng.sample(pool, rng.randint(0, len(pool))):
        c = r.candidates.add(item_id=item_id, two_tower_score=rng.choice([0.0, rng.uniform(-1, 1), 1e30]))
        for name in rng.sample(SOURCES, rng.randint(0, len(SOURCES))):
            c.sources.add(source=name, score=rng.choice([0.0, rng.uniform(-5, 5)]))
    r.user_embedding.extend(rng.uniform(-1, 1) for _ in range(rng.choice([0, 3, 32])))
    return r


def test_view_matches_the_full_parse_over_random_responses():
    rng = random.Random(7)
    ids = catalogue(rng)
    item_index = {item_id: i for i, item_id in enumerate(ids)}
    for case in range(300):
        raw = random_response(rng, ids).SerializeToString()
        assert_same(raw, item_index, f"case {case}", read_first=rng.choice(["index", "details"]))


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    """One field, encoded by hand: tag, then the payload (length-prefixed for type 2)."""
    tag = bytes([number << 3 | wire_type])
    if wire_type == 2:
        n, prefix = len(payload), bytearray()
        while n > 0x7F:
            prefix.append(n & 0x7F | 0x80)
            n >>= 7
        prefix.append(n)
        return tag + bytes(prefix) + payload
    return tag + payload


def _source(name: str, score: float) -> bytes:
    return _field(3, 2, _field(1, 2, name.encode()) + _field(2, 5, struct.pack("<f", score)))


def test_view_matches_the_full_parse_over_other_encodings():
    """Candidates encoded as the candidate tier never does, but protobuf allows: the heads
    table misses them and the full decode answers, never a wrong index."""
    ids = ["i0", "i1", "i2", "long" * 40]
    item_index = {item_id: i for i, item_id in enumerate(ids)}
    i0, i1, i2, long_id = (_field(1, 2, x.encode()) for x in ids)
    score = _field(2, 5, struct.pack("<f", 0.5))
    unknown = _field(9, 0, b"\x05") + _field(10, 2, b"\x0a\x02i0")  # unknown fields, one looking like a head
    candidates = [
        score + i1 + _source("popular", 1.0),  # score before the id
        _source("trending", 2.0) + i2,  # sources before the id
        unknown + i0,  # unknown fields first
        i0 + unknown + _source("fresh", 0.0),  # unknown fields after the head
        score,  # no item_id at all (proto3 leaves an empty id out)
        b"",  # an empty Candidate: fewer than 2 bytes, no head to read
        long_id + b"".join(_source(s, 1.0) for s in SOURCES * 4),  # 2-byte lengths
        _field(1, 2, "i9".encode()) + score,  # an id the bundle does not know
    ]
    raw = b"".join(_field(1, 2, c) for c in candidates)
    raw += _field(4, 2, struct.pack("<3f", 0.25, -1.0, 2.0))  # packed user_embedding
    raw += _field(2, 2, b"v1") + _field(5, 0, b"\x01")  # bundle_version, cold_start
    assert_same(raw, item_index, "hand-encoded")
    assert_same(raw, item_index, "hand-encoded, details first", read_first="details")
    # unpacked user_embedding (one fixed32 field per value) is valid protobuf too
    raw = _field(1, 2, i0) + b"".join(_field(4, 5, struct.pack("<f", v)) for v in (1.0, 2.0))
    assert_same(raw, item_index, "unpacked embedding")


def test_the_real_candidate_tiers_answers_decode_alike(bundle, retriever):
    """The session bundle's candidates from the real in-process Retriever, as the bytes
    the candidate tier's servicer sends (its wire encoder, item_id first)."""
    from candidate_svc.server import decode_retrieve as decode_request
    from candidate_svc.server import encode_wire

    for u in range(0, min(len(bundle.user_ids), 40), 4):
        row = bundle.user_index[bundle.user_ids[u]]
        history = [bundle.item_ids[i] for i in bundle.user_pos.row(row)[: bundle.spec.history_length]]
        request = candidate_pb2.RetrieveRequest(user_id=bundle.user_ids[u], history_item_ids=history,
                                                num_candidates=150, request_time_ms=1_700_000_000_000)
        (result,) = retriever.retrieve([decode_request(request, bundle)])
        raw = encode_wire(result, bundle)[0]
        assert_same(raw, bundle.item_index, f"user {u}")
        parsed = RetrieveResponseView.FromString(raw)
        assert (decode_retrieve(parsed).index_in(bundle.item_index) >= 0).all(), "every proposed id is the bundle's"
        assert item_heads(bundle.item_index).lookup(parsed.candidates).min() >= 0, "every head found by the table"


def test_a_malformed_candidate_is_refused_as_the_full_parse_would():
    raw = _field(1, 2, b"\x0a\x05i0")  # item_id's length runs past the candidate's end
    with pytest.raises(DecodeError):
        candidate_pb2.RetrieveResponse.FromString(raw)
    got = decode_retrieve(RetrieveResponseView.FromString(raw))
    with pytest.raises(CandidateRejected) as e:
        got.index_in({"i0": 0})
    assert e.value.code == grpc.StatusCode.INTERNAL


def test_heads_table_is_built_once_per_bundle_index():
    index = {"a": 0, "b": 1}
    assert item_heads(index) is item_heads(index)
    assert item_heads(index).heads == {b"\x0a\x01a": 0, b"\x0a\x01b": 1}
    assert item_heads({"a": 0, "b": 1}) is not item_heads(index), "keyed by the index object, not its value"
    assert item_heads(index).cut is not None and item_heads({"a": 0, "bb": 1}).cut is None


def test_one_width_catalogue_matches_the_full_parse():
    """Ids of one width take the fixed-slice lookup: ids of other widths (a catalogue id's
    prefix, or it extended), unknown ids of the same width and other encodings still decode
    as the full parse does."""
    rng = random.Random(11)
    ids = [f"i{n:05d}" for n in range(60)]
    item_index = {item_id: i for i, item_id in enumerate(ids)}
    assert item_heads(item_index).cut is not None
    others = ["i0000", "i000001", "i00001x", "j00001", "", "ü0001", "i" * 200]
    for case in range(200):
        r = random_response(rng, ids + others)
        assert_same(r.SerializeToString(), item_index, f"case {case}", read_first=rng.choice(["index", "details"]))


def test_stub_parses_retrieve_answers_as_the_view():
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        raw = candidate_pb2.RetrieveResponse(candidates=[candidate_pb2.Candidate(item_id="i0")]).SerializeToString()
        parsed = RetrieveStub(channel).parse_response(raw)
        assert isinstance(parsed, RetrieveResponseView) and list(parsed.candidates) == [b"\x0a\x02i0"]
    finally:
        channel.close()
