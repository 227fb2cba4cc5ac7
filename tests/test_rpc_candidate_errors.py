"""How each status the candidate tier can answer shows in the ranking tier
(ranking_svc/server.py, DEGRADE_CODES / CandidateRejected): an outage degrades, a refusal
of the request is surfaced. Against tiny real candidate replicas on loopback."""

from __future__ import annotations

import grpc
import pytest

from ranking_svc.breaker import BreakerCandidateSource, CircuitBreaker
from ranking_svc.ranker import CandidateUnavailable, Demographics
from ranking_svc.server import CandidateRejected, GrpcCandidateSource
from tests.test_rpc_client import Replica, serving

pytestmark = pytest.mark.timeout(120)

C = grpc.StatusCode


def fetch(source) -> None:
    source.fetch("u1", ["i1"], Demographics(), 0, 10, [], 10.0)


class Refusing(Replica):
    """Aborts every call with `code` and `details` (a field path first, as our servers do)."""

    def __init__(self, code: C, details: str) -> None:
        super().__init__("refusing", lambda n: code)
        self.details = details

    def handle(self, request, context):
        with self.lock:
            self.attempts += 1
        context.abort(self.behave(self.attempts), self.details)


def fetch_from(replica, expected: type[Exception]) -> Exception:
    """One fetch through a real GrpcCandidateSource against `replica` on loopback; returns
    the `expected` exception it must raise."""
    with serving(replica) as (server,):
        source = GrpcCandidateSource(f"127.0.0.1:{server.port}")
        try:
            with pytest.raises(expected) as err:
                fetch(source)
        finally:
            source.close()
    return err.value


@pytest.mark.parametrize("code", [C.UNAVAILABLE, C.DEADLINE_EXCEEDED, C.RESOURCE_EXHAUSTED,
                                  C.UNAUTHENTICATED, C.PERMISSION_DENIED])
def test_an_outage_or_overload_degrades(code):
    err = fetch_from(Refusing(code, "tier: not now"), CandidateUnavailable)
    assert err.reason.startswith(code.name + ": ")


@pytest.mark.parametrize("code, details, caller_code", [
    (C.INVALID_ARGUMENT, "user_id: must not contain whitespace", C.INVALID_ARGUMENT),
    (C.INVALID_ARGUMENT, "features.age: must be in 0..150", C.INVALID_ARGUMENT),
    (C.INVALID_ARGUMENT, "request_time_ms: out of range", C.INVALID_ARGUMENT),
    (C.INVALID_ARGUMENT, "history_item_ids[3]: is required", C.INTERNAL),  # built from our store
    (C.INVALID_ARGUMENT, "exclude_item_ids: has 30000 entries", C.INTERNAL),  # ours: seen + caller's
    (C.INVALID_ARGUMENT, "num_candidates: out of range", C.INTERNAL),  # our config
    (C.INTERNAL, "internal error (logged by the server)", C.INTERNAL),
    (C.UNIMPLEMENTED, "Method not found!", C.INTERNAL),
    (C.UNKNOWN, "Exception calling application", C.INTERNAL),
])
def test_a_refusal_of_the_request_is_surfaced_not_degraded(code, details, caller_code):
    err = fetch_from(Refusing(code, details), CandidateRejected)
    assert err.code == caller_code and err.downstream == code
    assert details in err.message
    if caller_code == C.INVALID_ARGUMENT:
        assert err.message.startswith(details), "the caller's field path must come first"
    else:
        assert err.message.startswith(f"candidate tier refused the request: {code.name}: ")


def test_a_refusal_neither_opens_the_breaker_nor_holds_its_probe():
    breaker = CircuitBreaker(failures=2, cooldown_s=60.0)
    with serving(Refusing(C.INVALID_ARGUMENT, "history_item_ids[0]: bad")) as (server,):
        inner = GrpcCandidateSource(f"127.0.0.1:{server.port}")
        source = BreakerCandidateSource(inner, breaker)
        try:
            for _ in range(5):
                with pytest.raises(CandidateRejected):
                    fetch(source)
            assert breaker.state == "closed", "the tier answered: that is not an outage"
            breaker.record_failure()
            breaker.record_failure()  # open; then half-open once the (injected) cooldown passes
            breaker.clock = lambda: 1e12
            with pytest.raises(CandidateRejected):
                fetch(source)  # the probe ends without a verdict...
            with pytest.raises(CandidateRejected):
                fetch(source)  # ...and frees the slot for the next probe (else: CandidateUnavailable)
        finally:
            source.close()
