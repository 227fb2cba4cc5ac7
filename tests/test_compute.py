"""recsys/compute.py: one request computes at a time per process, and the ranking tier
lets the lock go while it waits for Retrieve (a real gRPC server on loopback)."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from recsys.compute import ComputeLock
from recsys.v1 import candidate_pb2

WAIT_S = 5.0  # generous: only a broken lock makes a test wait this long


def _in_thread(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_hold_is_exclusive_and_the_second_holder_waits_for_the_first():
    lock = ComputeLock()
    inside, leave = threading.Event(), threading.Event()
    order: list[str] = []

    def first():
        with lock.hold():
            order.append("first in")
            inside.set()
            leave.wait(WAIT_S)
            order.append("first out")

    def second():
        with lock.hold():
            order.append("second in")

    a = _in_thread(first)
    assert inside.wait(WAIT_S)
    b = _in_thread(second)
    time.sleep(0.1)
    assert order == ["first in"]  # the second is queued on the lock
    leave.set()
    a.join(WAIT_S)
    b.join(WAIT_S)
    assert order == ["first in", "first out", "second in"]


def test_released_lets_another_request_compute_and_takes_the_lock_back_after():
    lock = ComputeLock()
    waiting, other_done = threading.Event(), threading.Event()
    seen: list[bool] = []

    def request():
        with lock.hold():
            with lock.released():
                assert not lock.held()
                waiting.set()
                other_done.wait(WAIT_S)
            seen.append(lock.held())

    def other():
        assert waiting.wait(WAIT_S)
        with lock.hold():
            other_done.set()

    a, b = _in_thread(request), _in_thread(other)
    a.join(WAIT_S)
    b.join(WAIT_S)
    assert other_done.is_set() and seen == [True]


def test_released_and_hold_are_no_ops_where_they_do_not_apply():
    lock = ComputeLock()
    with lock.released():  # never held by this thread: nothing to let go
        assert not lock.held()
    with lock.hold():
        with lock.hold():  # re-entered in the same thread
            assert lock.held()
        assert lock.held()
    assert not lock.held()


def test_an_exception_inside_hold_frees_the_lock():
    lock = ComputeLock()
    with pytest.raises(ValueError):
        with lock.hold():
            raise ValueError("boom")
    got = threading.Event()
    _in_thread(lambda: (lock.hold().__enter__(), got.set())).join(WAIT_S)
    assert got.is_set()


def test_the_ranking_tier_lets_the_lock_go_while_retrieve_is_in_flight():
    """GrpcCandidateSource.fetch against a real server that answers after 0.5 s: while one
    thread holds the process lock and waits there, another takes it at once."""
    from ranking_svc.ranker import Demographics
    from ranking_svc.server import GrpcCandidateSource
    from recsys.compute import COMPUTE

    answered = candidate_pb2.RetrieveResponse(
        candidates=[candidate_pb2.Candidate(item_id="i1", two_tower_score=0.5)]).SerializeToString()

    def slow(request: bytes, context) -> bytes:
        time.sleep(0.5)
        return answered

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "recsys.v1.CandidateService", {"Retrieve": grpc.unary_unary_rpc_method_handler(slow)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    source = GrpcCandidateSource(f"127.0.0.1:{port}")
    try:
        got: list = []
        started = threading.Event()

        def request():
            with COMPUTE.hold():
                started.set()
                got.append(source.fetch("u1", [], Demographics(), 0, 10, [], timeout_s=WAIT_S))
                got.append(COMPUTE.held())

        a = _in_thread(request)
        assert started.wait(WAIT_S)
        time.sleep(0.1)  # the fetch is on the wire now
        t0 = time.monotonic()
        with COMPUTE.hold():
            took = time.monotonic() - t0
            still_waiting = a.is_alive()
        a.join(WAIT_S)
        assert still_waiting and took < 0.3, f"the lock was not free during Retrieve (waited {took:.2f}s)"
        assert list(got[0].item_ids) == ["i1"] and got[1] is True
    finally:
        source.close()
        server.stop(0)


@pytest.fixture(scope="module")
def stack(bundle, tmp_path_factory):
    from tests.service_stack import serve_both

    with serve_both(bundle, tmp_path_factory.mktemp("compute")) as s:
        yield s


def test_both_handlers_compute_under_the_lock_and_skip_a_call_whose_caller_left(stack, monkeypatch):
    """While this test holds the process's lock, Retrieve and Recommend (both tiers in this
    process) cannot compute: each call runs out its deadline. Once the lock is free, the
    queued Recommend sees its caller gone and never starts ranking; later calls are answered."""
    from recsys.compute import COMPUTE
    from recsys.v1 import ranking_pb2

    user = stack.ranker.bundle.user_ids[0]
    retrieve = candidate_pb2.RetrieveRequest(user_id=user, num_candidates=5)
    recommend = ranking_pb2.RecommendRequest(user_id=user, k=3)
    started: list[str] = []
    real = stack.ranker.recommend
    monkeypatch.setattr(stack.ranker, "recommend", lambda user_id, *a, **k: (started.append(user_id), real(user_id, *a, **k))[1])
    with COMPUTE.hold():
        for call, request in ((stack.candidate.Retrieve, retrieve), (stack.ranking.Recommend, recommend)):
            with pytest.raises(grpc.RpcError) as e:
                call(request, timeout=0.5)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert started == [], "Recommend started ranking without the lock"
    time.sleep(0.3)  # the queued Recommend takes the lock now, and must see its caller gone
    assert started == [], "the queued Recommend went on computing for a caller that left"
    assert len(stack.candidate.Retrieve(retrieve, timeout=10).candidates) == 5
    assert len(stack.ranking.Recommend(recommend, timeout=10).items) == 3
    assert started == [user]
