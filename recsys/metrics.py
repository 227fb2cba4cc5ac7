"""Prometheus metrics for both services, collected by one gRPC server interceptor.

Names follow go-grpc-prometheus (what dashboards for gRPC services already expect) plus
`recsys_*` application metrics in base units:

    grpc_server_started_total{grpc_service,grpc_method,grpc_type}
    grpc_server_handled_total{grpc_service,grpc_method,grpc_type,grpc_code}
    grpc_server_handling_seconds{grpc_service,grpc_method,grpc_type}   histogram
    recsys_candidates_per_request{source}      Retrieve: candidates returned per source
    recsys_fallback_total{reason}              Recommend answered degraded (popular fallback)
    recsys_cold_start_total                    Recommend for a user the bundle does not know
    recsys_event_write_seconds                 LogEvents accepted: validation + durable commit
    recsys_events_total{outcome}               events stored / duplicates
    recsys_bundle_info{service,version}        1 for the bundle this process serves
    recsys_bundle_reload_total{service,result} hot reloads of a new bundle version (success / failure)

The interceptor also binds the request id (recsys.logs) for the call, from the caller's
`x-request-id` metadata or a new one, and writes one access-log line per call at DEBUG on
the `recsys.access` logger. The numbers are read from the response messages, so the
servicers stay free of metrics code. `start_http(host, port)` serves /metrics; port 0 in
the config means no endpoint (the counters are still kept in the process).
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any, Callable

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from recsys import logs
from recsys.security import caller_identity

access_log = logging.getLogger("recsys.access")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
COUNT_BUCKETS = (0, 1, 5, 10, 25, 50, 100, 200, 300, 500, 1000, 2000)
_GRPC = ("grpc_service", "grpc_method", "grpc_type")


class Metrics:
    """Every metric, registered once per registry (the process default in the services,
    a private one in tests that want exact counts)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.", _GRPC,
                               registry=registry)
        self.handled = Counter("grpc_server_handled_total", "RPCs completed on the server, by status code.",
                               (*_GRPC, "grpc_code"), registry=registry)
        self.handling = Histogram("grpc_server_handling_seconds", "Server-side time of an RPC.", _GRPC,
                                  buckets=LATENCY_BUCKETS, registry=registry)
        self.candidates = Histogram("recsys_candidates_per_request", "Candidates returned per Retrieve, by source.",
                                    ("source",), buckets=COUNT_BUCKETS, registry=registry)
        self.fallback = Counter("recsys_fallback_total", "Recommend answers degraded to the popular fallback.",
                                ("reason",), registry=registry)
        self.cold_start = Counter("recsys_cold_start_total", "Recommend answers for users unknown to the bundle.",
                                  registry=registry)
        self.event_write = Histogram("recsys_event_write_seconds", "LogEvents accepted: validation and commit.",
                                     buckets=LATENCY_BUCKETS, registry=registry)
        self.events = Counter("recsys_events_total", "Events received by LogEvents.", ("outcome",),
                              registry=registry)
        self.bundle = Gauge("recsys_bundle_info", "The bundle version this process serves.", ("service", "version"),
                            registry=registry)
        self.reload = Counter("recsys_bundle_reload_total", "Hot reloads of a new bundle version, by result.",
                              ("service", "result"), registry=registry)
        # labelled children kept per label values: labels() takes a lock and builds its key
        # on every call, a few microseconds each, several times per RPC
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}

    def child(self, name: str, *labels: str) -> Any:
        """getattr(self, name).labels(*labels), looked up once per label values."""
        key = (name, labels)
        got = self._children.get(key)
        if got is None:
            got = self._children[key] = getattr(self, name).labels(*labels)
        return got


_default: Metrics | None = None


def default_metrics() -> Metrics:
    global _default
    if _default is None:
        _default = Metrics()
    return _default


# ---- what each response tells us ---------------------------------------------------------------
# Retrieve's candidates per source, set by the servicer for the call it answers: walking 300
# candidates' protos here cost ~0.4 ms a call (bench/bench_candidate.py). Unset: walk them.
retrieve_source_counts: ContextVar[dict[str, int] | None] = ContextVar("retrieve_source_counts", default=None)


def _observe_retrieve(m: Metrics, response: Any) -> None:
    per_source = retrieve_source_counts.get()
    if per_source is None and isinstance(response, bytes):
        return  # an answer already serialised whose servicer set no counts: nothing to walk
    if per_source is None:
        per_source = {}
        for cand in response.candidates:
            for s in cand.sources:
                per_source[s.source] = per_source.get(s.source, 0) + 1
    else:
        retrieve_source_counts.set(None)
    for source, n in per_source.items():
        m.child("candidates", source).observe(n)


def _observe_recommend(m: Metrics, response: Any) -> None:
    if response.degraded:
        # "UNAVAILABLE: failed to connect ..." -> "UNAVAILABLE": a label must stay low-cardinality
        m.fallback.labels(response.degraded_reason.split(":", 1)[0][:40] or "unknown").inc()
    if response.cold_start:
        m.cold_start.inc()


def _observe_log_events(m: Metrics, response: Any) -> None:
    m.events.labels("stored").inc(response.stored)
    m.events.labels("duplicate").inc(response.duplicates)


OBSERVERS: dict[str, Callable[[Metrics, Any], None]] = {
    "Retrieve": _observe_retrieve,
    "Recommend": _observe_recommend,
    "LogEvents": _observe_log_events,
}


class ServerInterceptor(grpc.ServerInterceptor):
    """Counts, times and logs every unary call; binds the request id around the handler."""

    def __init__(self, service: str, bundle_version: str = "", metrics: Metrics | None = None) -> None:
        self.m = metrics or default_metrics()
        if bundle_version:
            self.m.bundle.labels(service, bundle_version).set(1)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming (reflection, health Watch): passed through untouched
        full = handler_call_details.method  # "/recsys.v1.RankingService/Recommend"
        grpc_service, _, method = full.lstrip("/").partition("/")
        labels = (grpc_service, method, "unary")
        observe = OBSERVERS.get(method)
        metadata = handler_call_details.invocation_metadata
        behavior = handler.unary_unary
        m = self.m

        started, handling = m.child("started", *labels), m.child("handling", *labels)

        def wrapped(request, context):
            token = logs.bind_request_id(logs.request_id_from(metadata))
            started.inc()
            t = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                response = behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                if observe is not None and code == grpc.StatusCode.OK:
                    observe(m, response)
                return response
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                seconds = time.perf_counter() - t
                handling.observe(seconds)
                m.child("handled", *labels, code.name).inc()
                if method == "LogEvents" and code == grpc.StatusCode.OK:
                    m.event_write.observe(seconds)
                if access_log.isEnabledFor(logging.DEBUG):
                    caller = caller_identity(context)  # the mTLS client's certificate name, or ""
                    access_log.debug("rpc %s %s %.2fms%s", full, code.name, seconds * 1000,
                                     f" from {caller}" if caller else "",
                                     extra={"grpc_method": full, "grpc_code": code.name,
                                            "duration_ms": round(seconds * 1000, 3), "caller": caller})
                logs.reset_request_id(token)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def start_http(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> int:
    """Serve /metrics on host:port in a daemon thread; returns the bound port (port 0 is
    treated by the callers as "off", so this is only called with a real port)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)

