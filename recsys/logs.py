"""Structured logs and the request id that ties one call's log lines across both tiers.

The request id lives in a context variable for the duration of one RPC. The server
interceptor (recsys.metrics) takes it from the caller's `x-request-id` metadata or makes a
new one; ranking passes it on to candidate in the Retrieve call's metadata
(`outgoing_metadata()`), so grepping one id finds both tiers' lines. `JsonFormatter`
writes one JSON object per line with the id in it (`RECSYS_LOG_FORMAT=json`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID = 128

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str:
    """The id of the RPC this thread is serving ('' outside one)."""
    return _request_id.get()


def bind_request_id(request_id: str) -> contextvars.Token:
    return _request_id.set(request_id)


def reset_request_id(token: contextvars.Token) -> None:
    _request_id.reset(token)


def request_id_from(metadata) -> str:
    """The caller's x-request-id if it is a sane token, else a fresh one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            if 0 < len(value) <= MAX_REQUEST_ID and value.isprintable() and " " not in value:
                return value
    return new_request_id()


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata for a downstream call made while serving a request: carries its id."""
    rid = current_request_id()
    return ((REQUEST_ID_HEADER, rid),) if rid else ()


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id (or '')."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, any `extra=` fields,
    and exc for exceptions."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", "") or current_request_id()
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(level: int = logging.INFO, json_format: bool = False) -> None:
    """Root logging for a process: text (with the request id when there is one) or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
