"""Both services in this process on port 0 with real channels to them: the fixture the
status-code, fuzz and security tests share."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import grpc
from grpc_health.v1 import health_pb2_grpc

from recsys.config import CandidateConfig, RankingConfig
from recsys.v1 import candidate_pb2_grpc, ranking_pb2_grpc


class Stack:
    """Both servers, their stubs, and the objects a test may break for one call."""

    def __init__(self, cand, retriever, rank, ranker) -> None:
        self.cand, self.retriever, self.rank, self.ranker = cand, retriever, rank, ranker
        self.cand_channel = grpc.insecure_channel(f"127.0.0.1:{cand.port}")
        self.rank_channel = grpc.insecure_channel(f"127.0.0.1:{rank.port}")
        self.candidate = candidate_pb2_grpc.CandidateServiceStub(self.cand_channel)
        self.ranking = ranking_pb2_grpc.RankingServiceStub(self.rank_channel)
        self.health = health_pb2_grpc.HealthStub(self.rank_channel)

    def raw(self, channel: grpc.Channel, method: str, payload: bytes, timeout: float = 10) -> bytes:
        """Send `payload` as the request bytes of `method` (no serialization)."""
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        return call(payload, timeout=timeout)


@contextmanager
def serve_both(bundle, workdir: Path) -> Iterator[Stack]:
    from candidate_svc.server import create_server as create_candidate
    from ranking_svc.server import create_server as create_ranking

    cand, retriever = create_candidate(CandidateConfig(port=0, workers=2), bundle)
    cand.server.start()
    cand.set_serving(True)
    rank = None
    try:
        rank, ranker = create_ranking(
            RankingConfig(port=0, workers=2, candidate_address=f"127.0.0.1:{cand.port}",
                          event_db=str(workdir / "events.sqlite3"), retrieve_timeout_ms=3000),
            bundle,
        )
        rank.server.start()
        rank.set_serving(True)
        s = Stack(cand, retriever, rank, ranker)
        try:
            yield s
        finally:
            s.cand_channel.close()
            s.rank_channel.close()
    finally:
        if rank is not None:
            rank.stop(0)
        cand.stop(0)
