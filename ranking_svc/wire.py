"""The ranking tier's protobuf wire work, kept out of the per-candidate Python loops.

Retrieve's answer is read through a *view* of RetrieveResponse: the same field numbers,
with each Candidate kept as its wire bytes (`repeated bytes`), so upb parses the response
in one call without building a message per candidate. The candidates' catalogue indices
come from those bytes by one dict lookup each: the candidate tier writes item_id first
(candidate_svc/server.py `_candidates_wire`), so a candidate's bytes start with item_id's
tag, length and bytes, and the bundle's table of those heads maps them to indices. A head
the table does not hold (an unknown id, an id of 128+ bytes, another field first) is
decoded by upb as a whole Candidate. Sources and two-tower scores are decoded only for the
candidates that are read (the k a Recommend returns).

What the full parse did that this does not: a head found in the table is taken as the
candidate's item_id without reading the rest of its bytes, so a Candidate that repeats
field 1 (legal protobuf, last one wins; no encoder of ours writes it) would keep its first
id, and a malformed candidate outside the returned k is not noticed (one that is read is
refused, as INTERNAL, as before).

tests/test_ranking_wire.py pins the view against the full RetrieveResponse over random
responses, hand-made encodings and the real candidate tier's candidates.
"""

from __future__ import annotations

from itertools import repeat
from operator import itemgetter
from typing import Mapping, Sequence

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from ranking_svc.ranker import CandidateList, LazyList
from recsys.per_object import PerObject
from recsys.v1 import candidate_pb2

RETRIEVE = "/recsys.v1.CandidateService/Retrieve"


def _view_class():
    """RetrieveResponseView: RetrieveResponse's `candidates` as `repeated bytes` and its
    `user_embedding`, under their field numbers in the contract; the other fields stay
    unknown fields (kept, never read)."""
    fields = candidate_pb2.RetrieveResponse.DESCRIPTOR.fields_by_name
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="recsys/v1/ranking_svc_retrieve_view.proto",
                                               package="recsys.v1.ranking_svc_view", syntax="proto3")
    view = proto.message_type.add(name="RetrieveResponseView")
    view.field.add(name="candidates", number=fields["candidates"].number, type=F.TYPE_BYTES, label=F.LABEL_REPEATED)
    view.field.add(name="user_embedding", number=fields["user_embedding"].number, type=F.TYPE_FLOAT,
                   label=F.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(
        "recsys.v1.ranking_svc_view.RetrieveResponseView"))


RetrieveResponseView = _view_class()


class RetrieveStub:
    """CandidateService.Retrieve whose answer is parsed as a RetrieveResponseView."""

    parse_response = staticmethod(RetrieveResponseView.FromString)  # what a call does with the bytes

    def __init__(self, channel: grpc.Channel) -> None:
        self.Retrieve = channel.unary_unary(
            RETRIEVE,
            request_serializer=candidate_pb2.RetrieveRequest.SerializeToString,
            response_deserializer=self.parse_response,
            _registered_method=True,
        )


_ITEM_ID_TAG = 0x0A  # Candidate.item_id: field 1, length-delimited


class HeadTable:
    """A bundle's candidate heads: item_id's tag, one-byte length and UTF-8 bytes ->
    catalogue index, for ids under 128 bytes (longer ones take the full decode). When every
    head has the same length (ids of one width, the usual catalogue), `cut` slices that
    many bytes off any candidate in C; a candidate whose id has another length then gives
    bytes whose length byte matches no head, so it misses and takes the full decode."""

    def __init__(self, item_index: Mapping[str, int]) -> None:
        self.heads: dict[bytes, int] = {}
        for item_id, i in item_index.items():
            raw = item_id.encode()
            if len(raw) < 0x80:
                self.heads[bytes((_ITEM_ID_TAG, len(raw))) + raw] = i
        widths = {len(h) for h in self.heads}
        self.cut = itemgetter(slice(0, widths.pop())) if len(widths) == 1 else None

    def lookup(self, blobs: Sequence[bytes]) -> np.ndarray:
        """int64 index per Candidate's bytes, -1 where no head matched."""
        if self.cut is not None:
            heads = map(self.cut, blobs)
        else:
            try:  # a Candidate of fewer than 2 bytes (no item_id) has no head to read
                heads = [c[:2 + c[1]] for c in blobs]
            except IndexError:
                return np.full(len(blobs), -1, dtype=np.int64)
        return np.fromiter(map(self.heads.get, heads, repeat(-1)), dtype=np.int64, count=len(blobs))


# built for each bundle served (ranking_svc.server: at start and on reload); more bundles
# served at once than this (A/B variants) would rebuild tables on requests
item_heads: PerObject[Mapping[str, int], HeadTable] = PerObject(HeadTable, keep=8)


def candidate_indices(blobs: Sequence[bytes], item_index: Mapping[str, int]) -> np.ndarray:
    """int64 catalogue index of each Candidate's wire bytes (-1 for an id the bundle does
    not know): the head table first, the full decode for whatever it misses."""
    cand = item_heads(item_index).lookup(blobs)
    for j in np.flatnonzero(cand < 0).tolist():  # unknown ids, or encoded other than the candidate tier does
        cand[j] = item_index.get(_candidate(blobs[j]).item_id, -1)
    return cand


def _candidate(blob: bytes) -> candidate_pb2.Candidate:
    try:
        return candidate_pb2.Candidate.FromString(blob)
    except DecodeError as e:  # what the full parse would have refused: the tier's answer is malformed
        from ranking_svc.server import CandidateRejected  # (server imports this module)

        raise CandidateRejected(grpc.StatusCode.INTERNAL, f"malformed Candidate in RetrieveResponse: {e}") from None


def decode_retrieve(response) -> CandidateList:
    """A RetrieveResponseView as the Ranker reads it: ids, scores and sources decoded per
    candidate on first read; `index_in` gives every candidate's catalogue index at once."""
    blobs = response.candidates
    n = len(blobs)
    return CandidateList(
        item_ids=LazyList(n, lambda i: _candidate(blobs[i]).item_id),
        two_tower_scores=LazyList(n, lambda i: _candidate(blobs[i]).two_tower_score),
        sources=LazyList(n, lambda i: [s.source for s in _candidate(blobs[i]).sources]),
        user_embedding=np.asarray(response.user_embedding, dtype=np.float32),
        index_in=lambda item_index: candidate_indices(blobs, item_index),
    )
