"""RankingService as a real process with an A/B experiment file, a real candidate tier,
then that candidate tier frozen (late) and stopped (down)."""

from __future__ import annotations

import json
import signal
import time

import grpc
import pytest

from ranking_svc.events import click_rates
from ranking_svc.experiments import load_experiment
from recsys.procs import start_service
from recsys.v1 import ranking_pb2, ranking_pb2_grpc

pytestmark = pytest.mark.slow

EXPERIMENT = {
    "salt": "e2e",
    "rules": {"creator_cap": 2},
    "variants": [
        {"name": "control", "share": 0.5},
        {"name": "diverse", "share": 0.5, "rules": {"mmr_lambda": 0.3}},
    ],
}


@pytest.fixture(scope="module")
def stack(bundle_root, tmp_path_factory):
    logs = tmp_path_factory.mktemp("ranking-e2e")
    exp_file = logs / "experiments.json"
    exp_file.write_text(json.dumps(EXPERIMENT))
    cand = start_service("candidate", ["--bundle", str(bundle_root)], logs)
    rank = None
    try:
        rank = start_service(
            "ranking",
            ["--bundle", str(bundle_root), "--candidate-address", cand.address,
             "--event-db", str(logs / "events.sqlite3"), "--experiments", str(exp_file),
             "--retrieve-timeout-ms", "5000"],  # long: the caller's deadline must win
            logs,
        )
        yield cand, rank, logs / "events.sqlite3", load_experiment(exp_file)
    finally:
        if cand.proc.poll() is None:
            cand.proc.send_signal(signal.SIGCONT)
        for s in (rank, cand):
            if s is not None:
                s.stop()


def test_variant_explanations_and_report(stack, bundle):
    _, rank, db, exp = stack
    users = bundle.user_ids[:20]
    now = int(time.time() * 1000)
    with grpc.insecure_channel(rank.address) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        seen_variants = set()
        events = []
        for n, user in enumerate(users):
            resp = stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=5, explain=True), timeout=10)
            assert not resp.degraded, resp.degraded_reason
            assert resp.variant == exp.assign(user).name, "response must name the user's stable variant"
            again = stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=5), timeout=10)
            assert again.variant == resp.variant and not again.items[0].HasField("explanation")
            seen_variants.add(resp.variant)
            for it in resp.items:
                assert list(it.explanation.sources) == list(it.sources) and it.sources
                assert it.explanation.top_features and all(
                    abs(f.contribution - f.weight * f.value) < 1e-4 for f in it.explanation.top_features)
            # impressions for all 5, a click on the first; odd users echo the variant, even leave it to the server
            for j, it in enumerate(resp.items):
                events.append(ranking_pb2.Event(idempotency_key=f"imp-{n}-{j}", user_id=user, item_id=it.item_id,
                                                type=ranking_pb2.EVENT_TYPE_IMPRESSION, timestamp_ms=now,
                                                variant=resp.variant if n % 2 else ""))
            events.append(ranking_pb2.Event(idempotency_key=f"clk-{n}", user_id=user, item_id=resp.items[0].item_id,
                                            type=ranking_pb2.EVENT_TYPE_CLICK, timestamp_ms=now + 1))
        assert seen_variants == {"control", "diverse"}
        assert stub.LogEvents(ranking_pb2.LogEventsRequest(events=events), timeout=10).stored == len(events)
        with pytest.raises(grpc.RpcError) as err:
            stub.LogEvents(ranking_pb2.LogEventsRequest(events=[ranking_pb2.Event(
                idempotency_key="bad", user_id="u", item_id="i", type=ranking_pb2.EVENT_TYPE_CLICK,
                timestamp_ms=now, variant="no spaces")]), timeout=10)
        assert err.value.details().startswith("events[0].variant:")
    rows = {r.variant: r for r in click_rates(db)}
    for name in ("control", "diverse"):
        n_users = sum(exp.assign(u).name == name for u in users)
        assert rows[name].impressions == 5 * n_users and rows[name].clicks == n_users
        assert rows[name].click_rate == pytest.approx(0.2)


def test_recommend_answers_within_its_deadline_when_candidates_are_late_or_down(stack, bundle):
    cand, rank, _, _ = stack
    user = bundle.user_ids[0]
    deadline_s = 0.5
    with grpc.insecure_channel(rank.address) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=5), timeout=10)  # channel warm
        cand.proc.send_signal(signal.SIGSTOP)  # late: accepts nothing, answers nothing
        try:
            t0 = time.monotonic()
            late = stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=5), timeout=deadline_s)
            late_s = time.monotonic() - t0
        finally:
            cand.proc.send_signal(signal.SIGCONT)
        assert late.degraded and "DEADLINE_EXCEEDED" in late.degraded_reason, late.degraded_reason
        assert len(late.items) == 5 and late_s < deadline_s, f"answered in {late_s:.3f}s, deadline {deadline_s}s"
        assert cand.stop() == 0  # down
        t0 = time.monotonic()
        down = stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=5), timeout=deadline_s)
        down_s = time.monotonic() - t0
        assert down.degraded and len(down.items) == 5 and down_s < deadline_s, (down.degraded_reason, down_s)
        assert {s for it in down.items for s in it.sources} <= {"fallback_popular", "fallback_trending"}
