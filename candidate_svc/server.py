"""CandidateService over gRPC: decode and validate, call the Retriever, encode.

The servicer is thin on purpose: all logic lives in candidate_svc.retrieval.
"""

from __future__ import annotations

import logging

import grpc
import numpy as np

from candidate_svc.live_stats import ItemStatsReader
from candidate_svc.retrieval import Candidates, Request, Retriever
from candidate_svc.sources import SOURCE_ORDER
from recsys import tracing
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


def user_input_from(features: common_pb2.UserFeatures, history: list[int], time_ms: int) -> UserInput:
    return UserInput(
        history=history,
        age=features.age,
        gender=features.gender,
        occupation=features.occupation,
        region=features.region,
        time_ms=time_ms,
    )


def decode_retrieve(req: candidate_pb2.RetrieveRequest, bundle: Bundle, prefix: str = "") -> Request:
    """Validate every field (raising InvalidArgument naming it) and map ids to indices."""
    v.check_id(req.user_id, f"{prefix}user_id", required=False)
    v.check_ids(req.history_item_ids, f"{prefix}history_item_ids", MAX_HISTORY)
    v.check_user_features(req.features, f"{prefix}features")
    v.check_time_ms(req.request_time_ms, f"{prefix}request_time_ms")
    v.check_range(req.num_candidates, f"{prefix}num_candidates", 1, MAX_CANDIDATES)
    v.check_ids(req.exclude_item_ids, f"{prefix}exclude_item_ids", MAX_EXCLUDE)
    for name, count in req.source_quotas.items():
        if name not in SOURCE_ORDER:
            raise v.InvalidArgument(f"{prefix}source_quotas[{name!r}]", f"unknown source (one of {', '.join(SOURCE_ORDER)})")
        v.check_range(count, f"{prefix}source_quotas[{name!r}]", 0, MAX_CANDIDATES)
    index = bundle.item_index
    history = [index[i] for i in req.history_item_ids if i in index]
    exclude = np.fromiter((index[i] for i in req.exclude_item_ids if i in index), dtype=np.int64)
    return Request(
        user=user_input_from(req.features, history, req.request_time_ms),
        num=req.num_candidates,
        exclude=exclude,
        user_id=req.user_id,
        quotas=dict(req.source_quotas) or None,
    )


def encode_candidates(result: Candidates, bundle: Bundle) -> candidate_pb2.RetrieveResponse:
    response = candidate_pb2.RetrieveResponse(
        bundle_version=bundle.version, history_used=result.history_used, cold_start=result.cold_start
    )
    response.user_embedding.extend(result.user_embedding.tolist())
    ids = bundle.item_ids
    for item, score, sources in zip(result.items.tolist(), result.two_tower_scores.tolist(), result.sources):
        cand = response.candidates.add(item_id=ids[item], two_tower_score=score)
        for name, s in sources.items():
            cand.sources.add(source=name, score=s)
    return response


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
        return encode_candidates(result, bundle)

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
