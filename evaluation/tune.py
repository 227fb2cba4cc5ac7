"""`recsys tune`: choose the main hyper-parameters on a validation split carved from train.

Never the test set: the data given is split by the evaluation protocol's rule into a fit
part and a validation part (each user's latest positives); every candidate configuration
is trained on the fit part and scored by the served funnel's nDCG@10 on the validation
part; the best one is then trained on all the data given, and the bundle records the
search (`manifest.tuning`: the grid, every score, the choice). Lives in evaluation/ because
scoring the served funnel needs both services' pure parts (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from candidate_svc.retrieval import Retriever
from evaluation.metrics import evaluate
from evaluation.run import InProcessCandidateSource, _funnel_recs
from evaluation.split import temporal_split
from ranking_svc.ranker import Ranker
from recsys.bundle import load_bundle
from training.data import Dataset, positive_mask
from training.pipeline import TrainConfig, train

log = logging.getLogger(__name__)

# The knobs that moved quality most in our runs, two values each (16 configurations at most).
DEFAULT_GRID: dict[str, Sequence[Any]] = {
    "two_tower.temperature": (0.05, 0.1),
    "two_tower.epochs": (6, 10),
    "mf.factors": (32, 64),
    "mf.alpha": (5.0, 10.0),
}


def apply(config: TrainConfig, setting: dict[str, Any]) -> TrainConfig:
    """A copy of `config` with "section.field" keys replaced."""
    for key, value in setting.items():
        section, name = key.split(".", 1)
        config = replace(config, **{section: replace(getattr(config, section), **{name: value})})
    return config


def validation_score(ds: Dataset, config: TrainConfig, work: Path, k: int = 10) -> float:
    split = temporal_split(ds.interactions, positive_mask(ds.interactions), test_fraction=0.1)
    bundle = load_bundle(train(replace(ds, interactions=split.train.reset_index(drop=True)), work, config))
    users = sorted(split.test)
    last = split.train.groupby("user_id")["timestamp"].max()
    times = {u: int(last.get(u, 0)) * 1000 for u in users}
    ranker = Ranker(bundle, InProcessCandidateSource(Retriever(bundle)), None)
    recs = _funnel_recs(ranker, users, times, k, {})
    genres = {i: set(g) for i, g in zip(bundle.item_ids, bundle.genres)}
    return evaluate(recs, split.test, k, bundle.n_items, genres, {})["ndcg"]


def tune(
    ds: Dataset,
    out_root: str | Path,
    base: TrainConfig | None = None,
    grid: dict[str, Sequence[Any]] | None = None,
    max_trials: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Search `grid` (every combination, in order, up to `max_trials`), then train the best
    on all of `ds` into `out_root`. Returns (bundle path, the tuning record)."""
    base = base or TrainConfig()
    grid = grid or DEFAULT_GRID
    keys = list(grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    if max_trials is not None:
        combos = combos[:max_trials]
    trials = []
    with tempfile.TemporaryDirectory(prefix="recsys-tune-") as work:
        for n, setting in enumerate(combos):
            score = validation_score(ds, apply(base, setting), Path(work) / f"trial{n}")
            trials.append({"setting": setting, "validation_ndcg@10": round(score, 6)})
            log.info("tune trial %d/%d %s -> nDCG@10 %.4f", n + 1, len(combos), setting, score)
    best = max(trials, key=lambda t: t["validation_ndcg@10"])
    record = {"grid": {k: list(v) for k, v in grid.items()}, "trials": trials, "chosen": best["setting"],
              "split": "last 10% of each user's positives in the data given (never the test set)"}
    path = train(ds, out_root, apply(base, best["setting"]), extra_manifest={"tuning": record})
    return path, record
