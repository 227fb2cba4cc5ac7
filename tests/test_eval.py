"""`recsys eval` end to end on the tiny synthetic set: every row present, numbers sane, and
the served funnel better than popularity (the synthetic users have real tastes)."""

from __future__ import annotations

import json
import math

import pytest

from evaluation.run import run_eval, write_report

pytestmark = pytest.mark.slow


def test_eval_report(tiny_dataset, tiny_config, tmp_path):
    report = run_eval(tiny_dataset, tmp_path, ks=(10, 20), config=tiny_config)
    assert set(report["models"]) == {"popularity", "ease", "wals", "two_tower", "funnel"}
    assert set(report["cold_start"]) == {"popularity", "ease", "two_tower", "funnel"}
    assert report["test_users"] > 100
    for table in (report["models"], report["cold_start"]):
        for name, by_k in table.items():
            for k, m in by_k.items():
                for key in ("precision", "recall", "map", "ndcg", "coverage", "diversity"):
                    assert 0.0 <= m[key] <= 1.0, (name, k, key, m[key])
                assert m["novelty"] > 0 and not math.isnan(m["novelty"])
                assert m["users"] > 0
    funnel, pop = report["models"]["funnel"]["10"], report["models"]["popularity"]["10"]
    assert funnel["ndcg"] > pop["ndcg"] * 1.1, (
        f"served funnel nDCG@10 {funnel['ndcg']:.4f} must beat popularity {pop['ndcg']:.4f} by 10%")
    assert funnel["coverage"] > pop["coverage"], "a personalised list must cover more of the catalogue"
    assert "funnel" in report["table"] and "popularity" in report["cold_start_table"]
    write_report(report, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["bundle"] == report["bundle"]
