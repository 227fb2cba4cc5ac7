"""Hot reload (recsys/reload.py) in process: a valid new version is loaded, checked,
warmed and swapped; a broken one is refused and the old one keeps serving. The same over
real processes under load is in tests/test_faults.py."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from candidate_svc.retrieval import Request, Retriever
from recsys.bundle import resolve_version_dir
from recsys.config import CandidateConfig
from recsys.features import UserInput
from recsys.reload import BundleWatcher, start_watcher
from tests.bundle_faults import copy_root, publish


def make_retriever(bundle) -> Retriever:
    r = Retriever(bundle)
    r.warmup()
    return r


@pytest.fixture
def watched(bundle_root, tmp_path):
    root = copy_root(bundle_root, tmp_path / "root")
    first = resolve_version_dir(root)
    from recsys.bundle import load_bundle

    serving = {"retriever": make_retriever(load_bundle(root))}
    watcher = BundleWatcher(root, first, make_retriever, lambda r: serving.__setitem__("retriever", r),
                            interval_s=1.0, service="test")
    return root, watcher, serving, first


def test_a_valid_new_version_is_swapped_in(watched):
    root, watcher, serving, first = watched
    old = serving["retriever"]
    assert watcher.check_once() is None, "nothing new: nothing to do"
    publish(root, "v2")
    assert watcher.check_once() == "success"
    new = serving["retriever"]
    assert new is not old and new.bundle.version == "v2"
    (got,) = new.retrieve([Request(UserInput(history=[1, 2], time_ms=1_700_000_000_000), num=10)])
    assert len(got.items) == 10
    assert old.bundle.version != "v2", "the old object is untouched: calls holding it finish on it"
    assert watcher.counts == {"success": 1}


@pytest.mark.parametrize("fault", ["checksum", "onnx_dim"])
def test_a_broken_version_is_refused_and_the_old_keeps_serving(watched, fault):
    root, watcher, serving, first = watched
    old = serving["retriever"]
    publish(root, f"bad-{fault}", fault)
    labels = {"service": "test", "result": "failure"}
    before = REGISTRY.get_sample_value("recsys_bundle_reload_total", labels) or 0.0
    assert watcher.check_once() == "failure"
    assert REGISTRY.get_sample_value("recsys_bundle_reload_total", labels) == before + 1
    assert serving["retriever"] is old
    assert watcher.check_once() is None, "a refused version is not retried every poll"
    assert watcher.counts == {"failure": 1}
    publish(root, "v3", base=first)  # a newer good version is taken
    assert watcher.check_once() == "success" and serving["retriever"].bundle.version == "v3"


def test_watching_is_off_at_zero_or_for_a_pinned_version_dir(bundle_root, bundle):
    noop = lambda _x: None  # noqa: E731
    assert start_watcher(bundle_root, bundle, noop, noop, 0.0, "t") is None
    assert start_watcher(resolve_version_dir(bundle_root), bundle, noop, noop, 1.0, "t") is None


def test_health_is_serving_only_once_marked_after_warmup(bundle):
    """create_server loads and warms everything and returns a server whose health says
    NOT_SERVING; only run_until_signal marks it SERVING, after start."""
    from candidate_svc.server import create_server

    served, _ = create_server(CandidateConfig(port=0, host="127.0.0.1"), bundle)
    served.server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            served.set_serving(True)
            status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        served.server.stop(0).wait()
