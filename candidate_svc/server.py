"""CandidateService over gRPC: decode and validate, call the Retriever, encode.

The servicer is thin on purpose: all logic lives in candidate_svc.retrieval.
"""

from __future__ import annotations

import logging

import grpc
import numpy as np

from candidate_svc.retrieval import Request, Retriever
from recsys import validation as v
from recsys.bundle import Bundle, load_bundle
from recsys.config import MAX_CANDIDATES, CandidateConfig
from recsys.features import UserInput
from recsys.grpc_server import Served, build_server
from recsys.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

MAX_HISTORY = 500
MAX_EXCLUDE = 20_000


def user_input_from(features: common_pb2.UserFeatures, history: list[int], time_ms: int) -> UserInput:
    return UserInput(
        history=history,
        age=features.age,
        gender=features.gender,
        occupation=features.occupation,
        region=features.region,
        time_ms=time_ms,
    )


def decode_retrieve(req: candidate_pb2.RetrieveRequest, bundle: Bundle) -> Request:
    """Validate every field (raising InvalidArgument naming it) and map ids to indices."""
    v.check_id(req.user_id, "user_id", required=False)
    v.check_ids(req.history_item_ids, "history_item_ids", MAX_HISTORY)
    v.check_user_features(req.features, "features")
    v.check_time_ms(req.request_time_ms, "request_time_ms")
    v.check_range(req.num_candidates, "num_candidates", 1, MAX_CANDIDATES)
    v.check_ids(req.exclude_item_ids, "exclude_item_ids", MAX_EXCLUDE)
    index = bundle.item_index
    history = [index[i] for i in req.history_item_ids if i in index]
    exclude = np.fromiter((index[i] for i in req.exclude_item_ids if i in index), dtype=np.int64)
    return Request(
        user=user_input_from(req.features, history, req.request_time_ms),
        num=req.num_candidates,
        exclude=exclude,
    )


class CandidateServicer(candidate_pb2_grpc.CandidateServiceServicer):
    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    def Retrieve(self, request, context):
        bundle = self.retriever.bundle
        try:
            decoded = decode_retrieve(request, bundle)
        except v.InvalidArgument as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if not context.is_active():
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before retrieval")
        (result,) = self.retriever.retrieve([decoded])
        response = candidate_pb2.RetrieveResponse(
            bundle_version=bundle.version, history_used=result.history_used
        )
        response.user_embedding.extend(result.user_embedding.tolist())
        ids = bundle.item_ids
        for item, score, sources in zip(
            result.items.tolist(), result.two_tower_scores.tolist(), result.sources
        ):
            cand = response.candidates.add(item_id=ids[item], two_tower_score=score)
            for name, s in sources.items():
                cand.sources.add(source=name, score=s)
        return response


def create_server(config: CandidateConfig, bundle: Bundle | None = None) -> tuple[Served, Retriever]:
    """Load (or take) the bundle, warm every path, and build the server (not started)."""
    bundle = bundle or load_bundle(config.bundle)
    retriever = Retriever(bundle, config.popular_fraction, config.ann_expansion)
    retriever.warmup()
    servicer = CandidateServicer(retriever)
    served = build_server(
        config.host,
        config.port,
        config.workers,
        [lambda s: candidate_pb2_grpc.add_CandidateServiceServicer_to_server(servicer, s)],
        [candidate_pb2.DESCRIPTOR.services_by_name["CandidateService"].full_name],
    )
    log.info("candidate service: bundle %s, %d items", bundle.version, bundle.n_items)
    return served, retriever
