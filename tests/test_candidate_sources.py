"""Every candidate source passes one contract on data whose answer is known by
construction; the merge honours quotas, never duplicates or returns excluded ids, and
always returns the requested count when the catalogue has that many eligible items."""

from __future__ import annotations

import numpy as np
import onnxruntime  # noqa: F401  (before usearch: usearch 2.26 then onnxruntime segfaults)
import pytest
from usearch.index import Index

from candidate_svc.merge import merge, quotas_from_fractions
from candidate_svc.sources import (
    FRESH,
    ITEM_TO_ITEM,
    POPULAR,
    REGIONAL,
    SOURCE_ORDER,
    TRENDING,
    TWO_TOWER,
    Context,
    Proposal,
    first_allowed,
)
from candidate_svc.sources.fresh import FreshSource
from candidate_svc.sources.item_to_item import ItemToItemSource
from candidate_svc.sources.ranked import RegionalSource, popular, trending
from candidate_svc.sources.two_tower import TwoTowerSource, prefer_inner_product

N_ITEMS = 40
DIM = 8
NOW_S = 1_700_000_000


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _two_tower_data():
    rng = np.random.default_rng(3)
    emb = _unit(rng.normal(size=(N_ITEMS, DIM)))
    user = _unit(rng.normal(size=DIM))
    index = Index(ndim=DIM, metric="cos", dtype="f32", connectivity=16, expansion_add=128, expansion_search=128)
    # one insertion thread: a multi-threaded build is racy, and 1 in 20 such graphs on 40
    # nodes left the 3rd-nearest item unreachable (a flaky known-answer test)
    index.add(np.arange(N_ITEMS, dtype=np.uint64), emb, threads=1)
    expected = np.argsort(-(emb @ user), kind="stable")  # exact cosine order
    return index, emb, Context(user_embedding=user), expected.tolist()


def _two_tower():
    index, _, ctx, expected = _two_tower_data()
    return TwoTowerSource(index), ctx, expected


def _two_tower_scan():
    """The same catalogue, small enough to be scanned instead of walked."""
    index, emb, ctx, expected = _two_tower_data()
    scanning = TwoTowerSource(index, emb)  # cosine, as the index computes it
    assert scanning.scans(1), "40 items: scanned for any count"
    return scanning, ctx, expected


def _popular():
    counts = np.zeros(N_ITEMS, np.float32)
    counts[:30] = np.arange(30, 0, -1)  # item 0 most popular; items 30.. never liked
    return popular(counts), Context(np.zeros(DIM, np.float32)), list(range(30))


def _trending():
    decayed = np.zeros(N_ITEMS, np.float32)
    order = [7, 3, 39, 12, 0, 25]
    decayed[order] = [6.0, 5.5, 4.0, 2.25, 1.0, 0.5]
    return trending(decayed), Context(np.zeros(DIM, np.float32)), order


def _regional():
    counts = np.zeros((3, N_ITEMS), np.float32)  # row 0 = unknown region, 1 and 2 regions
    counts[1, :10] = 1.0
    order = [30, 2, 17, 5, 9, 11, 21]
    counts[2, order] = np.arange(len(order), 0, -1)
    return RegionalSource(counts), Context(np.zeros(DIM, np.float32), region=2), order


def _item_to_item():
    # item h's neighbours are h+1, h+2, ..., h+5 (mod N), cosines 0.9, 0.8, ...
    neighbours = np.array([[(h + j) % N_ITEMS for j in range(1, 6)] for h in range(N_ITEMS)], np.int64)
    sims = np.tile(np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32), (N_ITEMS, 1))
    history = np.array([5, 20], np.int64)  # most recent first
    # round-robin: first neighbours of 5 and 20, then second ones, ...; history left out
    expected = [6, 21, 7, 22, 8, 23, 9, 24, 10, 25]
    return ItemToItemSource(neighbours, sims), Context(np.zeros(DIM, np.float32), history=history), expected


def _fresh():
    created = np.full(N_ITEMS, NOW_S - 400 * 86_400, np.int64)  # old items: not eligible
    created[30:] = NOW_S - np.arange(10) * 86_400
    impressions = np.full(N_ITEMS, 150.0, np.float32)
    clicks = np.zeros(N_ITEMS, np.float32)
    clicks[[33, 31, 38, 30, 35]] = [150, 110, 70, 30, 0]  # posterior means 6 sd apart
    impressions[[32, 34, 36, 37, 39]] = 10_000  # new but already well explored: not eligible
    source = FreshSource(created, clicks, impressions)
    return source, Context(np.zeros(DIM, np.float32), seed=12345), [33, 31, 38, 30, 35]


CASES = {
    TWO_TOWER: _two_tower,
    f"{TWO_TOWER} (scan)": _two_tower_scan,
    POPULAR: _popular,
    TRENDING: _trending,
    REGIONAL: _regional,
    ITEM_TO_ITEM: _item_to_item,
    FRESH: _fresh,
}


def _none() -> np.ndarray:
    return np.zeros(N_ITEMS, dtype=np.bool_)


@pytest.fixture(params=sorted(CASES), ids=sorted(CASES))
def case(request):
    source, ctx, expected = CASES[request.param]()
    return request.param, source, ctx, expected


class TestSourceContract:
    """What every source promises (candidate_svc.sources.Source)."""

    def test_name_and_types(self, case):
        name, source, ctx, _ = case
        p = source.propose(ctx, 5, _none())
        assert source.name == name.split(" ")[0]
        assert p.items.dtype == np.int64 and p.scores.dtype == np.float32
        assert p.items.shape == p.scores.shape

    def test_known_answer(self, case):
        _, source, ctx, expected = case
        for n in (1, 3, len(expected)):
            got = source.propose(ctx, n, _none()).items.tolist()
            assert got == expected[:n], f"top {n}: got {got}, expected {expected[:n]}"

    def test_never_more_than_asked_and_distinct(self, case):
        _, source, ctx, expected = case
        for n in (0, 1, 4, N_ITEMS, 5 * N_ITEMS):
            items = source.propose(ctx, n, _none()).items
            assert len(items) <= n and len(set(items.tolist())) == len(items)
            assert np.all((items >= 0) & (items < N_ITEMS))
        assert len(source.propose(ctx, 5 * N_ITEMS, _none())) == len(expected), "all eligible items"

    def test_excluded_never_proposed_and_the_rest_moves_up(self, case):
        _, source, ctx, expected = case
        excluded = _none()
        excluded[expected[::2]] = True  # every other item of the known answer
        allowed = [i for i in expected if not excluded[i]]
        got = source.propose(ctx, len(allowed), excluded).items.tolist()
        assert got == allowed, f"got {got}, expected {allowed}"

    def test_everything_excluded_gives_nothing(self, case):
        _, source, ctx, _ = case
        assert len(source.propose(ctx, 10, np.ones(N_ITEMS, np.bool_))) == 0

    def test_deterministic(self, case):
        _, source, ctx, _ = case
        a, b = source.propose(ctx, 10, _none()), source.propose(ctx, 10, _none())
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_two_tower_over_fetch_when_nearest_items_are_excluded():
    """The nearest 35 of 40 excluded: adaptive over-fetch still finds the other 5."""
    source, ctx, expected = _two_tower()
    excluded = _none()
    excluded[expected[:35]] = True
    assert source.propose(ctx, 5, excluded).items.tolist() == expected[35:]


def test_two_tower_scan_is_exact_search_by_the_indexs_similarity():
    """The scan returns what an exact search of the index returns: on unit vectors with
    the inner product switched on, keys by dot and scores = dot; on vectors that are not
    unit (cosine index), keys by cosine and scores = cosine. Excluded items are skipped in
    the pass, so the n nearest allowed items come back however many of the nearest are
    excluded, with no second search."""
    rng = np.random.default_rng(8)
    unit = _unit(rng.normal(size=(300, DIM)))
    raw = (unit * rng.uniform(0.2, 5.0, size=(300, 1))).astype(np.float32)
    queries = _unit(rng.normal(size=(10, DIM)))
    for vectors, switch in ((unit, True), (raw, False)):
        index = Index(ndim=DIM, metric="cos", dtype="f32")
        index.add(np.arange(300, dtype=np.uint64), vectors)
        assert prefer_inner_product(index, vectors) is switch
        scan = TwoTowerSource(index, vectors, inner_product=switch)
        walk = TwoTowerSource(index)  # no vectors: always the graph (exact when all are asked for)
        assert scan.scans(10) and not walk.scans(10_000)
        sims = (vectors @ queries.T).T
        if not switch:
            sims = sims / np.linalg.norm(vectors, axis=1)[None, :]
        for q, s in zip(queries, sims):
            keys, scores = scan.search(q, 20)
            np.testing.assert_array_equal(keys, np.argsort(-s, kind="stable")[:20])
            np.testing.assert_allclose(scores, s[keys], rtol=1e-5, atol=1e-6)
            all_keys, all_scores = walk.search(q, 300)  # usearch's exact search of the whole index
            np.testing.assert_array_equal(keys[:10], all_keys[:10])
            np.testing.assert_allclose(scores, all_scores[:20], atol=2e-5)
            excluded = np.zeros(300, np.bool_)
            excluded[np.argsort(-s)[:250]] = True
            calls = []
            scan._search = lambda *a, calls=calls, **k: calls.append(a)  # the graph must not be asked
            got = scan.propose(Context(user_embedding=q), 30, excluded)
            assert not calls
            np.testing.assert_array_equal(got.items, np.argsort(-s, kind="stable")[250:280])


def test_two_tower_masked_scan_also_when_only_the_over_fetch_would_scan():
    """A catalogue too big to scan for n but small enough for n plus the over-fetch past
    excluded ids: one masked scan, not a scan per doubling of the count."""
    rng = np.random.default_rng(10)
    vectors = _unit(rng.normal(size=(400, DIM)))
    index = Index(ndim=DIM, metric="cos", dtype="f32")
    index.add(np.arange(400, dtype=np.uint64), vectors)
    source = TwoTowerSource(index, vectors, inner_product=True, scan_per_result=40)
    user = _unit(rng.normal(size=DIM))
    excluded = np.zeros(400, np.bool_)
    excluded[np.argsort(-(vectors @ user))[:300]] = True  # the nearest 300
    assert not source.scans(5) and source.scans(5 + 20)
    walks, scans = [], []
    source._search = lambda *a, walks=walks, **k: walks.append(a)  # the graph must not be asked
    scan = source._scan
    source._scan = lambda *a, scans=scans, scan=scan: scans.append(a) or scan(*a)
    got = source.propose(Context(user_embedding=user, n_excluded=300), 5, excluded)
    assert not walks and len(scans) == 1, f"{len(scans)} scans"
    np.testing.assert_array_equal(got.items, np.argsort(-(vectors @ user), kind="stable")[300:305])
    source._scan = scan
    with pytest.raises(ValueError, match="excluded"):
        source._scan(user, 5, excluded[:10])


def test_scan_default_is_the_services_default():
    from candidate_svc.sources.two_tower import SCAN_PER_RESULT
    from recsys.config import CandidateConfig

    assert CandidateConfig().ann_scan_per_result == SCAN_PER_RESULT


def test_two_tower_scans_only_what_is_small_for_the_count():
    """scan_per_result items per result asked for at most; 0 or no vectors: never; an index
    on a metric the scan does not compute (L2): never."""
    rng = np.random.default_rng(9)
    vectors = _unit(rng.normal(size=(400, DIM)))
    index = Index(ndim=DIM, metric="cos", dtype="f32")
    index.add(np.arange(400, dtype=np.uint64), vectors)
    source = TwoTowerSource(index, vectors, inner_product=True, scan_per_result=40)
    assert source.scans(10) and not source.scans(9)  # 400 <= 40 * 10, > 40 * 9
    assert not TwoTowerSource(index, vectors, inner_product=True, scan_per_result=0).scans(400)
    assert not TwoTowerSource(index).scans(400)
    l2 = Index(ndim=DIM, metric="l2sq", dtype="f32")
    l2.add(np.arange(400, dtype=np.uint64), vectors)
    assert not TwoTowerSource(l2, vectors).scans(400)
    with pytest.raises(ValueError, match="vectors"):
        TwoTowerSource(index, vectors[:10], inner_product=True)


def test_inner_product_search_on_unit_vectors_matches_cosine():
    """prefer_inner_product: the Numba f32 distance is 1 - a.b (NumPy twin, 1e-6), exact
    search returns the cosine index's keys, and vectors that are not unit stay on cosine."""
    rng = np.random.default_rng(4)
    emb = _unit(rng.normal(size=(300, DIM)))
    queries = _unit(rng.normal(size=(20, DIM)))
    cos = Index(ndim=DIM, metric="cos", dtype="f32")
    cos.add(np.arange(300, dtype=np.uint64), emb)
    want = cos.search(queries, 300, exact=True)
    ip = cos.copy()
    assert prefer_inner_product(ip, emb), "unit vectors in an f32 cosine index must switch"
    got = ip.search(queries, 300, exact=True)
    np.testing.assert_allclose(got.distances, 1.0 - np.take_along_axis(queries @ emb.T, got.keys.astype(np.int64), 1),
                               atol=1e-6, err_msg="distance must be 1 - a.b within 1e-6")
    np.testing.assert_allclose(got.distances, want.distances, atol=1e-6)
    assert (got.keys[:, :10] == want.keys[:, :10]).mean() > 0.99, "top-10 keys must match the cosine index's"
    assert not prefer_inner_product(Index(ndim=DIM, metric="cos", dtype="f32"), 2.0 * emb), "not unit: keep cosine"
    poisoned = emb.copy()
    poisoned[7, 3] = np.nan
    assert not prefer_inner_product(Index(ndim=DIM, metric="cos", dtype="f32"), poisoned), "a NaN: keep cosine"


def test_fresh_draws_follow_the_seed():
    source, ctx, _ = _fresh()
    flat = FreshSource(np.full(8, NOW_S), np.full(8, 5.0), np.full(8, 10.0))  # equal posteriors
    a = flat.propose(Context(ctx.user_embedding, seed=1), 8, np.zeros(8, np.bool_)).items.tolist()
    b = flat.propose(Context(ctx.user_embedding, seed=2), 8, np.zeros(8, np.bool_)).items.tolist()
    assert sorted(a) == sorted(b) == list(range(8)) and a != b, "equal posteriors: order follows the seed"


def test_fresh_samples_are_draws_from_each_items_posterior():
    """Beta(1 + clicks, 1 + misses) per item: 3 clicks in 8 impressions is Beta(4, 6), mean
    0.4, sd 0.148; 2,000 samples' mean within 4 standard errors of it, and the order of a
    sample is its draws, best first."""
    source = FreshSource(np.full(2, NOW_S), np.array([3.0, 40.0]), np.array([8.0, 50.0]), samples=2000)
    draws = np.array([source.sample(r)[1] for r in range(2000)])
    assert abs(draws[:, 0].mean() - 0.4) < 4 * 0.148 / np.sqrt(2000)
    assert abs(draws[:, 1].mean() - 41 / 52) < 4 * 0.056 / np.sqrt(2000)  # Beta(41, 11)
    order, d = source.sample(5)
    assert np.all(np.diff(d[order]) <= 0)


def test_fresh_skips_excluded_items_and_shares_a_sample_only_within_a_minute():
    created = np.full(N_ITEMS, NOW_S - 400 * 86_400, np.int64)
    created[1::3] = NOW_S  # the pool: every third item, so pool positions are not item ids
    source = FreshSource(created, np.zeros(N_ITEMS), np.full(N_ITEMS, 5.0), samples=8)
    minute = 1_700_000_040_000
    ctx = Context(np.zeros(DIM, np.float32), seed=3, time_ms=minute)
    best = source.propose(ctx, N_ITEMS, _none()).items
    assert sorted(best.tolist()) == list(range(1, N_ITEMS, 3))
    excluded = _none()
    excluded[best[:2]] = True
    got = source.propose(ctx, 4, excluded)
    assert got.items.tolist() == best[2:6].tolist()
    assert np.all(np.diff(got.scores) <= 0)

    def order(seed, time_ms):
        return source.propose(Context(ctx.user_embedding, seed=seed, time_ms=time_ms), N_ITEMS, _none()).items.tolist()

    assert order(3 + 8, minute + 59_999 - 40_000) == best.tolist(), "seed 11 picks sample 3 of 8 in the same minute"
    later = {tuple(order(3, minute + 60_000 * m)) for m in range(1, 6)}
    assert tuple(best.tolist()) not in later and len(later) == 5, "each minute draws afresh"
    moved = FreshSource(created, np.zeros(N_ITEMS), np.full(N_ITEMS, 6.0), samples=8)
    assert moved.propose(ctx, N_ITEMS, _none()).items.tolist() != best.tolist(), "new posteriors, new draws"


def test_unknown_region_proposes_nothing():
    source, ctx, _ = _regional()
    assert len(source.propose(Context(ctx.user_embedding, region=0), 5, _none())) == 0


# ----------------------------------------------------------------------------- merge

FALLBACK = (POPULAR, np.arange(N_ITEMS, dtype=np.int64), np.zeros(N_ITEMS, np.float32))


def _proposal(items) -> Proposal:
    items = np.asarray(items, np.int64)
    return Proposal(items, np.linspace(1.0, 0.5, len(items)).astype(np.float32))


def test_merge_honours_quotas_and_keeps_provenance():
    proposals = {
        TWO_TOWER: _proposal(range(0, 20)),
        ITEM_TO_ITEM: _proposal([0, 1, 20, 21, 22, 23]),  # 0 and 1 already chosen by two_tower
        POPULAR: _proposal([30, 31, 32, 2]),
    }
    quotas = {TWO_TOWER: 5, ITEM_TO_ITEM: 3, POPULAR: 2}
    m = merge(proposals, quotas, 10, _none(), FALLBACK)
    assert m.admitted == quotas, m.admitted
    assert m.items.tolist() == [0, 1, 2, 3, 4, 20, 21, 22, 30, 31]
    provenance = dict(zip(m.items.tolist(), m.sources))
    assert set(provenance[0]) == {TWO_TOWER, ITEM_TO_ITEM}, "every proposing source is kept"
    assert set(provenance[2]) == {TWO_TOWER, POPULAR}, "provenance from beyond a source's quota"
    assert provenance[20] == {ITEM_TO_ITEM: pytest.approx(0.8)}


def test_merge_fills_a_shortfall_in_priority_order_then_from_the_fallback():
    proposals = {TWO_TOWER: _proposal([0, 1, 2]), ITEM_TO_ITEM: _proposal([]), FRESH: _proposal([39])}
    quotas = {TWO_TOWER: 2, ITEM_TO_ITEM: 5, FRESH: 1}
    excluded = _none()
    excluded[[3, 4]] = True
    m = merge(proposals, quotas, 8, excluded, FALLBACK)
    assert m.items.tolist() == [0, 1, 39, 2, 5, 6, 7, 8]
    assert m.admitted == {TWO_TOWER: 3, ITEM_TO_ITEM: 0, FRESH: 1, POPULAR: 4}


@pytest.mark.parametrize("seed", range(40))
def test_merge_invariants_on_random_inputs(seed):
    """Any proposals (overlapping, containing excluded ids) and any quotas: distinct ids,
    none excluded, exactly num when the catalogue has num eligible items, and no source
    admitted beyond its quota unless others fell short."""
    rng = np.random.default_rng(seed)
    excluded = rng.random(N_ITEMS) < rng.uniform(0, 0.6)
    eligible = int((~excluded).sum())
    num = int(rng.integers(1, N_ITEMS + 1))
    names = [s for s in SOURCE_ORDER if rng.random() < 0.7] or [TWO_TOWER]
    proposals = {}
    for name in names:
        pool = np.flatnonzero(~excluded)
        take = rng.permutation(pool)[: rng.integers(0, len(pool) + 1)]
        proposals[name] = _proposal(take)
    quotas = quotas_from_fractions(num, {n: rng.uniform(0, 0.3) for n in names})
    m = merge(proposals, quotas, num, excluded, FALLBACK)
    items = m.items.tolist()
    assert len(items) == len(set(items)), "duplicates"
    assert not excluded[m.items].any(), "an excluded id was returned"
    assert len(items) == min(num, eligible), f"{len(items)} items, expected {min(num, eligible)}"
    over = [n for n in names if m.admitted[n] > quotas.get(n, 0)]
    under = [n for n in quotas if m.admitted.get(n, 0) < quotas[n]]  # incl. quotas of absent sources
    assert not over or under, f"{over} admitted beyond quota while no source fell short"
    for item, prov in zip(items, m.sources):
        assert prov, "every candidate has a provenance"
        for name in prov:
            assert name == FALLBACK[0] or item in proposals[name].items.tolist(), (item, name)


def _merge_item_at_a_time(proposals, quotas, num, excluded, fallback):
    """The merge as first written, one Python item at a time: the twin the array version
    must match exactly (items, their order, provenance and its order, admitted counts)."""
    order = [n for n in SOURCE_ORDER if n in proposals] + sorted(set(proposals) - set(SOURCE_ORDER))
    chosen: dict[int, dict[str, float]] = {}
    admitted = dict.fromkeys(order, 0)
    cursor = dict.fromkeys(order, 0)
    ids = {name: proposals[name].items.tolist() for name in order}

    def admit(name, limit):
        items, i = ids[name], cursor[name]
        while i < len(items) and admitted[name] < limit and len(chosen) < num:
            item = items[i]
            i += 1
            if item not in chosen:
                chosen[item] = {}
                admitted[name] += 1
        cursor[name] = i

    for name in order:
        admit(name, quotas.get(name, 0))
    for name in order:
        admit(name, num)
    fb_name, fb_order, fb_scores = fallback
    if len(chosen) < num:
        taken = excluded.copy()
        taken[list(chosen)] = True
        kept = [int(i) for i in fb_order if not taken[i]][: num - len(chosen)]
        for item in kept:
            chosen[item] = {fb_name: float(np.float32(fb_scores[item]))}
        admitted[fb_name] = admitted.get(fb_name, 0) + len(kept)
    for name in order:
        for item, score in zip(ids[name], proposals[name].scores.tolist()):
            if item in chosen and name not in chosen[item]:
                chosen[item][name] = score
    return list(chosen), list(chosen.values()), admitted


@pytest.mark.parametrize("seed", range(60))
def test_merge_matches_its_item_at_a_time_twin(seed):
    rng = np.random.default_rng(100 + seed)
    excluded = rng.random(N_ITEMS) < rng.uniform(0, 0.5)
    num = int(rng.integers(1, N_ITEMS + 1))
    names = [s for s in SOURCE_ORDER if rng.random() < 0.8] or [TWO_TOWER]
    pool = np.flatnonzero(~excluded)
    proposals = {}
    for name in names:
        take = rng.permutation(pool)[: rng.integers(0, len(pool) + 1)].astype(np.int64)
        proposals[name] = Proposal(take, np.sort(rng.random(len(take)).astype(np.float32))[::-1].copy())
    fallback = (POPULAR, rng.permutation(N_ITEMS).astype(np.int64), rng.random(N_ITEMS).astype(np.float32))
    quotas = quotas_from_fractions(num, {n: rng.uniform(0, 0.4) for n in names})
    m = merge(proposals, quotas, num, excluded, fallback)
    items, sources, admitted = _merge_item_at_a_time(proposals, quotas, num, excluded, fallback)
    assert m.items.tolist() == items
    assert [list(s.items()) for s in m.sources] == [list(s.items()) for s in sources], "provenance or its order"
    assert m.admitted == admitted


# ----------------------------------------------------------------------------- kernels vs their NumPy twins


def _neighbours_numpy(neighbours, scores, history, recent, n, excluded):
    """Item-to-item as the NumPy version before the Numba kernel: the twin it must match."""
    seeds = [int(i) for i in history[:recent] if 0 <= i < len(neighbours)]
    if n <= 0 or not seeds:
        return [], []
    near = neighbours[seeds].T.reshape(-1)
    sims = scores[seeds].T.reshape(-1)
    ok = near >= 0
    near, sims = near[ok], sims[ok]
    ok = ~excluded[near] & (near[:, None] != np.asarray(seeds)).all(axis=1)
    near, sims = near[ok], sims[ok]
    distinct, first, inverse = np.unique(near, return_index=True, return_inverse=True)
    best = np.full(len(distinct), -np.inf, dtype=np.float32)
    np.maximum.at(best, inverse, sims)
    take = np.argsort(first, kind="stable")[:n]
    return distinct[take].tolist(), best[take].tolist()


@pytest.mark.parametrize("seed", range(60))
def test_item_to_item_kernel_matches_its_numpy_twin(seed):
    """Random tables with -1 padding, duplicate and out-of-range history entries, seeds
    that are each other's neighbours, heavy exclusion, n beyond what exists."""
    rng = np.random.default_rng(seed)
    n_items, width = int(rng.integers(2, 120)), int(rng.integers(1, 12))
    neighbours = rng.integers(-1, n_items, (n_items, width)).astype(np.int64)
    scores = rng.random((n_items, width)).astype(np.float32)
    excluded = rng.random(n_items) < rng.uniform(0, 0.7)
    history = rng.integers(-2, n_items + 2, rng.integers(0, 14)).astype(np.int64)
    n = int(rng.integers(0, 3 * width * 10))
    got = ItemToItemSource(neighbours, scores).propose(Context(np.zeros(4, np.float32), history=history), n, excluded)
    want_items, want_scores = _neighbours_numpy(neighbours, scores, history, 10, n, excluded)
    assert got.items.tolist() == want_items
    assert got.scores.tolist() == want_scores
    assert got.items.dtype == np.int64 and got.scores.dtype == np.float32


def _first_allowed_numpy(order, scores, n, excluded):
    kept = [int(i) for i in order if not excluded[i]][: max(n, 0)]
    return kept, [float(scores[i]) for i in kept]


@pytest.mark.parametrize("seed", range(40))
def test_first_allowed_kernel_matches_its_numpy_twin(seed):
    rng = np.random.default_rng(500 + seed)
    n_items = int(rng.integers(1, 200))
    order = rng.permutation(n_items)[: rng.integers(0, n_items + 1)].astype(np.int64)
    scores = rng.random(n_items).astype(np.float32)
    excluded = rng.random(n_items) < rng.uniform(0, 0.9)
    n = int(rng.integers(-1, n_items + 5))
    got = first_allowed(order, scores, n, excluded)
    want_items, want_scores = _first_allowed_numpy(order, scores, n, excluded)
    assert got.items.tolist() == want_items and got.scores.tolist() == want_scores


def test_merge_of_nothing_asked():
    proposals = {TWO_TOWER: _proposal([0, 1, 2])}
    for num in (0, -3):
        m = merge(proposals, {TWO_TOWER: 2}, num, _none(), FALLBACK)
        assert m.items.tolist() == [] and m.sources == [] and m.admitted == {TWO_TOWER: 0}
