"""`recsys tune`: trials on a validation split of the data given, the best one trained and
recorded in the bundle."""

from __future__ import annotations

import json

import pytest

from evaluation.tune import apply, tune
from recsys.cli import main

pytestmark = pytest.mark.slow


def test_apply_sets_nested_fields(tiny_config):
    got = apply(tiny_config, {"two_tower.temperature": 0.07, "mf.factors": 8})
    assert got.two_tower.temperature == 0.07 and got.mf.factors == 8
    assert got.two_tower.epochs == tiny_config.two_tower.epochs, "untouched fields keep their value"
    with pytest.raises(TypeError):
        apply(tiny_config, {"mf.no_such_field": 1})


def test_tune_records_trials_and_trains_the_best(tiny_dataset, tiny_config, tmp_path):
    # 1 epoch vs 4: the search must see the difference and pick by validation nDCG@10
    grid = {"two_tower.epochs": (1, 4)}
    path, record = tune(tiny_dataset, tmp_path, tiny_config, grid)
    scores = {t["setting"]["two_tower.epochs"]: t["validation_ndcg@10"] for t in record["trials"]}
    assert set(scores) == {1, 4}
    best = max(scores, key=scores.get)
    assert record["chosen"] == {"two_tower.epochs": best}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["tuning"]["chosen"] == record["chosen"]
    assert manifest["two_tower"]["epochs"] == best, "the bundle is trained with the chosen setting"


def test_tune_cli_rejects_a_bad_grid(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tune", "--data", "x", "--out", "y", "--grid", "epochs=1,2"])
    assert e.value.code == 2 and "SECTION.FIELD=V1,V2" in capsys.readouterr().err
