"""grpc.health.v1 for both services: Check, and Watch streams that end when the server drains.

Why not grpc_health.v1.health.HealthServicer (the library's): two faults seen here.
1. Its Watch parks a worker thread on a watcher that only a close callback releases; when
   the stream ends before that callback is registered (a client cancelling just as the
   server wakes, as after a SIGSTOP/SIGCONT), nothing releases it, the thread never
   returns, and the process cannot exit (concurrent.futures joins its workers at exit).
2. Nothing ends the Watch streams at drain, so every ranking replica watching a candidate
   replica (our channels turn on client-side health checking) holds the candidate's
   SIGTERM drain open for the whole grace period.
Here each Watch re-checks, at least every POLL_S, whether its RPC is still active or the
server is draining, so no watcher outlives its stream, and `drain()` ends every stream
after sending it NOT_SERVING (the client marks the replica down at once).
"""

from __future__ import annotations

import threading
from typing import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

POLL_S = 1.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self._statuses: dict[str, int] = {}
        self._changed = threading.Condition()
        self._draining = False
        self._watchers = 0

    # ---- the owner's side -------------------------------------------------------------
    def set(self, service: str, status: int) -> None:
        with self._changed:
            if self._draining:  # NOT_SERVING for good once draining
                return
            self._statuses[service] = status
            self._changed.notify_all()

    def status(self, service: str) -> int | None:
        with self._changed:
            return self._statuses.get(service)

    def drain(self) -> None:
        """Every service NOT_SERVING for good; open Watch streams get that, then end."""
        with self._changed:
            self._draining = True
            for name in self._statuses:
                self._statuses[name] = NOT_SERVING
            self._changed.notify_all()

    @property
    def watchers(self) -> int:
        with self._changed:
            return self._watchers

    # ---- RPCs -------------------------------------------------------------------------
    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
              ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"service: unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
              ) -> Iterator[health_pb2.HealthCheckResponse]:
        service = request.service
        last: int | None = None
        with self._changed:
            self._watchers += 1
        try:
            while True:
                with self._changed:
                    status = self._statuses.get(service, SERVICE_UNKNOWN)
                    if status == last and not self._draining:
                        self._changed.wait(POLL_S)
                        status = self._statuses.get(service, SERVICE_UNKNOWN)
                    draining = self._draining
                if not context.is_active():
                    return
                if status != last:
                    yield health_pb2.HealthCheckResponse(status=status)
                    last = status
                if draining:
                    return  # the stream ends OK after NOT_SERVING; the client sees the replica down
        finally:
            with self._changed:
                self._watchers -= 1
