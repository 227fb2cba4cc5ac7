"""The circuit breaker in front of the candidate tier (ranking_svc/breaker.py): its state
machine on a controlled clock, and a real Ranker behind it with a candidate source whose
health the test switches."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest

from ranking_svc.breaker import CLOSED, HALF_OPEN, OPEN, REASON, BreakerCandidateSource, CircuitBreaker
from ranking_svc.ranker import CandidateList, CandidateUnavailable, Demographics, Ranker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SwitchableSource:
    """A real CandidateSource: the bundle's first items while `up`, UNAVAILABLE when not."""

    def __init__(self, item_ids: Sequence[str], dim: int) -> None:
        self.item_ids = list(item_ids)
        self.dim = dim
        self.up = True
        self.calls = 0

    def fetch(self, user_id, history_ids, demographics, time_ms, num, exclude_ids, timeout_s) -> CandidateList:
        self.calls += 1
        if not self.up:
            raise CandidateUnavailable("UNAVAILABLE: switched off by the test")
        excluded = set(exclude_ids)
        ids = [i for i in self.item_ids if i not in excluded][:num]
        return CandidateList(ids, [0.0] * len(ids), [["popular"]] * len(ids), np.zeros(self.dim, np.float32))


def call(source: BreakerCandidateSource) -> bool:
    try:
        source.fetch("u", [], Demographics(), 0, 10, [], 1.0)
        return True
    except CandidateUnavailable:
        return False


def test_opens_after_n_consecutive_failures_and_fails_fast_while_open():
    clock = Clock()
    inner = SwitchableSource([f"i{n}" for n in range(20)], 4)
    source = BreakerCandidateSource(inner, CircuitBreaker(failures=3, cooldown_s=2.0, clock=clock))
    inner.up = False
    assert [call(source) for _ in range(3)] == [False] * 3 and inner.calls == 3
    assert source.breaker.state == OPEN and source.breaker.opened == 1
    for _ in range(10):
        with pytest.raises(CandidateUnavailable) as err:
            source.fetch("u", [], Demographics(), 0, 10, [], 1.0)
        assert err.value.reason.startswith(f"{REASON}:"), err.value.reason
    assert inner.calls == 3, "an open breaker must not call the candidate tier"
    assert source.breaker.rejected == 10


def test_a_success_resets_the_run_of_failures():
    inner = SwitchableSource(["a", "b"], 4)
    source = BreakerCandidateSource(inner, CircuitBreaker(failures=3, cooldown_s=1.0, clock=Clock()))
    for up in (False, False, True, False, False, True):
        inner.up = up
        call(source)
    assert source.breaker.state == CLOSED, "2 failures, a success, 2 failures: never 3 in a row"


def test_half_open_lets_one_probe_through_then_closes_or_reopens():
    clock = Clock()
    inner = SwitchableSource(["a", "b"], 4)
    breaker = CircuitBreaker(failures=2, cooldown_s=2.0, clock=clock)
    source = BreakerCandidateSource(inner, breaker)
    inner.up = False
    call(source), call(source)
    clock.now += 1.9
    assert breaker.state == OPEN and not call(source) and inner.calls == 2
    clock.now += 0.1
    assert breaker.state == HALF_OPEN
    assert breaker.allow() and not breaker.allow(), "half-open admits exactly one probe at a time"
    breaker.record_failure()  # the probe failed: open for another cooldown
    assert breaker.state == OPEN and breaker.opened == 2
    clock.now += 2.0
    inner.up = True
    assert call(source) and breaker.state == CLOSED and inner.calls == 3
    assert all(call(source) for _ in range(5)) and inner.calls == 8


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        CircuitBreaker(failures=0)
    with pytest.raises(ValueError):
        CircuitBreaker(cooldown_s=0)


def test_ranker_answers_from_the_fallback_without_calling_while_open(bundle):
    clock = Clock()
    inner = SwitchableSource(bundle.item_ids, bundle.item_embeddings.shape[1])
    breaker = CircuitBreaker(failures=2, cooldown_s=5.0, clock=clock)
    ranker = Ranker(bundle, BreakerCandidateSource(inner, breaker), events=None)
    user = bundle.user_ids[0]
    ok = ranker.recommend(user, 5)
    assert not ok.degraded and len(ok.items) == 5
    inner.up = False
    reasons = [ranker.recommend(user, 5).degraded_reason for _ in range(2)]
    assert all(r.startswith("UNAVAILABLE") for r in reasons), reasons
    calls = inner.calls
    for _ in range(5):
        res = ranker.recommend(user, 5)
        assert res.degraded and res.degraded_reason.startswith(f"{REASON}:"), res.degraded_reason
        assert len(res.items) == 5 and all(set(it.sources) <= {"fallback_popular", "fallback_trending"}
                                           for it in res.items)
    assert inner.calls == calls, "no Retrieve while the breaker is open"
    assert ranker.degraded[REASON] == 5 and ranker.degraded["UNAVAILABLE"] == 2
    clock.now += 5.0
    inner.up = True
    back = ranker.recommend(user, 5)
    assert not back.degraded and breaker.state == CLOSED
