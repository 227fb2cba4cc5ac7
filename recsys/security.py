"""Optional transport security and token auth for both services (all off by default).

- TLS: `tls_cert` + `tls_key` serve the main port over TLS; `tls_client_ca` also requires
  a client certificate signed by that CA (mutual TLS). Health can then be served on its
  own plaintext port (`health_port`) for probes that cannot do TLS.
- Ranking -> candidate: `candidate_tls_ca` (trust this CA), plus `candidate_tls_cert` /
  `candidate_tls_key` for mTLS, plus `candidate_token` when the candidate tier checks tokens.
- Tokens: `auth_tokens` names a JSON file {"token": ["/recsys.v1.RankingService/Recommend",
  "/recsys.v1.CandidateService/*", "*"]}; callers send `authorization: Bearer <token>`.
  No or unknown token -> UNAUTHENTICATED, a token without the method -> PERMISSION_DENIED.
  Health is exempt (probes carry no token).
"""

from __future__ import annotations

import hmac
import json
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Who is calling, for the handler and the access log: the verified client certificate's
# common name under mutual TLS ("" otherwise). Set by CallerIdentityInterceptor per call.
CALLER: ContextVar[str] = ContextVar("caller", default="")


def caller_identity(context: grpc.ServicerContext) -> str:
    """The mTLS peer's certificate common name, as gRPC verified it; "" without mTLS."""
    names = (context.auth_context() or {}).get("x509_common_name") or []
    return names[0].decode(errors="replace") if names else ""


@dataclass(frozen=True)
class ServerSecurity:
    """What build_server needs; `from_config` reads it off either service's config."""

    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    auth_tokens: str = ""
    reflection: bool = False
    health_port: int = 0  # 0 = health only on the main port

    @classmethod
    def from_config(cls, config) -> "ServerSecurity":
        return cls(config.tls_cert, config.tls_key, config.tls_client_ca, config.auth_tokens,
                   config.reflection, config.health_port)

    def credentials(self) -> grpc.ServerCredentials | None:
        """None = plaintext."""
        if not (self.tls_cert or self.tls_key or self.tls_client_ca):
            return None
        if not (self.tls_cert and self.tls_key):
            raise ValueError("tls_cert, tls_key: set both to serve TLS (tls_client_ca needs them too)")
        ca = Path(self.tls_client_ca).read_bytes() if self.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        out: list[grpc.ServerInterceptor] = [CallerIdentityInterceptor()] if self.tls_client_ca else []
        if self.auth_tokens:
            out.append(TokenAuthInterceptor(load_tokens(self.auth_tokens)))
        return out


class CallerIdentityInterceptor(grpc.ServerInterceptor):
    """Under mutual TLS: binds CALLER to the client certificate's common name around each
    unary handler (the access log line of recsys.metrics names it too)."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        def wrapped(request, context):
            caller = caller_identity(context)
            token = CALLER.set(caller)
            try:
                return behavior(request, context)
            finally:
                CALLER.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            wrapped, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def channel_credentials(ca: str, cert: str = "", key: str = "") -> grpc.ChannelCredentials | None:
    """Client side of TLS (None = plaintext): trust `ca`, present cert/key when given (mTLS)."""
    if not (ca or cert or key):
        return None
    if not ca or bool(cert) != bool(key):
        raise ValueError("candidate_tls_ca: required for TLS to the candidate tier; "
                         "candidate_tls_cert and candidate_tls_key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )


def load_tokens(path: str) -> dict[str, frozenset[str]]:
    """The token file: a JSON object, token -> list of allowed method patterns."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"auth_tokens: cannot read {path}: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(t, str) and t and isinstance(m, list) and all(isinstance(x, str) for x in m)
        for t, m in data.items()
    ):
        raise ValueError(f"auth_tokens: {path} must be a JSON object of token -> list of method names")
    return {token: frozenset(methods) for token, methods in data.items()}


def allowed(patterns: frozenset[str], method: str) -> bool:
    """`method` is "/package.Service/Method"; patterns: exact, "/package.Service/*" or "*"."""
    service = method.rsplit("/", 1)[0] + "/*"
    return "*" in patterns or method in patterns or service in patterns


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that only aborts (the request is never parsed)."""

    def abort(_request, context):
        context.abort(code, message)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(abort)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(abort)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(abort)
    return grpc.stream_stream_rpc_method_handler(abort)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, tokens: Mapping[str, frozenset[str]]) -> None:
        self.tokens = dict(tokens)

    def _lookup(self, presented: str) -> frozenset[str] | None:
        found = None
        for token, patterns in self.tokens.items():  # compare all, in constant time each
            if hmac.compare_digest(token.encode(), presented.encode()):
                found = patterns
        return found

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        header = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        scheme, _, presented = header.partition(" ")
        patterns = self._lookup(presented.strip()) if scheme.lower() == "bearer" else None
        if patterns is None:
            return _deny(handler, grpc.StatusCode.UNAUTHENTICATED,
                         "authorization: missing or unknown bearer token")
        if not allowed(patterns, method):
            return _deny(handler, grpc.StatusCode.PERMISSION_DENIED, f"authorization: token may not call {method}")
        return handler
