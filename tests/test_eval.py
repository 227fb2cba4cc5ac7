"""`recsys eval` end to end on the tiny synthetic set: every row present, numbers sane, and
the served funnel better than popularity (the synthetic users have real tastes)."""

from __future__ import annotations

import json
import math

import pytest

from evaluation.run import run_eval, write_report

pytestmark = pytest.mark.slow


def test_eval_report(tiny_dataset, tiny_config, tmp_path):
    report = run_eval(tiny_dataset, tmp_path, ks=(10, 20), config=tiny_config, ease_lambdas=(50.0, 500.0))
    assert report["served"] == "funnel"
    expected = {"popularity", "ease", "wals", "two_tower", "funnel"}
    assert expected <= set(report["models"]), report["models"].keys()
    assert any(name.startswith("funnel[only ") for name in report["models"]), "best single feature row missing"
    assert set(report["slices"]["cold"]) == {"popularity", "ease", "two_tower", "funnel"}
    assert set(report["slices"]["new_user"]) == {"popularity", "two_tower", "funnel"}
    assert set(report["slices"]["long_tail"]) == {"popularity", "ease", "wals", "two_tower", "funnel"}
    assert report["tuned"]["ease_lambda"] in (50.0, 500.0)
    assert report["test_users"] > 100
    tables = [report["models"], report["slices"]["cold"], report["slices"]["new_user"], report["ranker_single_features"]]
    for table in tables:
        for name, m in table.items():
            for k in (10, 20):
                for key in ("precision", "recall", "map", "ndcg", "coverage", "diversity"):
                    assert 0.0 <= m[f"{key}@{k}"] <= 1.0, (name, k, key, m[f"{key}@{k}"])
                assert m[f"novelty@{k}"] > 0 and not math.isnan(m[f"novelty@{k}"])
            assert m["users"] > 0
    funnel, pop = report["models"]["funnel"], report["models"]["popularity"]
    assert funnel["ndcg@10"] > pop["ndcg@10"] * 1.1, (
        f"served funnel nDCG@10 {funnel['ndcg@10']:.4f} must beat popularity {pop['ndcg@10']:.4f} by 10%")
    assert funnel["coverage@10"] > pop["coverage@10"], "a personalised list must cover more of the catalogue"
    assert "funnel" in report["table"] and "popularity" in report["cold_start_table"]
    write_report(report, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["bundle"] == report["bundle"]


def test_long_tail_keeps_only_test_items_with_few_train_positives():
    import pandas as pd

    from evaluation.run import _long_tail_test

    train = pd.DataFrame({"item_id": ["a"] * 6 + ["b"] * 5 + ["c"]})
    test = {"u1": ["a", "b", "c", "d"], "u2": ["a"]}
    assert _long_tail_test(test, train, 5) == {"u1": ["b", "c", "d"]}, "u2 has no tail item and drops out"

