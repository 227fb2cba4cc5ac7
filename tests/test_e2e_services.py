"""Both services as real processes on free loopback ports, talked to over real gRPC."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from candidate_svc.sources import SOURCE_ORDER
from recsys.procs import start_service
from recsys.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2, ranking_pb2, ranking_pb2_grpc

pytestmark = pytest.mark.slow

K = 10


@pytest.fixture(scope="module")
def services(bundle_root, tmp_path_factory):
    logs = tmp_path_factory.mktemp("svc-logs")
    # --reflection: off by default outside dev; test_health_and_reflection checks it serves
    cand = start_service("candidate", ["--bundle", str(bundle_root), "--reflection"], logs)
    rank = None
    try:
        rank = start_service(
            "ranking",
            ["--bundle", str(bundle_root), "--candidate-address", cand.address, "--reflection",
             "--event-db", str(logs / "events.sqlite3"),
             # generous: these tests check answers, not latency, on a shared 2-core machine;
             # a degraded answer here means the candidate tier broke, not that it was slow
             "--retrieve-timeout-ms", "3000"],
            logs,
        )
        yield cand, rank
    finally:
        codes = {s.kind: s.stop() for s in (rank, cand) if s is not None}
        assert codes == {"ranking": 0, "candidate": 0} or codes == {"candidate": 0}, (
            f"services must exit 0 on SIGTERM, got {codes}"
        )


@pytest.fixture(scope="module")
def ranking(services):
    with grpc.insecure_channel(services[1].address) as channel:
        yield ranking_pb2_grpc.RankingServiceStub(channel)


@pytest.fixture(scope="module")
def candidate(services):
    with grpc.insecure_channel(services[0].address) as channel:
        yield candidate_pb2_grpc.CandidateServiceStub(channel)


def known_user(bundle) -> tuple[str, int]:
    """The user with the most training interactions."""
    sizes = [len(bundle.user_seen.row(u)) for u in range(len(bundle.user_ids))]
    row = max(range(len(sizes)), key=sizes.__getitem__)
    return bundle.user_ids[row], row


def test_health_and_reflection(services):
    for svc, name in ((services[0], "recsys.v1.CandidateService"), (services[1], "recsys.v1.RankingService")):
        with grpc.insecure_channel(svc.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", name):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.SERVING, (svc.kind, service)
            refl = reflection_pb2_grpc.ServerReflectionStub(channel)
            (answer,) = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {s.name for s in answer.list_services_response.service}
            assert name in names and "grpc.health.v1.Health" in names, names


def test_known_user_gets_k_distinct_unseen_items(ranking, bundle):
    user, row = known_user(bundle)
    seen = {bundle.item_ids[i] for i in bundle.user_seen.row(row)}
    resp = ranking.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=K), timeout=10)
    ids = [it.item_id for it in resp.items]
    assert len(ids) == K and len(set(ids)) == K, ids
    assert not seen & set(ids), f"returned already-seen items {seen & set(ids)}"
    assert resp.bundle_version == bundle.version
    assert not resp.degraded and not resp.cold_start
    scores = [it.score for it in resp.items]
    # the best-scored item leads; diversity, caps and exploration may re-order the rest
    assert scores[0] == max(scores), "the best-scored item must come first"
    for it in resp.items:
        assert it.sources and set(it.sources) <= set(SOURCE_ORDER), it.sources
        assert it.title == bundle.titles[bundle.item_index[it.item_id]]
        flags = bundle.flags[bundle.item_index[it.item_id]]
        assert "blocked" not in flags and "misinformation" not in flags


def test_new_user_is_cold_start_not_an_error(ranking, bundle):
    resp = ranking.Recommend(
        ranking_pb2.RecommendRequest(user_id="brand-new-user", k=K,
                                     features=common_pb2.UserFeatures(age=31, region="nowhere")),
        timeout=10,
    )
    assert resp.cold_start and not resp.degraded
    assert len({it.item_id for it in resp.items}) == K


def test_events_change_the_next_answer(ranking, bundle):
    user = "fresh-user-events"
    before = ranking.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=K), timeout=10)
    assert before.cold_start
    liked = [it.item_id for it in before.items[:3]]
    now = int(time.time() * 1000)
    batch = ranking_pb2.LogEventsRequest(events=[
        ranking_pb2.Event(idempotency_key=f"{user}-{n}", user_id=user, item_id=item,
                          type=ranking_pb2.EVENT_TYPE_LIKE, timestamp_ms=now - n)
        for n, item in enumerate(liked)
    ])
    ack = ranking.LogEvents(batch, timeout=10)
    assert (ack.stored, ack.duplicates) == (3, 0)
    again = ranking.LogEvents(batch, timeout=10)
    assert (again.stored, again.duplicates) == (0, 3), "a retried batch must be stored once"
    after = ranking.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=K), timeout=10)
    assert not after.cold_start
    assert not set(liked) & {it.item_id for it in after.items}, "liked items are seen: never re-shown"
    assert [it.item_id for it in after.items] != [it.item_id for it in before.items]


def genre_share(bundle, item_ids, genre: str) -> float:
    return sum(genre in bundle.genres[bundle.item_index[i]] for i in item_ids) / len(item_ids)


def log_events(ranking, user: str, items, kind, now: int, tag: str) -> None:
    batch = ranking_pb2.LogEventsRequest(events=[
        ranking_pb2.Event(idempotency_key=f"{user}-{tag}-{n}", user_id=user, item_id=item, type=kind,
                          timestamp_ms=now - n)
        for n, item in enumerate(items)
    ])
    assert ranking.LogEvents(batch, timeout=10).stored == len(items)


def liked_genre(bundle) -> tuple[str, list[str]]:
    """The genre with the most single-genre items, and its 3 most popular such items."""
    single = {}
    for i, gs in enumerate(bundle.genres):
        if len(gs) == 1:
            single.setdefault(gs[0], []).append(i)
    genre = max(sorted(single), key=lambda g: len(single[g]))
    top = sorted(single[genre], key=lambda i: -bundle.popularity[i])[:3]
    return genre, [bundle.item_ids[i] for i in top]


# Three likes must turn a cold-start list into one led by their genre: at least half of the
# top 10 from a genre that is about a sixth of the catalog, and 0.3 more than before.
LIKED_SHARE_MIN, LIKED_SHARE_GAIN = 0.5, 0.3


def test_likes_shape_the_next_list_by_genre(ranking, bundle):
    user = "feedback-new-user"
    genre, liked = liked_genre(bundle)
    before = ranking.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=K), timeout=10)
    assert before.cold_start and not before.degraded
    share_before = genre_share(bundle, [it.item_id for it in before.items], genre)
    log_events(ranking, user, liked, ranking_pb2.EVENT_TYPE_LIKE, int(time.time() * 1000), "like")
    after = ranking.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=K), timeout=10)
    assert not after.cold_start and not after.degraded
    share_after = genre_share(bundle, [it.item_id for it in after.items], genre)
    assert share_after >= LIKED_SHARE_MIN and share_after >= share_before + LIKED_SHARE_GAIN, (
        f"{genre}: share of the top {K} {share_before:.2f} before 3 likes, {share_after:.2f} after; "
        f"want >= {LIKED_SHARE_MIN} and >= before + {LIKED_SHARE_GAIN}"
    )


def test_dislike_removes_the_item_and_pushes_similar_items_down(ranking, bundle):
    user = "feedback-disliker"
    genre, liked = liked_genre(bundle)
    now = int(time.time() * 1000)
    log_events(ranking, user, liked, ranking_pb2.EVENT_TYPE_LIKE, now - 1000, "like")
    deep = 50  # positions beyond the top k, so a push down is visible
    first = [it.item_id for it in ranking.Recommend(
        ranking_pb2.RecommendRequest(user_id=user, k=deep), timeout=10).items]
    disliked = first[0]
    c = bundle.content[[bundle.item_index[i] for i in first]]
    cosine = c @ bundle.content[bundle.item_index[disliked]]  # rows are L2-normalised
    similar = [first[p] for p in np.argsort(-cosine[1:], kind="stable")[:5] + 1]
    log_events(ranking, user, [disliked], ranking_pb2.EVENT_TYPE_DISLIKE, now, "dislike")
    second = [it.item_id for it in ranking.Recommend(
        ranking_pb2.RecommendRequest(user_id=user, k=deep), timeout=10).items]
    assert disliked not in second, "a disliked item must never be shown again"
    rank_before = np.mean([first.index(i) for i in similar])
    rank_after = np.mean([second.index(i) if i in second else deep for i in similar])
    assert rank_after > rank_before, (
        f"the 5 items most content-similar to the disliked one sat at mean position "
        f"{rank_before:.1f} and moved to {rank_after:.1f}; a dislike must push them down"
    )


@pytest.mark.parametrize(
    "request_kwargs, field",
    [
        (dict(user_id="u", k=0), "k"),
        (dict(user_id="u", k=101), "k"),
        (dict(user_id="", k=5), "user_id"),
        (dict(user_id="has space", k=5), "user_id"),
        (dict(user_id="x" * 129, k=5), "user_id"),
        (dict(user_id="ctl\x01", k=5), "user_id"),
        (dict(user_id="u", k=5, features=common_pb2.UserFeatures(age=200)), "features.age"),
        (dict(user_id="u", k=5, exclude_item_ids=["ok", "bad id"]), "exclude_item_ids[1]"),
        (dict(user_id="u", k=5, request_time_ms=5), "request_time_ms"),
    ],
)
def test_recommend_rejects_bad_input(ranking, request_kwargs, field):
    with pytest.raises(grpc.RpcError) as err:
        ranking.Recommend(ranking_pb2.RecommendRequest(**request_kwargs), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:"), err.value.details()


def _event(**kw) -> ranking_pb2.Event:
    base = dict(idempotency_key="k1", user_id="u1", item_id="i1", type=ranking_pb2.EVENT_TYPE_CLICK,
                timestamp_ms=int(time.time() * 1000))
    return ranking_pb2.Event(**{**base, **kw})


@pytest.mark.parametrize(
    "events, field",
    [
        ([], "events"),
        ([_event()] * 1001, "events"),
        ([_event(), _event(type=ranking_pb2.EVENT_TYPE_UNSPECIFIED)], "events[1].type"),
        ([_event(idempotency_key="")], "events[0].idempotency_key"),
        ([_event(item_id="")], "events[0].item_id"),
        ([_event(type=ranking_pb2.EVENT_TYPE_RATING, value=9)], "events[0].value"),
        ([_event(type=ranking_pb2.EVENT_TYPE_SEARCH, query="cats")], "events[0].item_id"),
        ([_event(type=ranking_pb2.EVENT_TYPE_SEARCH, item_id="", query="")], "events[0].query"),
        ([_event(timestamp_ms=int(time.time() * 1000) + 3 * 86_400_000)], "events[0].timestamp_ms"),
        ([_event(timestamp_ms=0)], "events[0].timestamp_ms"),
    ],
)
def test_log_events_rejects_bad_input(ranking, events, field):
    with pytest.raises(grpc.RpcError) as err:
        ranking.LogEvents(ranking_pb2.LogEventsRequest(events=events), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:"), err.value.details()


def test_retrieve_directly(candidate, bundle):
    user, row = known_user(bundle)
    history = [bundle.item_ids[i] for i in bundle.user_pos.row(row)[:10]]
    exclude = [bundle.item_ids[i] for i in bundle.user_seen.row(row)]
    resp = candidate.Retrieve(
        candidate_pb2.RetrieveRequest(user_id=user, history_item_ids=history, num_candidates=50,
                                      exclude_item_ids=exclude, request_time_ms=1_700_000_000_000),
        timeout=10,
    )
    ids = [c.item_id for c in resp.candidates]
    assert len(ids) == 50 and len(set(ids)) == 50
    assert not set(exclude) & set(ids)
    assert resp.history_used == 10
    assert len(resp.user_embedding) == bundle.item_embeddings.shape[1]
    scores = [c.two_tower_score for c in resp.candidates]
    assert scores == sorted(scores, reverse=True)
    assert {"two_tower", "item_to_item", "popular"} <= {s.source for c in resp.candidates for s in c.sources}
    assert {s.source for c in resp.candidates for s in c.sources} <= set(SOURCE_ORDER)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_candidates=0), "num_candidates"),
        (dict(num_candidates=2001), "num_candidates"),
        (dict(num_candidates=5, history_item_ids=["a b"]), "history_item_ids[0]"),
        (dict(num_candidates=5, features=common_pb2.UserFeatures(gender="x" * 40)), "features.gender"),
    ],
)
def test_retrieve_rejects_bad_input(candidate, kwargs, field):
    with pytest.raises(grpc.RpcError) as err:
        candidate.Retrieve(candidate_pb2.RetrieveRequest(**kwargs), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}:"), err.value.details()


def test_ranking_degrades_when_candidate_tier_is_down(bundle_root, bundle, tmp_path):
    # Port 1 on loopback: nothing listens, so every Retrieve fails fast with UNAVAILABLE.
    rank = start_service(
        "ranking",
        ["--bundle", str(bundle_root), "--candidate-address", "127.0.0.1:1",
         "--event-db", str(tmp_path / "events.sqlite3")],
        tmp_path,
    )
    try:
        user, row = known_user(bundle)
        seen = {bundle.item_ids[i] for i in bundle.user_seen.row(row)}
        with grpc.insecure_channel(rank.address) as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            resp = stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=K), timeout=10)
        assert resp.degraded and "UNAVAILABLE" in resp.degraded_reason, resp.degraded_reason
        ids = [it.item_id for it in resp.items]
        assert len(set(ids)) == K and not seen & set(ids)
        assert all(set(it.sources) <= {"fallback_popular", "fallback_trending"} for it in resp.items)
    finally:
        assert rank.stop() == 0


def test_loadtest_harness_against_live_services(services, bundle):
    from recsys.loadtest import run_closed_loop

    report = run_closed_loop(services[1].address, bundle.user_ids, concurrency=2, requests=60, k=5, cold_share=0.2)
    assert report["errors"] == {} and report["degraded"] == 0, report
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"], lat
    assert report["rps"] > 0 and report["requests"] == 60
