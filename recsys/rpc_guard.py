"""The last line of the status-code map (docs/RELIABILITY.md, "Status codes"): no RPC ever
answers UNKNOWN or carries a stack trace to the caller.

`GuardInterceptor` goes innermost (last in build_server's list) so the metrics interceptor
sees the code it sets:
- request bytes that are not the method's message -> INVALID_ARGUMENT (gRPC's own answer
  would be INTERNAL "Exception deserializing request!");
- an exception the servicer did not turn into a status (a bug) -> INTERNAL with a generic
  message; the trace goes to the log, never to the caller.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import grpc

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error (logged by the server)"


class Undecodable:
    """Stands in for a request whose bytes did not parse; the handler answers for it."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as e:  # DecodeError, or anything a parser raises on garbage
            return Undecodable(e)

    return parse


class GuardInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming (reflection, health Watch): gRPC's own, passed through
        behavior = handler.unary_unary
        method = handler_call_details.method

        def guarded(request, context):
            if isinstance(request, Undecodable):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"request: not a valid message for {method}")
            try:
                return behavior(request, context)
            except Exception:
                if context.code() not in (None, grpc.StatusCode.OK):
                    raise  # context.abort(...) already set the status: let it through
                log.exception("unexpected error in %s", method)
                context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=_safe_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
