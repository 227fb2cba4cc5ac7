"""Online item statistics feeding the ranking tier (ranking_svc/live_stats.py): a real
SQLite event store, the session's trained bundle, a controllable clock for the TTL."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from evaluation.run import InProcessCandidateSource
from ranking_svc.events import TRENDING_HALF_LIFE_MS, SQLiteEventStore, StoredEvent
from ranking_svc.live_stats import LiveTrending
from ranking_svc.ranker import FALLBACK_TRENDING, CandidateUnavailable, Demographics, Ranker
from recsys.ranking_features import FEATURE_NAMES

LOG_TRENDING = FEATURE_NAMES.index("log_trending")
T_MS = 1_700_000_000_000


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def clicks(item: str, n: int, ts_ms: int, tag: str = "") -> list[StoredEvent]:
    return [StoredEvent(f"{tag}{item}-{j}", f"user{j}", item, "click", 1.0, ts_ms) for j in range(n)]


def test_refresh_only_after_ttl_and_blend_is_the_known_answer(tmp_path):
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    clock = Clock()
    now_ms = 100 * TRENDING_HALF_LIFE_MS
    bundle_trending = np.array([4.0, 0.0, 2.0])
    static = np.zeros((3, 3), np.float32)
    static[:, 1] = np.log1p(bundle_trending)
    live = LiveTrending(store, ["a", "b", "c"], bundle_trending, static,
                        bundle_time_max_s=(now_ms - TRENDING_HALF_LIFE_MS) / 1000,  # one half-life old
                        ttl_s=5.0, clock=clock, wall_ms=lambda: now_ms)
    try:
        assert live.get().at_ms == 0, "no live stats yet: the bundle's arrays as trained"
        assert live.refreshes == 1
        store.append(clicks("b", 3, now_ms))
        clock.t += 4.9
        assert live.get().at_ms == 0 and live.refreshes == 1, "refreshed before the TTL"
        clock.t += 0.2
        snap = live.get()
        assert live.refreshes == 2
        # bundle decayed one half-life + live clicks at `now`
        expected = np.array([2.0, 3.0, 1.0])
        np.testing.assert_allclose(snap.trending, expected, rtol=1e-9)
        np.testing.assert_allclose(snap.item_static[:, 1], np.log1p(expected), rtol=1e-6)
        assert static[1, 1] == 0.0, "the bundle's matrix must not be modified in place"
    finally:
        store.close()


def test_failed_refresh_keeps_the_previous_copy(tmp_path):
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    store.append(clicks("a", 1, 5_000))
    clock = Clock()
    live = LiveTrending(store, ["a"], np.zeros(1), np.zeros((1, 3), np.float32), 0.0, ttl_s=1.0,
                        clock=clock, wall_ms=lambda: 5_000)
    first = live.get()
    assert first.trending[0] == pytest.approx(1.0)
    store.close()  # every later read fails
    clock.t += 2
    assert live.get() is first


@pytest.fixture()
def live_ranker(bundle, retriever, tmp_path):
    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    r = Ranker(bundle, InProcessCandidateSource(retriever), store, num_candidates=150, live_trending_ttl_s=5.0)
    r.live.clock = Clock()
    yield r, store
    store.close()


def test_burst_of_clicks_raises_the_trending_feature_after_the_ttl(live_ranker, bundle):
    ranker, store = live_ranker
    cand = np.arange(bundle.n_items, dtype=np.int64)
    state = ranker.user_state(ranker.history("nobody", Demographics()),
                              np.zeros(bundle.item_embeddings.shape[1], np.float32))
    before = ranker._features(state, cand, ranker.item_side()[0])[:, LOG_TRENDING].copy()
    target = int(np.argmin(before))  # the least trending item
    now_ms = int(time.time() * 1000)
    store.append(clicks(bundle.item_ids[target], 50, now_ms, tag="burst"))
    cached = ranker._features(state, cand, ranker.item_side()[0])[:, LOG_TRENDING]
    assert cached[target] == before[target], "read the store before the TTL passed"
    ranker.live.clock.t += 5.01
    after = ranker._features(state, cand, ranker.item_side()[0])[:, LOG_TRENDING]
    assert after[target] >= math.log1p(49.0), f"50 clicks just now must give log_trending >= log1p(49), got {after[target]}"
    assert int(np.argmax(after)) == target, "the burst item must now be the most trending"


def test_burst_item_leads_the_trending_half_of_the_degraded_fallback(live_ranker, bundle):
    ranker, store = live_ranker

    class Down:
        def fetch(self, *a, **k):
            raise CandidateUnavailable("UNAVAILABLE: test")

    ranker.candidates = Down()
    order = ranker.item_side()[1]
    target = int(order[-1])  # last in the fallback: neither popular nor trending
    store.append(clicks(bundle.item_ids[target], 50, int(time.time() * 1000), tag="fb"))
    ranker.live.clock.t += 10
    order, sources = ranker.item_side()[1:]
    pos = order.tolist().index(target)
    assert pos <= 1 and FALLBACK_TRENDING in sources[pos], (pos, sources[pos])
    got = ranker.recommend("nobody-fb", 100)
    assert got.degraded and bundle.item_ids[target] in [it.item_id for it in got.items]



# ------------------------------------------------------------------------------ candidate tier


@pytest.fixture()
def live_retriever(bundle, tmp_path):
    from candidate_svc.retrieval import Retriever

    store = SQLiteEventStore(tmp_path / "events.sqlite3")
    r = Retriever(bundle)
    live = r.attach_live_stats(store, ttl_s=5.0)
    live.clock = Clock()
    yield r, store
    store.close()


def test_trending_source_follows_live_clicks_after_the_ttl(live_retriever, bundle):
    from candidate_svc.retrieval import Request
    from candidate_svc.sources import TRENDING
    from recsys.features import UserInput

    r, store = live_retriever
    req = Request(UserInput(history=[], time_ms=T_MS), num=5, quotas={TRENDING: 5})
    before = r.retrieve([req])[0]
    bundle_first = r.sources[TRENDING].order[0]
    target = int(r.sources[TRENDING].order[-1])  # the least trending item the bundle knows
    store.append(clicks(bundle.item_ids[target], 100, int(time.time() * 1000), tag="cand"))
    assert r.retrieve([req])[0].items.tolist() == before.items.tolist(), "re-read before the TTL"
    r.live.clock.t += 5.01
    got = r.retrieve([req])[0]
    trending_items = [i for i, s in zip(got.items.tolist(), got.sources) if TRENDING in s]
    assert target in trending_items, (target, trending_items)
    assert r.sources[TRENDING].order[0] == target != bundle_first


def test_fresh_source_thompson_sampling_uses_live_impressions_and_clicks(live_retriever, bundle):
    from candidate_svc.sources import FRESH

    r, store = live_retriever
    fresh = r.sources[FRESH]
    item = int(fresh.eligible[0])
    a0, b0 = float(fresh.alpha[0]), float(fresh.beta[0])
    now = int(time.time() * 1000)
    store.append([StoredEvent(f"imp{j}", f"u{j}", bundle.item_ids[item], "impression", 1.0, now)
                  for j in range(40)] + clicks(bundle.item_ids[item], 10, now, tag="fresh"))
    r.live.clock.t += 10
    r.retrieve([])  # a request triggers the refresh
    fresh = r.sources[FRESH]
    k = int(np.flatnonzero(fresh.eligible == item)[0]) if item in fresh.eligible else -1
    if k < 0:  # 40 live impressions pushed it past max_impressions: no longer fresh
        assert float(bundle.extras["item_impressions"][item]) + 40 > 200
        return
    # Beta(1 + clicks, 1 + impressions - clicks): +10 clicks, +40 - 10 misses
    assert (float(fresh.alpha[k]), float(fresh.beta[k])) == pytest.approx((a0 + 10, b0 + 30))


@pytest.mark.slow
def test_candidate_process_with_event_db_serves_live_trending(bundle_root, bundle, tmp_path):
    """`recsys serve candidate --event-db F --live-stats-ttl-s S` over real gRPC: clicks
    stored in F (as the ranking tier stores them) lead the trending source after S."""
    import grpc

    from recsys.procs import start_service
    from recsys.v1 import candidate_pb2, candidate_pb2_grpc

    db = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(db)
    cand = start_service("candidate", ["--bundle", str(bundle_root), "--event-db", str(db),
                                       "--live-stats-ttl-s", "0.2"], tmp_path / "logs")
    try:
        with grpc.insecure_channel(cand.address) as channel:
            stub = candidate_pb2_grpc.CandidateServiceStub(channel)

            def trending_ids() -> list[str]:
                resp = stub.Retrieve(candidate_pb2.RetrieveRequest(
                    num_candidates=3, source_quotas={"trending": 3}, request_time_ms=T_MS), timeout=10)
                return [c.item_id for c in resp.candidates if any(s.source == "trending" for s in c.sources)]

            before = trending_ids()
            target = next(i for i in reversed(bundle.item_ids) if i not in before)
            store.append(clicks(target, 100, int(time.time() * 1000), tag="proc"))
            deadline = time.monotonic() + 10
            while target not in (got := trending_ids()):
                assert time.monotonic() < deadline, f"{target} never reached the trending source: {got}"
                time.sleep(0.1)
    finally:
        assert cand.stop() == 0
        store.close()
