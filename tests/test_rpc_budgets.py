"""Per-phase budgets of Recommend (ranking_svc/server.py, BudgetedCandidateSource): Retrieve
gets at most `retrieve_budget_fraction` of the caller's remaining time (and never more than
retrieve_timeout_ms); the rest stays for ranking, so a frozen candidate tier costs the
caller a degraded answer inside its deadline, not a DEADLINE_EXCEEDED."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from ranking_svc.breaker import BreakerCandidateSource, CircuitBreaker
from ranking_svc.ranker import CandidateUnavailable, Demographics
from ranking_svc.server import RETRIEVE_UNTIL, BudgetedCandidateSource, create_server
from recsys.config import RankingConfig
from recsys.v1 import ranking_pb2, ranking_pb2_grpc
from tests.test_rpc_client import Replica, serving

pytestmark = pytest.mark.timeout(300)

SLACK_S = 0.05  # what a deadline can gain on its way through gRPC (clock reads, rounding)


class Frozen(Replica):
    """A candidate replica that never answers in time: it records the time each call had
    left when it arrived and holds the call until the caller gives up."""

    def __init__(self) -> None:
        super().__init__("frozen", lambda n: None)
        self.time_left: list[float] = []

    def handle(self, request, context):
        with self.lock:
            self.time_left.append(context.time_remaining())
        stop = threading.Event()
        context.add_callback(stop.set)
        stop.wait(30)
        return b""


@pytest.mark.parametrize("fraction, retrieve_timeout_ms, caller_timeout_s, expected_s", [
    (0.5, 10_000, 2.0, 1.0),  # the share of the caller's time decides
    (0.5, 300, 2.0, 0.3),  # retrieve_timeout_ms is lower and decides
])
def test_retrieve_gets_only_its_share_and_the_answer_is_degraded_inside_the_caller_deadline(
        bundle, tmp_path, fraction, retrieve_timeout_ms, caller_timeout_s, expected_s):
    frozen = Frozen()
    with serving(frozen) as (cand,):
        config = RankingConfig(port=0, workers=2, candidate_address=f"127.0.0.1:{cand.port}",
                               event_db=str(tmp_path / "events.sqlite3"), breaker_failures=0,
                               retrieve_timeout_ms=retrieve_timeout_ms, retrieve_budget_fraction=fraction)
        served, _ = create_server(config, bundle)
        served.start()
        served.set_serving(True)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{served.port}") as ch:
                stub = ranking_pb2_grpc.RankingServiceStub(ch)
                answer = stub.Recommend(ranking_pb2.RecommendRequest(user_id=bundle.user_ids[0], k=5),
                                        timeout=caller_timeout_s)
        finally:
            served.stop(0)
    assert answer.degraded and answer.degraded_reason.startswith("DEADLINE_EXCEEDED"), answer.degraded_reason
    assert len(answer.items) == 5, "the fallback answers in full"
    assert frozen.time_left, "Retrieve was called"
    first = frozen.time_left[0]
    assert first <= expected_s + SLACK_S, (
        f"Retrieve arrived with {first:.3f}s left; its budget is {expected_s}s of the caller's {caller_timeout_s}s")
    assert first > expected_s / 3, f"Retrieve got {first:.3f}s: far less than its {expected_s}s budget"


class Counting:
    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def fetch(self, *args):
        self.timeouts.append(args[-1])
        raise CandidateUnavailable("UNAVAILABLE: test source")


def _fetch(source) -> None:
    source.fetch("u1", [], Demographics(), 0, 10, [], 5.0)


def test_the_budget_caps_the_timeout_and_a_spent_budget_neither_calls_nor_trips_the_breaker():
    inner = Counting()
    breaker = CircuitBreaker(failures=1, cooldown_s=60.0)
    source = BudgetedCandidateSource(BreakerCandidateSource(inner, breaker))
    with pytest.raises(CandidateUnavailable):
        _fetch(source)  # no budget set (no caller deadline): the Ranker's timeout stands
    assert inner.timeouts == [5.0]
    breaker.record_success()
    token = RETRIEVE_UNTIL.set(time.monotonic() + 0.5)
    try:
        with pytest.raises(CandidateUnavailable):
            _fetch(source)
        assert 0 < inner.timeouts[-1] <= 0.5
        breaker.record_success()
        RETRIEVE_UNTIL.set(time.monotonic() - 0.001)  # spent
        with pytest.raises(CandidateUnavailable) as err:
            _fetch(source)
    finally:
        RETRIEVE_UNTIL.reset(token)
    assert err.value.reason.startswith("DEADLINE_EXCEEDED: the retrieve budget")
    assert len(inner.timeouts) == 2, "a spent budget must not call the tier"
    assert breaker.state == "closed", "a spent budget is not a failure of the tier"
