"""CandidateService over gRPC: decode and validate, call the Retriever, encode.

The servicer is thin on purpose: all logic lives in candidate_svc.retrieval.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from dataclasses import replace

import grpc
import numpy as np

from candidate_svc.live_stats import ItemStatsReader
from candidate_svc.retrieval import Candidates, Request, Retriever
from candidate_svc.sources import SOURCE_ORDER
from recsys import metrics, tracing
from recsys import validation as v
from recsys.bundle import Bundle, load_bundle
from recsys.config import MAX_CANDIDATES, CandidateConfig
from recsys.features import UserInput
from recsys.grpc_server import Served, build_server
from recsys.metrics import ServerInterceptor
from recsys.reload import BundleWatcher, start_watcher
from recsys.security import ServerSecurity
from recsys.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

MAX_HISTORY = 500
MAX_EXCLUDE = 20_000
MAX_BATCH = 64
MAX_SEARCH_DIM = 4096


def user_input_from(features: common_pb2.UserFeatures, history: list[int], time_ms: int) -> UserInput:
    return UserInput(
        history=history,
        age=features.age,
        gender=features.gender,
        occupation=features.occupation,
        region=features.region,
        time_ms=time_ms,
    )


def search_input(values, search_dim: int, field: str) -> tuple[float, ...]:
    """The request's search profile for the user tower: () when empty, when the bundle's
    tower takes none (trained without searches) or takes another width (the tiers briefly
    serve different bundle versions during a rollout: the answer degrades to no search
    signal rather than failing); else its search_dim finite values."""
    if len(values) > MAX_SEARCH_DIM:
        raise v.InvalidArgument(field, f"has {len(values)} values, at most {MAX_SEARCH_DIM} allowed")
    if not values or len(values) != search_dim:
        return ()
    search = tuple(values)
    if not all(math.isfinite(x) for x in search):
        raise v.InvalidArgument(field, "holds a NaN or infinite value")
    norm = math.sqrt(math.fsum(x * x for x in search))
    if norm > 1.0 + 1e-3:
        raise v.InvalidArgument(field, f"must be L2-normalised (norm <= 1), got norm {norm:.4g}")
    return search


def decode_retrieve(req: candidate_pb2.RetrieveRequest, bundle: Bundle, prefix: str = "") -> Request:
    """Validate every field (raising InvalidArgument naming it) and map ids to indices."""
    v.check_id(req.user_id, f"{prefix}user_id", required=False)
    v.check_ids(req.history_item_ids, f"{prefix}history_item_ids", MAX_HISTORY)
    v.check_user_features(req.features, f"{prefix}features")
    v.check_time_ms(req.request_time_ms, f"{prefix}request_time_ms")
    v.check_range(req.num_candidates, f"{prefix}num_candidates", 1, MAX_CANDIDATES)
    v.check_ids(req.exclude_item_ids, f"{prefix}exclude_item_ids", MAX_EXCLUDE)
    search = search_input(req.search_profile, bundle.spec.search_dim, f"{prefix}search_profile")
    for name, count in req.source_quotas.items():
        if name not in SOURCE_ORDER:
            raise v.InvalidArgument(f"{prefix}source_quotas[{name!r}]", f"unknown source (one of {', '.join(SOURCE_ORDER)})")
        v.check_range(count, f"{prefix}source_quotas[{name!r}]", 0, MAX_CANDIDATES)
    index = bundle.item_index
    history = [index[i] for i in req.history_item_ids if i in index]
    exclude = np.fromiter((index[i] for i in req.exclude_item_ids if i in index), dtype=np.int64)
    return Request(
        user=replace(user_input_from(req.features, history, req.request_time_ms), search=search),
        num=req.num_candidates,
        exclude=exclude,
        user_id=req.user_id,
        quotas=dict(req.source_quotas) or None,
    )


_ONE_BYTE = [bytes((n,)) for n in range(128)]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _length_prefixed(tag: bytes, payload: bytes) -> bytes:
    n = len(payload)
    return tag + (_ONE_BYTE[n] if n < 128 else _varint(n)) + payload


@functools.lru_cache(maxsize=64)
def _source_score_prefix(name: str) -> bytes:
    """Candidate.sources entry (field 3) up to its score's 4 bytes: a SourceScore holding
    source (field 1, string) and the score's tag (field 2, fixed32)."""
    inner = _length_prefixed(b"\x0a", name.encode()) + b"\x15"
    return b"\x1a" + _varint(len(inner) + 4) + inner


def encode_candidates(result: Candidates, bundle: Bundle) -> candidate_pb2.RetrieveResponse:
    return encode_counted(result, bundle)[0]


class _ItemTable:
    """Per bundle, each item's Candidate head as wire bytes: item_id (field 1, string) and
    the tag of two_tower_score (field 2, fixed32). Built once per bundle (at start and on
    hot reload, see create_server), so a response gathers its candidates' heads by index."""

    def __init__(self, item_ids) -> None:
        heads = [_length_prefixed(b"\x0a", i.encode()) + b"\x15" for i in item_ids]
        self.length = np.fromiter(map(len, heads), dtype=np.int64, count=len(heads))
        self.start = np.cumsum(self.length) - self.length
        self.flat = np.frombuffer(b"".join(heads), dtype=np.uint8)


_tables: dict[int, tuple[object, _ItemTable]] = {}
_tables_lock = threading.Lock()


def _item_table(bundle: Bundle) -> _ItemTable:
    """The bundle's _ItemTable, keyed by its item_ids object (held, so its id stays unique)."""
    ids = bundle.item_ids
    hit = _tables.get(id(ids))
    if hit is not None and hit[0] is ids:
        return hit[1]
    table = _ItemTable(ids)
    with _tables_lock:
        while len(_tables) >= 4:  # the serving bundle and the one a reload warms, with room to spare
            _tables.pop(next(iter(_tables)))
        _tables[id(ids)] = (ids, table)
    return table


def _spans(dst: np.ndarray, src: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Byte indices of the spans [dst, dst + n) and [src, src + n) for each n in lengths,
    concatenated: out[a] = pool[b] copies every span in one call."""
    ends = np.cumsum(lengths)
    within = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) - np.repeat(ends - lengths, lengths)
    return np.repeat(dst, lengths) + within, np.repeat(src, lengths) + within


def _candidates_wire(result: Candidates, bundle: Bundle) -> bytes:
    """RetrieveResponse.candidates (field 1, repeated Candidate) as wire bytes, in array
    operations: per candidate its head (_ItemTable), two_tower_score, then one SourceScore
    (field 3) per proposing source in the provenance row's order (candidate_svc.merge.Provenance).
    A (candidates x fields) table of byte lengths gives every field's offset (one cumulative
    sum) and where its bytes come from (the item table, or a small pool of this response's
    length prefixes, scores and source prefixes); two gathers copy them.
    tests/test_candidate_encode.py pins the bytes to the per-dict encoder it replaced."""
    items = result.items
    n = len(items)
    if n == 0:
        return b""
    prov = result.provenance
    table = _item_table(bundle)
    k = len(prov.names)
    prefixes = [_source_score_prefix(name) for name in prov.names]
    pre_len = np.array([len(p) for p in prefixes], dtype=np.int64)
    # fields: 0 response tag + length, 1 head, 2 score, 3-4 lead entry (prefix, score),
    # then per column j: 5 + 2j its prefix, 6 + 2j its score
    shown = prov.proposed
    lead_rows = lead_cols = None
    if prov.lead is not None:
        lead_rows = np.flatnonzero(prov.lead >= 0)
        lead_cols = prov.lead[lead_rows].astype(np.int64)
        keep = prov.proposed[lead_rows, lead_cols]
        lead_rows, lead_cols = lead_rows[keep], lead_cols[keep]
        shown = prov.proposed.copy()
        shown[lead_rows, lead_cols] = False
    lengths = np.zeros((n, 5 + 2 * k), dtype=np.int64)
    lengths[:, 1] = table.length[items]
    lengths[:, 2] = 4
    lengths[:, 5::2] = shown * pre_len
    lengths[:, 6::2] = shown * 4
    if lead_rows is not None:
        lengths[lead_rows, 3] = pre_len[lead_cols]
        lengths[lead_rows, 4] = 4
    body = lengths[:, 1:].sum(axis=1)
    varint_len = 1 + (body >= 1 << 7) + (body >= 1 << 14) + (body >= 1 << 21) + (body >= 1 << 28)
    lengths[:, 0] = 1 + varint_len
    at = np.cumsum(lengths) - lengths.ravel()  # each field's offset in the output, row-major
    out = np.empty(int(at[-1] + lengths[-1, -1]), dtype=np.uint8)
    # the pool: [response tag + body length varint, 6 bytes a row][two-tower scores][source
    # prefixes][source scores, row-major]
    header = np.zeros((n, 6), dtype=np.uint8)
    header[:, 0] = 0x0A
    rest = body
    for b in range(int(varint_len.max())):  # the body length's varint, 7 bits a byte
        header[:, 1 + b] = (rest & 0x7F) | np.where(varint_len > b + 1, 0x80, 0)
        rest = rest >> 7
    with np.errstate(over="ignore"):  # inf beyond FLT_MAX, as protobuf stores it
        source_scores = np.ascontiguousarray(prov.scores, dtype="<f4")
    pool = np.concatenate([
        header.ravel(),
        np.ascontiguousarray(result.two_tower_scores, dtype="<f4").view(np.uint8),
        np.frombuffer(b"".join(prefixes), dtype=np.uint8),
        source_scores.view(np.uint8).ravel(),
    ])
    at_tt, at_pre = 6 * n, 10 * n
    at_sc = at_pre + int(pre_len.sum())
    rows = np.arange(n, dtype=np.int64)[:, None]
    src = np.zeros((n, 5 + 2 * k), dtype=np.int64)
    src[:, 0] = 6 * rows[:, 0]
    src[:, 2] = at_tt + 4 * rows[:, 0]
    src[:, 5::2] = at_pre + (np.cumsum(pre_len) - pre_len)
    src[:, 6::2] = at_sc + 4 * (k * rows + np.arange(k))
    if lead_rows is not None:
        src[lead_rows, 3] = src[lead_rows, 5 + 2 * lead_cols]
        src[lead_rows, 4] = src[lead_rows, 6 + 2 * lead_cols]
    small = lengths.ravel().copy()
    small[1 :: 5 + 2 * k] = 0  # the heads come from the item table
    dst_at, src_at = _spans(at, src.ravel(), small)
    out[dst_at] = pool[src_at]
    dst_at, src_at = _spans(at[1 :: 5 + 2 * k], table.start[items], lengths[:, 1])
    out[dst_at] = table.flat[src_at]
    return out.tobytes()


def encode_counted(result: Candidates, bundle: Bundle) -> tuple[candidate_pb2.RetrieveResponse, dict[str, int]]:
    """The response and its candidates per source. Its repeated Candidate is written as wire
    bytes from the provenance arrays (_candidates_wire) and parsed by upb in one call:
    building 300 candidates field by field (a Python call per message) cost ~0.6 ms."""
    response = candidate_pb2.RetrieveResponse.FromString(_candidates_wire(result, bundle))
    response.bundle_version = bundle.version
    response.history_used = result.history_used
    response.cold_start = result.cold_start
    response.user_embedding.extend(result.user_embedding.tolist())
    return response, result.provenance.counts()


class CandidateServicer(candidate_pb2_grpc.CandidateServiceServicer):
    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever  # replaced whole by a hot reload (recsys.reload)
        self.watcher: BundleWatcher | None = None

    def Retrieve(self, request, context):
        retriever = self.retriever  # read once: a hot reload swaps it, this call keeps its own
        bundle = retriever.bundle
        try:
            decoded = decode_retrieve(request, bundle)
        except v.InvalidArgument as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if not context.is_active():
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before retrieval")
        (result,) = retriever.retrieve([decoded])
        response, per_source = encode_counted(result, bundle)
        metrics.retrieve_source_counts.set(per_source)  # saves the interceptor a walk over the protos
        return response

    def RetrieveBatch(self, request, context):
        retriever = self.retriever
        bundle = retriever.bundle
        try:
            v.check_range(len(request.requests), "requests", 1, MAX_BATCH)
            decoded = [decode_retrieve(r, bundle, f"requests[{j}].") for j, r in enumerate(request.requests)]
        except v.InvalidArgument as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if not context.is_active():
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before retrieval")
        results = retriever.retrieve(decoded)
        return candidate_pb2.RetrieveBatchResponse(responses=[encode_candidates(r, bundle) for r in results])


def create_server(config: CandidateConfig, bundle: Bundle | None = None,
                  tracer: "tracing.Tracer | None" = None,
                  item_stats: ItemStatsReader | None = None) -> tuple[Served, Retriever]:
    """Load (or take) the bundle, warm every path, and build the server (not started).
    `tracer`: from recsys.tracing.setup_tracing (default: as config.otel says).
    `item_stats`: the event store opened from config.event_db / event_store_url (by the
    caller: this package may not import ranking_svc); the trending and fresh sources then
    use its live counts."""
    bundle = bundle or load_bundle(config.bundle)

    def make_retriever(b: Bundle) -> Retriever:  # validated and warmed: at start and on hot reload
        r = Retriever(b, config.popular_fraction, config.ann_expansion, config.fractions())
        _item_table(b)  # the response encoder's per-item bytes, built before serving
        if item_stats is not None:
            r.attach_live_stats(item_stats, config.live_stats_ttl_s)
        r.warmup()
        return r

    retriever = make_retriever(bundle)
    servicer = CandidateServicer(retriever)
    servicer.watcher = start_watcher(config.bundle, bundle, make_retriever,
                                     lambda r: setattr(servicer, "retriever", r), config.reload_interval_s,
                                     "candidate")
    served = build_server(
        config.host,
        config.port,
        config.workers,
        [lambda s: candidate_pb2_grpc.add_CandidateServiceServicer_to_server(servicer, s)],
        [candidate_pb2.DESCRIPTOR.services_by_name["CandidateService"].full_name],
        interceptors=[ServerInterceptor("candidate", bundle.version),
                      *tracing.interceptors(tracer or tracing.setup_tracing("recsys-candidate", config.otel))],
        security=ServerSecurity.from_config(config),
    )
    log.info("candidate service: bundle %s, %d items, live source stats %s", bundle.version, bundle.n_items,
             "on" if item_stats is not None else "off")
    return served, retriever
