"""A circuit breaker in front of the candidate tier (the Hystrix pattern).

    closed     every call goes through; `failures` consecutive failures (the tier down,
               late or shedding: CandidateUnavailable) open the breaker; a refusal of the
               request itself (server.CandidateRejected) says the tier is up and counts
               neither way
    open       no call goes out: `BreakerCandidateSource.fetch` raises CandidateUnavailable
               at once, so Recommend answers from the local fallback without waiting on a
               dead or drowning tier; after `cooldown_s` the breaker half-opens
    half-open  one probe call goes through (others still fail fast); success closes the
               breaker, failure opens it for another cooldown

A tier that is down then costs each request nothing, and gets no traffic until a probe
finds it back. The clock is injectable so the state machine is tested without sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

from ranking_svc.ranker import CandidateList, CandidateSource, CandidateUnavailable, Demographics

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
REASON = "CIRCUIT_OPEN"  # first word of degraded_reason while the breaker is open


class CircuitBreaker:
    def __init__(self, failures: int = 5, cooldown_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or cooldown_s <= 0:
            raise ValueError(f"breaker: failures {failures} must be >= 1 and cooldown_s {cooldown_s} > 0")
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self.opened = 0  # times the breaker opened
        self.rejected = 0  # calls answered without calling the tier

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self.clock() - self._opened_at >= self.cooldown_s:
                return HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """May a call go out now? (In half-open, True for exactly one caller until it reports.)"""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN and self.clock() - self._opened_at >= self.cooldown_s:
                self._state, self._probing = HALF_OPEN, False
            if self._state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            self.rejected += 1
            return False

    def record_success(self) -> None:
        with self._lock:
            self._state, self._consecutive, self._probing = CLOSED, 0, False

    def record_failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._state == HALF_OPEN or self._consecutive >= self.failures:
                if self._state != OPEN:
                    self.opened += 1
                self._state, self._opened_at, self._probing = OPEN, self.clock(), False

    def release(self) -> None:
        """A call ended without a verdict on the tier: state unchanged, the probe slot freed."""
        with self._lock:
            self._probing = False

    def retry_in_s(self) -> float:
        with self._lock:
            return max(0.0, self.cooldown_s - (self.clock() - self._opened_at))


class BreakerCandidateSource:
    """A CandidateSource that asks `inner` only while `breaker` allows it."""

    def __init__(self, inner: CandidateSource, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker

    def fetch(
        self,
        user_id: str,
        history_ids: Sequence[str],
        demographics: Demographics,
        time_ms: int,
        num: int,
        exclude_ids: Sequence[str],
        timeout_s: float,
    ) -> CandidateList:
        if not self.breaker.allow():
            raise CandidateUnavailable(
                f"{REASON}: candidate tier failed {self.breaker.failures} times in a row; "
                f"next probe in {self.breaker.retry_in_s():.1f}s")
        try:
            got = self.inner.fetch(user_id, history_ids, demographics, time_ms, num, exclude_ids, timeout_s)
        except CandidateUnavailable:  # down, late, shedding: a failure of the tier
            self.breaker.record_failure()
            raise
        except BaseException:  # the tier refused this request (server.CandidateRejected) or a
            self.breaker.release()  # surprise: no verdict on the tier's health, but the probe ends
            raise
        self.breaker.record_success()
        return got

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
