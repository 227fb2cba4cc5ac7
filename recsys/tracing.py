"""Optional OpenTelemetry tracing for both services: one trace per Recommend, across the
ranking -> candidate hop.

Off unless asked for (`RECSYS_OTEL` / `recsys serve --otel`: `off`, `console`, `otlp`), and
never a hard dependency: with tracing off nothing here imports `opentelemetry`, and asking
for it without the packages installed (`pip install 'recsys-serving[otel]'`) logs a warning
and serves untraced.

    setup_tracing(service_name, exporter) -> Tracer | None   one provider per service
    interceptors(tracer)                   -> [ServerInterceptor] or []
    ServerInterceptor   a SERVER span per unary RPC, parent taken from the caller's W3C
                        `traceparent` metadata; binds the tracer for the call
    client_call(method) a CLIENT span around an outbound call; yields the `traceparent`
                        metadata to send with it
    stage(name)         an INTERNAL span for a step of the request (retrieve, score, rules)

`client_call` and `stage` find the tracer through a context variable the interceptor sets,
so code that runs outside a traced RPC (offline evaluation, tracing off) pays one
ContextVar lookup and imports nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
from typing import TYPE_CHECKING, Any, Iterator

import grpc

from recsys import logs
from recsys.config import OTEL_MODES as MODES

if TYPE_CHECKING:  # names for annotations only: importing them here would load opentelemetry
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)

ENV = "RECSYS_OTEL"
TRACER_NAME = "recsys"
# gRPC's own services (health probes every few seconds, reflection) would drown the traces.
UNTRACED_PREFIX = "grpc."
# Server-side codes that mean the server failed (OpenTelemetry's gRPC conventions); the
# others (INVALID_ARGUMENT, NOT_FOUND, ...) are the caller's mistake and leave the status unset.
SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE",
                           "DATA_LOSS"})

_tracer: contextvars.ContextVar[Any] = contextvars.ContextVar("recsys_tracer", default=None)


def available() -> bool:
    """True when the OpenTelemetry SDK is installed (without importing it)."""
    # the parent first: find_spec("a.b") imports "a", and raises if "a" is missing
    return importlib.util.find_spec("opentelemetry") is not None and (
        importlib.util.find_spec("opentelemetry.sdk") is not None)


def setup_tracing(service_name: str, exporter: "str | SpanExporter") -> "Tracer | None":
    """A tracer whose spans carry `service.name=service_name`, or None when tracing is off.

    `exporter`: "off" (or ""), "console" (spans as JSON on stdout), "otlp" (needs
    opentelemetry-exporter-otlp; endpoint from the standard OTEL_EXPORTER_OTLP_* variables),
    or a SpanExporter object, exported synchronously (tests use the in-memory one). Each
    call makes its own provider instead of the process-global one, so two services in one
    process (tests) still report under their own names."""
    if isinstance(exporter, str):
        if exporter in ("", "off"):
            return None
        if exporter not in MODES:
            raise ValueError(f"{ENV}: {exporter!r} is not one of {', '.join(MODES)}")
        if not available():
            log.warning("%s=%s but opentelemetry-sdk is not installed (pip install 'recsys-serving[otel]'): "
                        "tracing off", ENV, exporter)
            return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if isinstance(exporter, str):
        span_exporter = _named_exporter(exporter)
        if span_exporter is None:
            return None
        processor = BatchSpanProcessor(span_exporter)  # exports off the request path
    else:
        processor = SimpleSpanProcessor(exporter)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(processor)
    log.info("tracing on: service %s, exporter %s", service_name,
             exporter if isinstance(exporter, str) else type(exporter).__name__)
    return provider.get_tracer(TRACER_NAME)


def _named_exporter(name: str) -> "SpanExporter | None":
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    for module in ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                   "opentelemetry.exporter.otlp.proto.http.trace_exporter"):
        try:
            if importlib.util.find_spec(module) is not None:
                return importlib.import_module(module).OTLPSpanExporter()
        except ModuleNotFoundError:  # a parent package is missing
            continue
    log.warning("%s=otlp but opentelemetry-exporter-otlp is not installed: tracing off", ENV)
    return None


def interceptors(tracer: "Tracer | None") -> list[grpc.ServerInterceptor]:
    """What build_server adds for tracing: nothing when it is off."""
    return [] if tracer is None else [ServerInterceptor(tracer)]


def _status_code_attrs(span: Any, code: grpc.StatusCode, server: bool) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("rpc.grpc.status_code", code.value[0])
    # a client span is an error for any non-OK code; a server span only for server faults
    if code != grpc.StatusCode.OK and (not server or code.name in SERVER_ERRORS):
        span.set_status(Status(StatusCode.ERROR, code.name))


class ServerInterceptor(grpc.ServerInterceptor):
    """A SERVER span per unary RPC, named "recsys.v1.RankingService/Recommend", child of
    the caller's `traceparent` when there is one. Goes after recsys.metrics' interceptor
    in the list, so the request id it binds is there to record."""

    def __init__(self, tracer: "Tracer") -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = tracer
        self.propagator = TraceContextTextMapPropagator()  # W3C, whatever OTEL_PROPAGATORS says

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        full = handler_call_details.method  # "/recsys.v1.RankingService/Recommend"
        if handler is None or handler.unary_unary is None or full.startswith("/" + UNTRACED_PREFIX):
            return handler  # streaming and gRPC's own services: passed through untouched
        from opentelemetry import trace

        rpc_service, _, method = full.lstrip("/").partition("/")
        carrier = {k: v for k, v in handler_call_details.invocation_metadata or () if isinstance(v, str)}
        behavior = handler.unary_unary
        tracer, propagator = self.tracer, self.propagator

        def wrapped(request, context):
            parent = propagator.extract(carrier)
            span = tracer.start_span(
                full.lstrip("/"), context=parent, kind=trace.SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": rpc_service, "rpc.method": method,
                            "recsys.request_id": logs.current_request_id()},
            )
            token = _tracer.set(tracer)
            code = grpc.StatusCode.OK
            try:
                with trace.use_span(span, end_on_exit=False, record_exception=False,
                                    set_status_on_exception=False):
                    response = behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except Exception as e:
                code = context.code() or grpc.StatusCode.UNKNOWN
                if code == grpc.StatusCode.UNKNOWN:  # escaped, not context.abort()
                    span.record_exception(e)
                raise
            finally:
                _status_code_attrs(span, code, server=True)
                span.end()
                _tracer.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@contextlib.contextmanager
def client_call(full_method: str) -> Iterator[tuple[tuple[str, str], ...]]:
    """Around an outbound unary call made while serving a traced RPC: a CLIENT span, and
    the metadata (`traceparent`) that makes the callee's span its child. Yields () and
    does nothing when the current RPC is not traced."""
    tracer = _tracer.get()
    if tracer is None:
        yield ()
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    rpc_service, _, method = full_method.lstrip("/").partition("/")
    with tracer.start_as_current_span(
        full_method.lstrip("/"), kind=trace.SpanKind.CLIENT, record_exception=False,
        set_status_on_exception=False,
        attributes={"rpc.system": "grpc", "rpc.service": rpc_service, "rpc.method": method},
    ) as span:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        try:
            yield tuple(carrier.items())
        except grpc.RpcError as e:
            _status_code_attrs(span, e.code(), server=False)
            raise
        _status_code_attrs(span, grpc.StatusCode.OK, server=False)


_NO_SPAN = contextlib.nullcontext()


def stage(name: str) -> contextlib.AbstractContextManager:
    """An INTERNAL span for one step of the current traced RPC (a no-op outside one)."""
    tracer = _tracer.get()
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(name)
