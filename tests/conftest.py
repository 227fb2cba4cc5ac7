"""Shared fixtures: one tiny synthetic dataset and one bundle trained on it per session.

Everything is built here from the synthetic generator (never from ../shared), so the suite
passes from a clean clone. Numba's compile cache goes to .cache/numba/<hash of kernels/>
(recsys/numba_cache.py) unless the caller set NUMBA_CACHE_DIR (make test does, the same way).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from recsys.numba_cache import default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NUMBA_CACHE_DIR", default_cache_dir(ROOT))

# Small enough to train in seconds on 2 cores, large enough for the towers to learn.
TINY = dict(n_users=240, n_items=300, seed=7, days=120, interactions_per_user=30)


@pytest.fixture(scope="session")
def tiny_dataset():
    from training.synthetic import generate

    return generate(**TINY)


@pytest.fixture(scope="session")
def tiny_config():
    from training.pipeline import MFParams, TrainConfig
    from training.two_tower import TwoTowerParams

    return TrainConfig(
        two_tower=replace(TwoTowerParams(), epochs=4, batch_size=256),
        mf=replace(MFParams(), iterations=6, factors=16),
        history_length=20,
    )


@pytest.fixture(scope="session")
def bundle_root(tmp_path_factory, tiny_dataset, tiny_config) -> Path:
    from training.pipeline import train

    root = tmp_path_factory.mktemp("bundles")
    train(tiny_dataset, root, tiny_config)
    return root


@pytest.fixture(scope="session")
def bundle(bundle_root):
    from recsys.bundle import load_bundle

    return load_bundle(bundle_root)


@pytest.fixture(scope="session")
def retriever(bundle):
    from candidate_svc.retrieval import Retriever

    r = Retriever(bundle)
    r.warmup()
    return r


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under RECSYS_REQUIRE_ALL=1 (set by .ci/run) a skipped test is a failed test: CI
    installs every binary the suite needs, so a skip there means something is missing."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("RECSYS_REQUIRE_ALL") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under RECSYS_REQUIRE_ALL=1 (CI must run every test): {reason}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One durable redis-server for the session (tests keep apart by key prefix); skips when
    the binary is missing, which RECSYS_REQUIRE_ALL=1 turns into a failure."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()
