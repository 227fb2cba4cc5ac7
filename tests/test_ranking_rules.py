"""Re-ranking rules (ranking_svc/rules.py) on small catalogues whose right answer is known
by construction. Every rule's test also runs the list without that rule and checks the
property fails there, so no test passes vacuously."""

from __future__ import annotations

import numpy as np
import pytest

import kernels
from ranking_svc.rules import (
    OPTIONAL_STEPS,
    RULE_ORDER,
    RuleCatalog,
    RuleConfig,
    RuleConfigError,
    RuleContext,
    SeasonBoost,
    Slate,
    apply_rules,
    normalise_title,
)

N = 40
D = 8
NEWEST = 1_700_000_000


def catalog(**overrides) -> RuleCatalog:
    """N items with orthogonal-ish random content, distinct titles, one creator and genre
    each (round robin over 10), old and popular unless overridden."""
    rng = np.random.default_rng(0)
    content = rng.standard_normal((N, D)).astype(np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    base = dict(
        banned=np.zeros(N, dtype=np.bool_),
        private_owner={},
        title_key=np.arange(N, dtype=np.int64),
        content=content,
        genres=[[f"g{i % 10}"] for i in range(N)],
        creators=[f"c{i % 10}" for i in range(N)],
        created_at=np.full(N, NEWEST - 400 * 86_400, dtype=np.int64),
        popularity=np.full(N, 100.0, dtype=np.float32),
        newest_s=NEWEST,
    )
    base.update(overrides)
    return RuleCatalog(**base)


def run(cat: RuleCatalog, steps=(), k=10, excluded=None, month=6, explain=False, **cfg) -> list[int]:
    """Items in final order (first k) for scores descending with the item index."""
    cand = np.arange(N, dtype=np.int64)
    scores = np.linspace(1.0, 0.0, N).astype(np.float32)  # item 0 best
    slate = Slate(cand, scores.copy(), np.argsort(-scores, kind="stable").astype(np.int64))
    ctx = RuleContext("u1", k, np.zeros(N, np.bool_) if excluded is None else excluded, month, explain)
    config = RuleConfig(steps=tuple(steps), **cfg).validate()
    out = apply_rules(slate, ctx, cat, config)
    run.last = out  # for tests that read the notes
    return [int(cand[p]) for p in out.order[:k]]


def test_order_is_documented_and_fixed():
    assert RULE_ORDER == ("remove_seen", "remove_policy", "season_boost", "near_duplicates", "mmr", "caps",
                          "explore")
    import ranking_svc.rules as rules

    doc = rules.__doc__
    positions = [doc.index(f"{n}. {name}") for n, name in enumerate(RULE_ORDER, 1)]
    assert positions == sorted(positions), "module docstring must list the steps in RULE_ORDER"
    # the listed order of `steps` does not change the order they run in
    cat = catalog(creators=["same"] * N, created_at=np.r_[np.full(N - 1, 0), NEWEST].astype(np.int64),
                  popularity=np.r_[np.full(N - 1, 100.0), 0.0].astype(np.float32))
    a = run(cat, steps=OPTIONAL_STEPS, creator_cap=2)
    b = run(cat, steps=tuple(reversed(OPTIONAL_STEPS)), creator_cap=2)
    assert a == b


def test_remove_seen():
    excluded = np.zeros(N, np.bool_)
    excluded[[0, 2, 5]] = True
    assert not {0, 2, 5} & set(run(catalog(), excluded=excluded))
    # fails without the rule: those items lead the score order
    assert {0, 2, 5} <= set(run(catalog(), k=10))


def test_remove_policy_banned_and_private():
    banned = np.zeros(N, np.bool_)
    banned[[1, 3]] = True
    cat = catalog(banned=banned, private_owner={0: "someone-else", 2: "u1"})
    got = run(cat)
    assert not {0, 1, 3} & set(got), "banned or others' private items shown"
    assert 2 in got, "the owner must still see their own private item"
    assert {0, 1, 3} <= set(run(catalog()))  # without flags they rank first


def test_required_steps_cannot_be_disabled():
    banned = np.zeros(N, np.bool_)
    banned[0] = True
    excluded = np.zeros(N, np.bool_)
    excluded[1] = True
    assert not {0, 1} & set(run(catalog(banned=banned), steps=(), excluded=excluded))
    with pytest.raises(RuleConfigError, match="steps"):
        RuleConfig(steps=("remove_policy",)).validate()  # not an optional step: no way to list it


def test_season_boost():
    genres = [["g-other"]] * N
    genres = [list(g) for g in genres]
    genres[30] = ["Holiday"]
    cat = catalog(genres=genres)
    boost = (SeasonBoost((12,), "Holiday", 2.0),)
    assert run(cat, steps=("season_boost",), month=12, season_boosts=boost)[0] == 30
    assert 30 not in run(cat, steps=("season_boost",), month=6, season_boosts=boost), "boost outside its months"
    assert 30 not in run(cat, steps=(), month=12, season_boosts=boost), "fails without the rule"


def test_near_duplicates_by_title_and_by_content():
    keys = np.arange(N, dtype=np.int64)
    keys[1] = keys[0]  # item 1 has item 0's normalised title
    rng = np.random.default_rng(1)
    base = catalog()
    content = base.content.copy()
    content[3] = content[2] + 0.01 * rng.standard_normal(D).astype(np.float32)  # cosine ~0.9999 to item 2
    content[5] = content[4]  # identical content, but a different creator: genre-mates, not copies
    creators = [f"c{i % 10}" for i in range(N)]
    creators[3] = creators[2]
    cat = catalog(title_key=keys, content=content, creators=creators)
    got = run(cat, steps=("near_duplicates",), near_duplicate_cosine=0.98)
    assert 0 in got and 1 not in got, "same title kept twice"
    assert 2 in got and 3 not in got, "near-identical content by one creator kept twice"
    assert 4 in got and 5 in got, "same content by different creators is not a duplicate"
    assert {1, 3} <= set(run(cat, steps=())), "fails without the rule"
    assert normalise_title("The  Café!") == normalise_title("the cafe")


def intra_list_diversity(content: np.ndarray, items: list[int]) -> float:
    """1 - mean pairwise cosine of the items' content vectors."""
    V = content[items].astype(np.float64)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    S = V @ V.T
    n = len(items)
    return 1.0 - (S.sum() - n) / (n * (n - 1))


def test_mmr_raises_diversity_on_near_duplicates():
    # 4 clusters of 10 near-duplicates (cosine ~0.9 within a cluster, below the dedupe
    # threshold); cluster 0 holds the 10 best scores, so relevance alone shows one cluster.
    rng = np.random.default_rng(2)
    centres = np.linalg.qr(rng.standard_normal((D, D)))[0][:4].astype(np.float32)
    content = np.repeat(centres, 10, axis=0) + 0.3 * rng.standard_normal((N, D)).astype(np.float32) / np.sqrt(D)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    cat = catalog(content=content.astype(np.float32))
    plain = run(cat, steps=())
    diverse = run(cat, steps=("mmr",), mmr_lambda=0.5)
    d_plain, d_mmr = intra_list_diversity(content, plain), intra_list_diversity(content, diverse)
    assert {i // 10 for i in plain} == {0}
    assert len({i // 10 for i in diverse}) == 4, diverse
    assert d_mmr > d_plain + 0.3, f"MMR diversity {d_mmr:.3f} vs relevance order {d_plain:.3f} (needs +0.3)"
    assert diverse[0] == 0, "MMR's first pick is the most relevant item"
    assert run(cat, steps=("mmr",), mmr_lambda=1.0) == plain, "lambda 1 is the relevance order"


def test_creator_and_genre_caps():
    creators = ["big"] * 8 + [f"c{i}" for i in range(N - 8)]
    cat = catalog(creators=creators)
    got = run(cat, steps=("caps",), creator_cap=2)
    assert sum(1 for i in got if creators[i] == "big") == 2
    assert sum(1 for i in run(cat, steps=())) >= 8 and sum(1 for i in run(cat, steps=()) if creators[i] == "big") == 8
    genres = [["Drama"]] * 6 + [[f"g{i}"] for i in range(N - 6)]
    cat = catalog(genres=genres, creators=[f"c{i}" for i in range(N)])
    got = run(cat, steps=("caps",), genre_cap=3, creator_cap=0)
    assert sum(1 for i in got if genres[i] == ["Drama"]) == 3
    assert sum(1 for i in run(cat, steps=()) if genres[i] == ["Drama"]) == 6, "fails without the rule"
    # capped items still fill the list when nothing else is left
    assert len(run(catalog(creators=["one"] * N), steps=("caps",), creator_cap=2)) == 10


def test_explore_slot_for_a_fresh_item():
    created = np.full(N, NEWEST - 400 * 86_400, dtype=np.int64)
    created[35] = NEWEST - 86_400  # one day old
    popularity = np.full(N, 100.0, dtype=np.float32)
    popularity[35] = 1.0
    cat = catalog(created_at=created, popularity=popularity)
    got = run(cat, steps=("explore",), fresh_days=14.0, fresh_max_positives=5.0)
    assert got[-1] == 35 and got[:9] == list(range(9)), got
    assert run(cat, steps=("explore",), explore_slot=3)[2] == 35
    assert 35 not in run(cat, steps=()), "fails without the rule"
    # a popular new item is not "fresh": no slot
    popularity[35] = 50.0
    assert 35 not in run(catalog(created_at=created, popularity=popularity), steps=("explore",))


def test_notes_name_the_rules_that_moved_an_item():
    creators = ["big"] * 4 + [f"c{i}" for i in range(N - 4)]
    run(catalog(creators=creators), steps=("caps",), creator_cap=2, explain=True)
    notes = run.last.notes
    assert any(n.startswith("creator_cap") for n in notes[2]), notes.get(2)
    assert "caps: moved from 5 to 3" in notes[4], notes.get(4)


@pytest.mark.parametrize("overrides, key", [
    ({"mmr_lambda": 1.5}, "mmr_lambda"),
    ({"steps": ["mmr", "nope"]}, "steps"),
    ({"creator_cap": -1}, "creator_cap"),
    ({"bogus": 1}, "bogus"),
    ({"mmr_lambda": "high"}, "mmr_lambda"),
    ({"season_boosts": [{"months": [13], "genre": "x", "boost": 1.0}]}, "season_boosts[0].months"),
])
def test_rule_config_errors_name_the_setting(overrides, key):
    with pytest.raises(RuleConfigError) as err:
        RuleConfig().with_overrides(overrides)
    assert str(err.value).startswith(key), str(err.value)


# --------------------------------------------------------------------- the MMR kernel


@pytest.mark.parametrize("seed, n, lam, m", [(0, 50, 0.7, 20), (1, 200, 0.3, 200), (2, 5, 0.0, 5), (3, 30, 1.0, 10)])
def test_mmr_kernel_matches_numpy_twin(seed, n, lam, m):
    rng = np.random.default_rng(seed)
    rel = rng.random(n).astype(np.float32)
    V = rng.standard_normal((n, 16)).astype(np.float32)
    V[min(3, n - 1)] = 0.0  # a zero row: cosine 0 to everything
    got, want = kernels.mmr_order(rel, V, lam, m), kernels.mmr_order_numpy(rel, V, lam, m)
    np.testing.assert_array_equal(got, want, err_msg="mmr_order numba != numpy (exact order)")
    assert len(set(got.tolist())) == len(got) == min(m, n)


@pytest.mark.parametrize("impl", [kernels.mmr_order, kernels.mmr_order_numpy])
def test_mmr_kernel_edges(impl):
    rel = np.array([0.1, 0.9, 0.5], dtype=np.float32)
    V = np.eye(3, dtype=np.float32)
    np.testing.assert_array_equal(impl(rel, V, 1.0, 3), [1, 2, 0])  # lambda 1: by relevance
    assert impl(rel, V, 0.5, 0).shape == (0,)
    assert impl(rel[:0], V[:0], 0.5, 4).shape == (0,)
    # two copies of the best item: lambda 0.5 takes the different one second
    V2 = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(impl(np.array([1.0, 0.9, 0.5], np.float32), V2, 0.5, 3), [0, 2, 1])
