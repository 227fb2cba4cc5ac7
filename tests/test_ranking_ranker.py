"""The Ranker with rules, explanations, A/B variants and the popular+trending fallback, on
the session's real trained bundle with the real candidate tier in process; the event
store's variant column and `recsys report` on a real SQLite file."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from evaluation.run import InProcessCandidateSource
from ranking_svc.events import MemoryEventStore, SQLiteEventStore, StoredEvent, click_rates
from ranking_svc.experiments import bucket, load_experiment, parse_experiment
from ranking_svc.ranker import (
    FALLBACK,
    FALLBACK_TRENDING,
    RANKING_TIMEOUT,
    CandidateList,
    CandidateUnavailable,
    DeadlinePassed,
    Demographics,
    LazyList,
    Ranker,
)
from ranking_svc.rules import RuleConfig, RuleConfigError
from recsys.ranking_features import FEATURE_NAMES

T = 1_700_000_000_000


@pytest.fixture(scope="module")
def ranker(bundle, retriever):
    r = Ranker(bundle, InProcessCandidateSource(retriever), MemoryEventStore(), num_candidates=150)
    r.warmup()
    return r


def test_explanations_name_the_real_sources_and_feature_contributions(ranker, bundle):
    user = bundle.user_ids[3]
    got = ranker.recommend(user, 10, time_ms=T, explain=True)
    h = ranker.history(user, Demographics())
    fetched = ranker.candidates.fetch(user, [bundle.item_ids[i] for i in h.positives[: bundle.spec.history_length]],
                                      h.demographics, T, 150, [], 1.0)
    proposed = dict(zip(fetched.item_ids, fetched.sources))
    assert got.items and all(it.explanation is not None for it in got.items)
    weights = dict(zip(FEATURE_NAMES, ranker.weights_for(len(h.positives))[0].tolist()))  # the user's segment
    for it in got.items:
        x = it.explanation
        assert x.sources == it.sources == proposed[it.item_id], "explanation must name the proposing sources"
        assert 1 <= len(x.features) <= 3
        for c in x.features:
            assert c.weight == pytest.approx(weights[c.name])
            assert c.contribution == pytest.approx(c.weight * c.value, abs=1e-5)
        mags = [abs(c.contribution) for c in x.features]
        assert mags == sorted(mags, reverse=True)
    # the values are the item's real feature values, recomputed here from the user state
    state = ranker.user_state(h, np.asarray(fetched.user_embedding, dtype=np.float32))
    lead = got.items[0]
    feats = ranker._features(state, np.array([bundle.item_index[lead.item_id]], dtype=np.int64))[0]
    for c in lead.explanation.features:
        assert c.value == pytest.approx(float(feats[FEATURE_NAMES.index(c.name)]), abs=1e-5), c.name
    assert ranker.recommend(user, 10, time_ms=T).items[0].explanation is None, "explain is off by default"


def test_lazy_list_reads_like_a_list_and_makes_each_value_once():
    made = []

    def make(i):
        made.append(i)
        return [f"s{i}"]

    lazy, eager = LazyList(5, make), [[f"s{i}"] for i in range(5)]
    assert len(lazy) == 5 and made == [], "nothing is made before it is read"
    assert lazy[3] == eager[3] and lazy[-1] == eager[-1] and lazy[1:4] == eager[1:4]
    assert list(lazy) == eager and lazy[3] is lazy[3]
    assert sorted(made) == [0, 1, 2, 3, 4], "each value made once"
    with pytest.raises(IndexError):
        lazy[5]


def test_lazily_decoded_sources_give_the_same_answer(ranker, bundle):
    """Recommend reads a candidate's sources only for the items it returns: a source whose
    sources are a LazyList (as the gRPC source's are), with an id the bundle does not know
    mixed in, answers exactly as the eager lists do, and decodes at most k of them."""
    inner = ranker.candidates

    class Lazy:
        def __init__(self):
            self.decoded = 0

        def fetch(self, *args):
            got = inner.fetch(*args)
            ids = ["no-such-item", *got.item_ids]
            eager = [["popular"], *got.sources]

            def decode(i):
                self.decoded += 1
                return list(eager[i])

            return CandidateList(ids, [0.0, *got.two_tower_scores], LazyList(len(ids), decode), got.user_embedding)

    lazy_source = Lazy()
    lazy = Ranker(bundle, lazy_source, MemoryEventStore(), num_candidates=150)
    for u in (1, 4, 9):
        user = bundle.user_ids[u]
        want = ranker.recommend(user, 10, time_ms=T, explain=True)
        got = lazy.recommend(user, 10, time_ms=T, explain=True)
        assert [(it.item_id, it.sources, it.explanation.sources) for it in got.items] == \
            [(it.item_id, it.sources, it.explanation.sources) for it in want.items]
        assert [it.score for it in got.items] == pytest.approx([it.score for it in want.items], abs=1e-6)
    assert lazy_source.decoded <= 3 * 10, "sources decoded beyond the returned items"


def test_explanations_report_rule_moves(ranker, bundle):
    rules = RuleConfig(steps=("mmr",), mmr_lambda=0.3)
    moved = [r for it in ranker.recommend(bundle.user_ids[5], 10, time_ms=T, explain=True, rules=rules).items
             for r in it.explanation.rules]
    assert any(r.startswith("mmr: moved from") for r in moved), moved
    plain = ranker.recommend(bundle.user_ids[5], 10, time_ms=T, explain=True, rules=RuleConfig(steps=()))
    assert not [r for it in plain.items for r in it.explanation.rules], "no optional rule ran: nothing moved"


def test_rules_config_changes_the_answer(ranker, bundle):
    user = bundle.user_ids[7]
    a = [it.item_id for it in ranker.recommend(user, 10, time_ms=T, rules=RuleConfig(steps=())).items]
    b = [it.item_id for it in ranker.recommend(user, 10, time_ms=T, rules=RuleConfig(steps=("mmr",), mmr_lambda=0.0)).items]
    assert a != b and a[0] == b[0]


def test_fallback_mixes_popular_and_trending_and_counts(bundle):
    class Down:
        def fetch(self, *args, **kwargs):
            raise CandidateUnavailable("UNAVAILABLE: connection refused")

    r = Ranker(bundle, Down(), MemoryEventStore(), rules=RuleConfig(steps=()))
    assert "trending" in r.trending_source  # says where trending came from
    before = r.degraded_total()
    result = r.recommend(bundle.user_ids[0], 20, time_ms=T)
    assert result.degraded and r.degraded_total() == before + 1 and r.degraded["UNAVAILABLE"] >= 1
    sources = {s for it in result.items for s in it.sources}
    assert sources == {FALLBACK, FALLBACK_TRENDING}, sources
    # the interleaved list really holds each source's best items
    assert r.fallback_order[0] == r.popular_order[0]
    assert r.trending_order[0] in r.fallback_order[:2]
    # trending differs from all-time popularity (else the second source adds nothing)
    assert not np.array_equal(r.trending_order[:20], r.popular_order[:20])


def test_work_stops_between_stages_once_the_deadline_has_passed(bundle, retriever):
    """A Retrieve that comes back after the caller's deadline (a source that ignores its
    timeout) must not be scored or re-ranked: DeadlinePassed names the stage skipped. With
    time left, the same source's answer is ranked normally."""
    import time

    inner = InProcessCandidateSource(retriever)

    class Late:
        delay = 0.0

        def fetch(self, *args, **kwargs):
            got = inner.fetch(*args, **kwargs)
            time.sleep(self.delay)
            return got

    late = Late()
    r = Ranker(bundle, late, MemoryEventStore(), rules=RuleConfig(steps=()))
    scored = []
    features = r._features
    r._features = lambda *a: scored.append(1) or features(*a)
    late.delay = 0.3
    with pytest.raises(DeadlinePassed) as err:
        r.recommend(bundle.user_ids[0], 10, time_ms=T, deadline=time.monotonic() + 0.25)
    assert err.value.stage == "scoring" and not scored
    with pytest.raises(DeadlinePassed) as err:
        r.recommend(bundle.user_ids[0], 10, time_ms=T, deadline=time.monotonic() - 1)
    assert err.value.stage == "retrieval" and not scored
    late.delay = 0.0
    got = r.recommend(bundle.user_ids[0], 10, time_ms=T, deadline=time.monotonic() + 30)
    assert len(got.items) == 10 and not got.degraded and scored


def test_ranking_out_of_budget_answers_partial_inside_the_deadline(bundle, retriever):
    """Reliability promise 17: a slow scoring stage that eats ranking's budget (deadline
    minus 20 % of the call) gets the optional rules skipped and a degraded RANKING_TIMEOUT
    answer before the deadline; once scoring is known to cost more than the budget left,
    the next call skips scoring and answers in the candidate tier's order at once. Seen and
    excluded items stay out either way."""
    import time

    r = Ranker(bundle, InProcessCandidateSource(retriever), MemoryEventStore())
    features = r._features
    slow = {"s": 0.0}
    r._features = lambda *a: time.sleep(slow["s"]) or features(*a)
    user = bundle.user_ids[0]
    normal = r.recommend(user, 10, time_ms=T, deadline=time.monotonic() + 30)
    assert not normal.degraded and len(normal.items) == 10
    excluded = [normal.items[0].item_id]
    slow["s"] = 0.9
    t0 = time.monotonic()
    got = r.recommend(user, 10, exclude_ids=excluded, time_ms=T, deadline=t0 + 1.0)
    took = time.monotonic() - t0
    assert got.degraded and got.degraded_reason == f"{RANKING_TIMEOUT}: scored; optional rules skipped", got
    assert took < 1.0 and len(got.items) == 10 and excluded[0] not in [it.item_id for it in got.items]
    assert r.ranking_cost_s > 0.4, "the slow stage is remembered"
    t0 = time.monotonic()
    fast = r.recommend(user, 10, exclude_ids=excluded, time_ms=T, deadline=t0 + 0.5)
    assert time.monotonic() - t0 < 0.5, "no scoring: it answers at once"
    assert fast.degraded and fast.degraded_reason == f"{RANKING_TIMEOUT}: no budget left to score", fast
    assert len(fast.items) == 10 and excluded[0] not in [it.item_id for it in fast.items]
    assert r.degraded[RANKING_TIMEOUT] == 2


# ------------------------------------------------------------------------------ A/B


def test_same_user_same_variant_and_shares_match_config():
    exp = parse_experiment({"salt": "s1", "variants": [
        {"name": "control", "share": 0.5}, {"name": "b", "share": 0.3, "rules": {"mmr_lambda": 0.5}},
        {"name": "c", "share": 0.2, "rules": {"steps": []}}]})
    assert exp.assign("user-42").name == exp.assign("user-42").name
    assert bucket("user-42", "s1") == bucket("user-42", "s1") and 0.0 <= bucket("x") < 1.0
    n = 100_000
    counts: dict[str, int] = {}
    for i in range(n):
        name = exp.assign(f"u{i}").name
        counts[name] = counts.get(name, 0) + 1
    for v in exp.variants:
        assert abs(counts[v.name] / n - v.share) < 0.01, f"{v.name}: {counts[v.name] / n:.4f} vs {v.share} (tol 0.01)"
    assert exp.variants[1].rules.mmr_lambda == 0.5 and exp.variants[2].rules.steps == ()
    other = parse_experiment({"salt": "s2", "variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}]})
    flips = sum(exp.assign(f"u{i}").name == "control" and other.assign(f"u{i}").name == "a" for i in range(2000))
    assert 300 < flips < 700, "a new salt must reshuffle users independently"


@pytest.mark.parametrize("data, key", [
    ({"variants": []}, "variants"),
    ({"variants": [{"name": "a", "share": 0.6}, {"name": "b", "share": 0.6}]}, "variants"),
    ({"variants": [{"name": "a", "share": 1.0, "rules": {"mmr_lambda": 2}}]}, "variants[0].rules.mmr_lambda"),
    ({"variants": [{"name": "a b", "share": 1.0}]}, "variants[0].name"),
    ({"variants": [{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}]}, "variants[1].name"),
    ({"variants": [{"name": "a", "share": 1.0}], "extra": 1}, "experiments"),
])
def test_experiment_errors_name_the_key(data, key):
    with pytest.raises(RuleConfigError) as err:
        parse_experiment(data)
    assert str(err.value).startswith(key), str(err.value)


def test_no_experiment_file_is_one_default_variant():
    exp = load_experiment("")
    assert [v.name for v in exp.variants] == ["default"] and exp.assign("anyone").share == 1.0


# ------------------------------------------------------------------ events per variant


def test_events_keep_their_variant_and_report_click_rates(tmp_path, capsys):
    path = tmp_path / "events.sqlite3"
    store = SQLiteEventStore(path)
    events = []
    for v, users, clicks_per in (("a", 10, 2), ("b", 10, 5)):
        for u in range(users):
            for j in range(10):
                events.append(StoredEvent(f"{v}-{u}-i{j}", f"{v}u{u}", f"i{j}", "impression", 1.0, T + j, "", v))
            for j in range(clicks_per):
                events.append(StoredEvent(f"{v}-{u}-c{j}", f"{v}u{u}", f"i{j}", "click", 1.0, T + 100 + j, "", v))
    assert store.append(events) == (len(events), 0)
    assert store.user_events("au0", 1)[0].variant == "a"
    store.close()
    rows = {r.variant: r for r in click_rates(path)}
    assert (rows["a"].impressions, rows["a"].clicks, rows["a"].users) == (100, 20, 10)
    assert rows["a"].click_rate == pytest.approx(0.2) and rows["b"].click_rate == pytest.approx(0.5)
    lo, hi = rows["a"].interval95()
    assert lo < 0.2 < hi
    from recsys.cli import main

    assert main(["report", "--event-db", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0.2000" in out and "0.5000" in out and out.splitlines()[0].startswith("variant")


def test_old_event_store_gains_the_variant_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript("""CREATE TABLE events (seq INTEGER PRIMARY KEY, idempotency_key TEXT NOT NULL UNIQUE,
        user_id TEXT NOT NULL, item_id TEXT NOT NULL, event_type TEXT NOT NULL, value REAL NOT NULL,
        timestamp_ms INTEGER NOT NULL, query TEXT NOT NULL DEFAULT '', received_ms INTEGER NOT NULL DEFAULT 0);
        INSERT INTO events (idempotency_key, user_id, item_id, event_type, value, timestamp_ms)
        VALUES ('k0', 'u', 'i', 'impression', 1, 1000);""")
    conn.commit()
    conn.close()
    assert [r.variant for r in click_rates(path)] == [""]  # read-only report works before migration
    store = SQLiteEventStore(path)
    store.append([StoredEvent("k1", "u", "i", "click", 1.0, 2000, "", "b")])
    assert [e.variant for e in store.user_events("u", 5)] == ["b", ""]
    store.close()
