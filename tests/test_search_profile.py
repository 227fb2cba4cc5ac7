"""Searches end to end: the tiny synthetic dataset with searches (users query their
favourite genres' tags), a bundle trained with a search encoder (a tiny bag-of-words BERT
built here, tests/tiny_bert.py, exported by `recsys export-encoder`): item texts in the
content vectors and a user tower with a search_profile input; both services on loopback
with RECSYS_TEXT_ENCODER set, SEARCH events logged through LogEvents, and the user's next
Recommend ranks the searched theme's items higher than before the searches."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import grpc
import numpy as np
import pandas as pd
import pytest

from recsys.config import CandidateConfig, RankingConfig
from recsys.v1 import ranking_pb2, ranking_pb2_grpc
from tests.conftest import TINY
from tests.tiny_bert import make_tiny_bert

pytestmark = pytest.mark.slow

THEME = "Sci-Fi"
QUERIES = ("space robots", "aliens in space", "time travel robots", "cyberpunk dystopia", "sci-fi space aliens")
K = 100
TOP = 20  # the head of the list a user sees


@pytest.fixture(scope="module")
def search_stack(tmp_path_factory, tiny_config):
    pytest.importorskip("transformers", reason="the export needs the train extra (make test installs it)")
    from candidate_svc.server import create_server as create_candidate
    from ranking_svc.server import create_server as create_ranking
    from recsys.bundle import load_bundle
    from training import content
    from training.pipeline import train
    from training.synthetic import generate
    from training.text_encoder_export import export_encoder

    root = tmp_path_factory.mktemp("search")
    data = generate(**TINY, searches_per_user=8)
    words = {w for text in content.catalogue_texts(data.items) for w in content.tokenize(text)}
    words |= {w for q in [*QUERIES, *data.searches["query"]] for w in content.tokenize(q)} | {".", ",", "-"}
    export_encoder(make_tiny_bert(root / "bert", words, bag_of_words=True), root / "encoder")
    # more gradient steps than the shared tiny config: the tower must learn what a query means
    config = replace(tiny_config, text_encoder=str(root / "encoder"),
                     two_tower=replace(tiny_config.two_tower, epochs=30, batch_size=128))
    bundle = load_bundle(train(data, root / "bundles", config))
    cand, retriever = create_candidate(CandidateConfig(port=0, workers=2), bundle)
    cand.server.start()
    cand.set_serving(True)
    rank, ranker = create_ranking(
        RankingConfig(port=0, workers=2, candidate_address=f"127.0.0.1:{cand.port}",
                      event_db=str(root / "events.sqlite3"), retrieve_timeout_ms=3000,
                      text_encoder=str(root / "encoder")),
        bundle,
    )
    rank.server.start()
    rank.set_serving(True)
    channel = grpc.insecure_channel(f"127.0.0.1:{rank.port}")
    try:
        yield bundle, ranker, ranking_pb2_grpc.RankingServiceStub(channel), retriever
    finally:
        channel.close()
        rank.stop(0)
        cand.stop(0)


def theme_positions(items, theme_items: set[str]) -> list[int]:
    return [pos for pos, it in enumerate(items) if it.item_id in theme_items]


def test_bundle_records_the_text_part_of_the_content_vectors(search_stack):
    bundle, ranker, _, _ = search_stack
    text = bundle.manifest["content"]["text"]
    assert text["dim"] == 32 and text["offset"] + text["dim"] == bundle.content.shape[1]
    assert np.allclose(np.linalg.norm(bundle.content, axis=1), 1.0, atol=1e-4), "content rows stay unit"
    assert ranker.search is not None, "encoder configured and matching the bundle: the signal is on"
    assert bundle.spec.search_dim == 32, "the data has searches: the user tower takes a search profile"


def test_the_user_tower_moves_toward_the_searched_theme(search_stack):
    """Retrieve with a search profile about the theme: the user embedding moves so the
    theme's items score higher on the two-tower scale than for the same user without it."""
    from recsys.features import UserInput

    bundle, ranker, _, retriever = search_stack
    theme = np.array([THEME in g for g in bundle.genres])
    now = 1_715_000_000_000
    search = ranker.search.profile([(q, now) for q in QUERIES], now)
    gains = []
    for r in range(0, 40):
        history = bundle.user_pos.row(r)[:5].tolist()
        plain, searched = (retriever.embed_users([UserInput(history, time_ms=now, search=s)])[0]
                           for s in ((), tuple(search.tolist())))
        scores_plain, scores_searched = bundle.item_embeddings @ plain, bundle.item_embeddings @ searched
        gains.append((scores_searched - scores_plain)[theme].mean() - (scores_searched - scores_plain)[~theme].mean())
    assert np.mean(gains) > 0.03, f"theme items must gain two-tower score over the rest: mean gain {np.mean(gains):.4f}"


def test_searches_about_a_theme_rank_its_items_higher(search_stack):
    bundle, ranker, stub, _ = search_stack
    theme = {bundle.item_ids[i] for i, g in enumerate(bundle.genres) if THEME in g}
    # a warm user whose taste is elsewhere: few of their positives are in the theme
    user = min((u for r, u in enumerate(bundle.user_ids) if len(bundle.user_pos.row(r)) >= 5),
               key=lambda u: sum(bundle.item_ids[i] in theme
                                 for i in bundle.user_pos.row(bundle.user_index[u]).tolist()))
    before = stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=K), timeout=10)
    assert not before.degraded, before.degraded_reason
    now = int(time.time() * 1000)
    events = [ranking_pb2.Event(idempotency_key=f"search-{j}", user_id=user, type=ranking_pb2.EVENT_TYPE_SEARCH,
                                query=q, timestamp_ms=now - 1000 * j) for j, q in enumerate(QUERIES)]
    assert stub.LogEvents(ranking_pb2.LogEventsRequest(events=events), timeout=10).stored == len(QUERIES)
    after = stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=K), timeout=10)
    assert not after.degraded, after.degraded_reason
    pos_before, pos_after = theme_positions(before.items, theme), theme_positions(after.items, theme)
    top_before, top_after = sum(p < TOP for p in pos_before), sum(p < TOP for p in pos_after)
    logging.getLogger(__name__).info("theme positions before %s after %s", pos_before[:15], pos_after[:15])
    assert pos_before, "the theme must be among the answer before the searches for the test to mean anything"
    assert np.mean(pos_after[: len(pos_before)]) < np.mean(pos_before), (
        f"theme items' mean position must drop: before {pos_before}, after {pos_after}")
    assert top_after > top_before, f"more theme items in the top {TOP}: {top_before} -> {top_after}"
    # the queries were encoded once: asking again hits the cache for every query
    s0 = ranker.search.encoder.stats()
    stub.Recommend(ranking_pb2.RecommendRequest(user_id=user, k=K), timeout=10)
    s1 = ranker.search.encoder.stats()
    assert (s1.hits - s0.hits, s1.misses - s0.misses) == (len(QUERIES), 0), (s0, s1)


def test_without_an_encoder_the_signal_is_off_and_said_so(search_stack, caplog):
    from ranking_svc.ranker import Ranker

    bundle, ranker, _, _ = search_stack
    with caplog.at_level(logging.INFO, logger="ranking_svc.ranker"):
        plain = Ranker(bundle, ranker.candidates, None)
    assert plain.search is None
    assert "search encoder: off (no RECSYS_TEXT_ENCODER)" in caplog.text


# ---------------------------------------------------------------- the pieces, without services
def test_searches_round_trip_in_the_dataset_format(tmp_path):
    from training.data import DatasetError, fingerprint, load_dataset, make_dataset, save_dataset
    from training.synthetic import generate

    small = dict(n_users=30, n_items=40, seed=3, days=20, interactions_per_user=8)
    plain, searched = generate(**small), generate(**small, searches_per_user=3)
    assert len(plain.searches) == 0 and len(searched.searches) > 0
    assert plain.interactions.equals(searched.interactions), "searches must not change the other tables"
    save_dataset(searched, tmp_path / "ds")
    back = load_dataset(tmp_path / "ds")
    assert back.searches.equals(searched.searches) and fingerprint(back) == fingerprint(searched)
    assert fingerprint(plain) != fingerprint(searched)
    save_dataset(plain, tmp_path / "plain")
    assert not (tmp_path / "plain" / "searches.csv").exists(), "no searches, no file"
    bad = searched.searches.copy()
    bad.loc[1, "query"] = "tab\there"
    with pytest.raises(DatasetError, match=r"searches.csv: column 'query', row 1"):
        make_dataset(searched.interactions, searched.items, searched.users, searched.meta, bad)


def test_candidate_tier_checks_the_search_profile_field():
    from candidate_svc.server import MAX_SEARCH_DIM, search_input
    from recsys import validation as v

    assert search_input([0.6, 0.8], 2, "search_profile") == (pytest.approx(0.6), pytest.approx(0.8))
    assert search_input([0.6, 0.8], 0, "search_profile") == (), "a tower without the input ignores it"
    assert search_input([1.0] * 3, 2, "search_profile") == (), "another width (version skew) is ignored"
    with pytest.raises(v.InvalidArgument, match="search_profile: holds a NaN"):
        search_input([float("nan"), 1.0], 2, "search_profile")
    with pytest.raises(v.InvalidArgument, match="requests\\[1\\].search_profile: has"):
        search_input([0.0] * (MAX_SEARCH_DIM + 1), 2, "requests[1].search_profile")
    with pytest.raises(v.InvalidArgument, match="search_profile: must be L2-normalised"):
        search_input([1e30, 0.0], 2, "search_profile")


def test_a_blank_search_query_is_refused_by_name():
    from ranking_svc.server import decode_event
    from recsys import validation as v
    from recsys.v1 import ranking_pb2

    event = ranking_pb2.Event(idempotency_key="k", user_id="u", type=ranking_pb2.EVENT_TYPE_SEARCH,
                              timestamp_ms=1_800_000_000_000, query=" \u3000 ")
    with pytest.raises(v.InvalidArgument, match=r"events\[0\]\.query: is required"):
        decode_event(event, 0, 1_800_000_000_000)


def test_logged_searches_are_exported_to_the_dataset():
    from training.event_log import LoggedEvent, merge_events
    from training.synthetic import generate

    ds = generate(n_users=20, n_items=30, seed=5, days=14, interactions_per_user=6, searches_per_user=1)
    item = ds.items["item_id"].iat[0]
    merged, report = merge_events(ds, [LoggedEvent("u-new", "", "search", 1.0, 1_800_000_000_123, "space robots"),
                                       LoggedEvent("u-new", item, "like", 1.0, 1_800_000_000_000)])
    assert (report.merged, report.searches, sum(report.skipped.values())) == (1, 1, 0)
    assert len(merged.searches) == len(ds.searches) + 1, "the base dataset's searches are kept"
    assert merged.searches.iloc[-1].tolist() == ["u-new", 1_800_000_000, "space robots"]


def test_catalog_update_encodes_new_items_text_with_the_bundles_encoder(search_stack, tmp_path):
    from recsys.bundle import BundleError, load_bundle
    from training.catalog_update import update_catalog
    from training.data import make_dataset, save_dataset
    from training.synthetic import generate

    bundle, ranker, _, _ = search_stack
    data = generate(**TINY, searches_per_user=8)
    copies = data.items.iloc[:3].copy()
    copies["item_id"] = ["new-0", "new-1", "new-2"]
    grown = make_dataset(data.interactions, pd.concat([data.items, copies], ignore_index=True), data.users,
                         data.meta, data.searches)
    save_dataset(grown, tmp_path / "grown")
    with pytest.raises(BundleError, match="--text-encoder"):
        update_catalog(bundle.path, tmp_path / "grown", tmp_path / "out")
    out = update_catalog(bundle.path, tmp_path / "grown", tmp_path / "out", str(ranker.search.encoder.directory))
    updated = load_bundle(out)
    lo = bundle.manifest["content"]["text"]["offset"]
    assert updated.content.shape == (bundle.n_items + 3, bundle.content.shape[1])
    # same text as the items they copy: the same text part (encoded and centred alike)
    assert np.allclose(updated.content[-3:, lo:], bundle.content[:3, lo:], atol=1e-5)
    assert np.allclose(np.linalg.norm(updated.content[-3:], axis=1), 1.0, atol=1e-5)
