"""The status-code map of docs/RELIABILITY.md ("Status codes"), one case per table row, over
real gRPC to both services running in this process on port 0.

The table is parsed from the doc, so a row without a case (or a case without a row) fails
`test_every_row_has_a_case`.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2

from ranking_svc.events import EventStoreUnavailable
from ranking_svc.ranker import CandidateUnavailable
from recsys import validation as v
from recsys.grpc_server import MAX_METADATA_BYTES
from recsys.rpc_guard import INTERNAL_MESSAGE
from recsys.v1 import candidate_pb2, ranking_pb2
from tests.service_stack import serve_both

DOC = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"
C = grpc.StatusCode
NOW = lambda: int(time.time() * 1000)  # noqa: E731


@pytest.fixture(scope="module")
def stack(bundle, tmp_path_factory):
    with serve_both(bundle, tmp_path_factory.mktemp("codes")) as s:
        yield s


def _fail(*_a, **_k):
    raise RuntimeError("boom: a bug deep in the handler /secret/path.py line 42")


def _store_down(*_a, **_k):
    raise EventStoreUnavailable("disk I/O error")


def _cand_down(*_a, **_k):
    raise CandidateUnavailable("UNAVAILABLE: connection refused")


def _refuse(field: str):
    def decode(*_a, **_k):
        raise v.InvalidArgument(field, "refused by an injected fault")
    return decode


def _event(**kw) -> ranking_pb2.Event:
    base = dict(idempotency_key=f"k{time.monotonic_ns()}", user_id="u1", item_id="i1",
                type=ranking_pb2.EVENT_TYPE_CLICK, timestamp_ms=NOW())
    return ranking_pb2.Event(**{**base, **kw})


def _retrieve(**kw):
    return candidate_pb2.RetrieveRequest(**{"num_candidates": 10, **kw})


CAND_REFUSED = "candidate tier refused the request: "
RETRIEVE = "/recsys.v1.CandidateService/Retrieve"
RECOMMEND = "/recsys.v1.RankingService/Recommend"

# (rpc, situation as in the doc) -> (what to break, call, expected code, check on the answer)
def _c_retrieve_ok(s, mp):
    assert len(s.candidate.Retrieve(_retrieve(), timeout=10).candidates) == 10


def _c_retrieve_bad_field(s, mp):
    s.candidate.Retrieve(_retrieve(num_candidates=0), timeout=10)


def _c_retrieve_bytes(s, mp):
    s.raw(s.cand_channel, RETRIEVE, b"\xff\xff\xff\xff")


def _c_retrieve_huge(s, mp):
    s.raw(s.cand_channel, RETRIEVE, b"\x0a" + b"\x00" * (5 * 1024 * 1024))


def _c_retrieve_deadline(s, mp):
    retrieve = s.retriever.retrieve

    def slow(*a, **k):  # a retrieval slower than the caller's deadline, whatever the machine
        time.sleep(0.5)
        return retrieve(*a, **k)

    mp.setattr(s.retriever, "retrieve", slow)
    s.candidate.Retrieve(_retrieve(), timeout=0.05)


def _c_retrieve_bug(s, mp):
    mp.setattr(s.retriever, "retrieve", _fail)
    s.candidate.Retrieve(_retrieve(), timeout=10)


def _c_batch_ok(s, mp):
    assert len(s.candidate.RetrieveBatch(candidate_pb2.RetrieveBatchRequest(requests=[_retrieve()] * 2),
                                         timeout=10).responses) == 2


def _c_batch_empty(s, mp):
    s.candidate.RetrieveBatch(candidate_pb2.RetrieveBatchRequest(), timeout=10)


def _c_batch_bad_item(s, mp):
    s.candidate.RetrieveBatch(candidate_pb2.RetrieveBatchRequest(
        requests=[_retrieve(), _retrieve(user_id="a b")]), timeout=10)


def _c_batch_bug(s, mp):
    mp.setattr(s.retriever, "retrieve", _fail)
    s.candidate.RetrieveBatch(candidate_pb2.RetrieveBatchRequest(requests=[_retrieve()]), timeout=10)


def _c_rec_ok(s, mp):
    assert len(s.ranking.Recommend(ranking_pb2.RecommendRequest(user_id="u1", k=5), timeout=10).items) == 5


def _c_rec_unknown_user(s, mp):
    r = s.ranking.Recommend(ranking_pb2.RecommendRequest(user_id="never-seen-user", k=5), timeout=10)
    assert r.cold_start and len(r.items) == 5


def _c_rec_degraded(s, mp):
    mp.setattr(s.ranker.candidates, "fetch", _cand_down)
    r = s.ranking.Recommend(ranking_pb2.RecommendRequest(user_id="u1", k=5), timeout=10)
    assert r.degraded and "UNAVAILABLE" in r.degraded_reason and len(r.items) == 5


def _c_rec_cand_refuses_caller_field(s, mp):
    mp.setattr("candidate_svc.server.decode_retrieve", _refuse("user_id"))
    s.ranking.Recommend(ranking_pb2.RecommendRequest(user_id="u1", k=5), timeout=10)


def _c_rec_cand_refuses_our_request(s, mp):
    mp.setattr(s.retriever, "retrieve", _fail)  # a bug in the candidate tier: INTERNAL there
    with pytest.raises(grpc.RpcError) as err:
        s.ranking.Recommend(ranking_pb2.RecommendRequest(user_id="u1", k=5), timeout=10)
    assert err.value.code() == C.INTERNAL and err.value.details().startswith(CAND_REFUSED + "INTERNAL: ")
    mp.setattr("candidate_svc.server.decode_retrieve", _refuse("history_item_ids[0]"))  # a field we built
    s.ranking.Recommend(ranking_pb2.RecommendRequest(user_id="u1", k=5), timeout=10)


def _c_rec_bad_field(s, mp):
    s.ranking.Recommend(ranking_pb2.RecommendRequest(user_id="u1", k=0), timeout=10)


def _c_rec_bytes(s, mp):
    s.raw(s.rank_channel, RECOMMEND, b"\x12\x05abc")  # field 2 (k) as a truncated string


def _sqlite_down(*_a, **_k):
    raise sqlite3.OperationalError("disk I/O error")


def _c_rec_store_down(s, mp):
    mp.setattr(s.ranker.events, "_reader", _sqlite_down)  # the real SQLite store's read path
    s.ranking.Recommend(ranking_pb2.RecommendRequest(user_id="u1", k=5), timeout=10)


def _c_rec_deadline(s, mp):
    """Retrieve comes back after the caller's deadline (a source ignoring its timeout):
    besides the caller's DEADLINE_EXCEEDED, the server must skip scoring and rules."""
    fetch, scored, returned = s.ranker.candidates.fetch, [], threading.Event()

    def late_fetch(*a, **k):
        got = fetch(*a, **k)
        time.sleep(0.6)
        returned.set()
        return got

    features = s.ranker._features
    mp.setattr(s.ranker.candidates, "fetch", late_fetch)
    mp.setattr(s.ranker, "_features", lambda *a: scored.append(1) or features(*a))
    try:
        s.ranking.Recommend(ranking_pb2.RecommendRequest(user_id="u1", k=5), timeout=0.4)
    finally:
        assert returned.wait(10)
        time.sleep(0.2)  # the handler's next step after the fetch
        assert not scored, "scored candidates for a caller that had stopped waiting"


def _c_rec_bug(s, mp):
    mp.setattr(s.ranker, "recommend", _fail)
    s.ranking.Recommend(ranking_pb2.RecommendRequest(user_id="u1", k=5), timeout=10)


def _c_log_ok(s, mp):
    assert s.ranking.LogEvents(ranking_pb2.LogEventsRequest(events=[_event()]), timeout=10).stored == 1


def _c_log_bad_field(s, mp):
    s.ranking.LogEvents(ranking_pb2.LogEventsRequest(events=[_event(), _event(item_id="")]), timeout=10)


def _c_log_store_down(s, mp):
    mp.setattr(s.ranker.events, "append", _store_down)
    s.ranking.LogEvents(ranking_pb2.LogEventsRequest(events=[_event()]), timeout=10)


def _c_health_serving(s, mp):
    r = s.health.Check(health_pb2.HealthCheckRequest(service="recsys.v1.RankingService"), timeout=10)
    assert r.status == health_pb2.HealthCheckResponse.SERVING


def _c_health_not_ready(s, mp):
    s.rank.set_serving(False)
    try:
        r = s.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    finally:
        s.rank.set_serving(True)
    assert r.status == health_pb2.HealthCheckResponse.NOT_SERVING


def _c_health_unknown(s, mp):
    s.health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)


def _c_any_unknown_method(s, mp):
    s.raw(s.rank_channel, "/recsys.v1.RankingService/NoSuchMethod", b"")


def _c_any_huge_metadata(s, mp):
    s.ranking.Recommend(ranking_pb2.RecommendRequest(user_id="u1", k=5), timeout=10,
                        metadata=(("x-big", "a" * (MAX_METADATA_BYTES + 1)),))


CASES: dict[tuple[str, str], tuple[Callable, grpc.StatusCode]] = {
    ("Retrieve", "valid request"): (_c_retrieve_ok, C.OK),
    ("Retrieve", "a field out of its limits"): (_c_retrieve_bad_field, C.INVALID_ARGUMENT),
    ("Retrieve", "bytes that are not a RetrieveRequest"): (_c_retrieve_bytes, C.INVALID_ARGUMENT),
    ("Retrieve", "request over 4 MiB"): (_c_retrieve_huge, C.RESOURCE_EXHAUSTED),
    ("Retrieve", "the caller's deadline passes"): (_c_retrieve_deadline, C.DEADLINE_EXCEEDED),
    ("Retrieve", "a bug (unexpected exception)"): (_c_retrieve_bug, C.INTERNAL),
    ("RetrieveBatch", "valid request"): (_c_batch_ok, C.OK),
    ("RetrieveBatch", "no requests, or more than 64"): (_c_batch_empty, C.INVALID_ARGUMENT),
    ("RetrieveBatch", "a field of one request out of its limits"): (_c_batch_bad_item, C.INVALID_ARGUMENT),
    ("RetrieveBatch", "a bug (unexpected exception)"): (_c_batch_bug, C.INTERNAL),
    ("Recommend", "valid request"): (_c_rec_ok, C.OK),
    ("Recommend", "unknown user"): (_c_rec_unknown_user, C.OK),
    ("Recommend", "candidate tier down or late"): (_c_rec_degraded, C.OK),
    ("Recommend", "candidate tier refuses a field the caller sent"):
        (_c_rec_cand_refuses_caller_field, C.INVALID_ARGUMENT),
    ("Recommend", "candidate tier refuses the request this tier built, or fails"):
        (_c_rec_cand_refuses_our_request, C.INTERNAL),
    ("Recommend", "a field out of its limits"): (_c_rec_bad_field, C.INVALID_ARGUMENT),
    ("Recommend", "bytes that are not a RecommendRequest"): (_c_rec_bytes, C.INVALID_ARGUMENT),
    ("Recommend", "event store failing"): (_c_rec_store_down, C.UNAVAILABLE),
    ("Recommend", "the caller's deadline passes while it works"): (_c_rec_deadline, C.DEADLINE_EXCEEDED),
    ("Recommend", "a bug (unexpected exception)"): (_c_rec_bug, C.INTERNAL),
    ("LogEvents", "valid batch"): (_c_log_ok, C.OK),
    ("LogEvents", "an event out of its limits"): (_c_log_bad_field, C.INVALID_ARGUMENT),
    ("LogEvents", "event store failing"): (_c_log_store_down, C.UNAVAILABLE),
    ("health", "Check, ready"): (_c_health_serving, C.OK),
    ("health", "Check, not ready or draining"): (_c_health_not_ready, C.OK),
    ("health", "Check of an unknown service name"): (_c_health_unknown, C.NOT_FOUND),
    ("any", "a method the service does not have"): (_c_any_unknown_method, C.UNIMPLEMENTED),
    ("any", "request metadata (headers) over 16 KiB"): (_c_any_huge_metadata, C.RESOURCE_EXHAUSTED),
}

# rows whose case lives in another file (they need a differently configured server)
ELSEWHERE = {
    ("Recommend", "ranking runs out of its own budget (the last 20 % of the call is reserve)"):
        "tests/test_ranking_ranker.py::test_ranking_out_of_budget_answers_partial_inside_the_deadline",
    ("any", "no token, or a token not in the token file"): "tests/test_security.py",
    ("any", "a token not allowed this method"): "tests/test_security.py",
}


def doc_rows() -> list[tuple[str, str, str]]:
    """(rpc, situation, code) rows of the "Status codes" table in docs/RELIABILITY.md."""
    text = DOC.read_text()
    section = text.split("## Status codes", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and line.startswith("|") and not set(cells[0]) <= {"-"} and cells[0] != "RPC":
            rows.append((cells[0], cells[1], re.match(r"`?([A-Z_]+)", cells[2]).group(1)))
    return rows


def test_every_row_has_a_case():
    rows = doc_rows()
    documented = {(r, s) for r, s, _ in rows}
    assert documented == set(CASES) | set(ELSEWHERE), (
        f"rows without a case: {sorted(documented - set(CASES) - set(ELSEWHERE))}; "
        f"cases without a row: {sorted(set(CASES) | set(ELSEWHERE) - documented)}"
    )
    for rpc, situation, code in rows:
        if (rpc, situation) in CASES:
            assert CASES[(rpc, situation)][1].name == code, (rpc, situation, code)


@pytest.mark.parametrize("key", list(CASES), ids=[f"{r}-{s}" for r, s in CASES])
def test_status_code(stack, monkeypatch, key):
    call, expected = CASES[key]
    if expected == C.OK:
        call(stack, monkeypatch)
        return
    with pytest.raises(grpc.RpcError) as err:
        call(stack, monkeypatch)
    assert err.value.code() == expected, (key, err.value.code(), err.value.details())
    details = err.value.details() or ""
    assert "Traceback" not in details and ".py" not in details, f"leaked a trace: {details!r}"
    if expected == C.INTERNAL and call is _c_rec_cand_refuses_our_request:
        assert details.startswith(CAND_REFUSED + "INVALID_ARGUMENT: history_item_ids[0]: "), details
    elif expected == C.INTERNAL:
        assert details == INTERNAL_MESSAGE, details
    if expected == C.INVALID_ARGUMENT:
        assert re.match(r"^[a-z_\[\]0-9.]+: ", details), f"must name the field path first: {details!r}"


def test_internal_error_is_logged_with_its_trace(stack, monkeypatch, caplog):
    monkeypatch.setattr(stack.retriever, "retrieve", _fail)
    with pytest.raises(grpc.RpcError) as err:
        stack.candidate.Retrieve(_retrieve(), timeout=10)
    assert err.value.code() == C.INTERNAL and "boom" not in err.value.details()
    traced = [r for r in caplog.records if r.name == "recsys.rpc_guard" and r.exc_info]
    assert traced and "boom" in str(traced[0].exc_info[1]), "the server log must keep the trace"
