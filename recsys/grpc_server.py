"""What both gRPC services share: server construction with health and reflection, single
compute thread settings, readiness, and SIGTERM handling.

The services differ only in their servicers; everything about process lifecycle is here.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recsys.health import HealthServicer
from recsys.rpc_guard import GuardInterceptor
from recsys.security import ServerSecurity

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# After the drain: how long gRPC may take to report the server stopped, and then how long
# the interpreter may take to exit before the exit watchdog ends the process. A handler
# thread that never returns (a library fault; see recsys/health.py) would otherwise keep
# the process alive forever after SIGTERM: concurrent.futures joins its workers at exit.
STOP_SLACK_S = 5.0
EXIT_WATCHDOG_S = 10.0
# Servers close each connection after this long (clients reconnect transparently), so a
# client balancing over DNS re-resolves and finds replicas added since it connected.
MAX_CONNECTION_AGE_MS = 300_000

# Client side of the internal hop: round_robin over every address the target resolves to
# (`ipv4:127.0.0.1:p1,127.0.0.1:p2` locally, `dns:///svc:port` of a headless Service in a
# cluster), skipping any replica whose grpc.health.v1 status is not SERVING.
CLIENT_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
})


def client_channel_options() -> list[tuple[str, object]]:
    return [("grpc.service_config", CLIENT_SERVICE_CONFIG)]


def single_thread_compute() -> None:
    """One compute thread per serving process (see docs/ARCHITECTURE.md: a busy second
    core wrecks multi-threaded kernels; serving scales by processes). Must run before
    numpy/numba/onnxruntime are imported to take full effect."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")


@dataclass
class Served:
    server: grpc.Server
    port: int
    health: HealthServicer
    service_names: tuple[str, ...]
    # health alone on a plaintext port (ServerSecurity.health_port), for probes under TLS
    health_server: grpc.Server | None = None
    health_port: int = 0

    def start(self) -> None:
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            self.health.set(name, status)

    def stop(self, grace_s: float) -> bool:
        """Health NOT_SERVING for good and health Watch streams ended (load balancers and
        our own channels drop this replica at once), then in-flight calls get up to
        `grace_s` to finish; the rest are cancelled. Bounded: returns False when gRPC has
        not reported the server stopped STOP_SLACK_S after the grace period."""
        self.health.drain()
        stopped = self.server.stop(grace_s).wait(grace_s + STOP_SLACK_S)
        if self.health_server is not None:
            self.health_server.stop(0).wait(STOP_SLACK_S)
        if not stopped:
            log.warning("server not stopped %.1fs after the %.1fs grace period", STOP_SLACK_S, grace_s)
        return bool(stopped)


def build_server(
    host: str,
    port: int,
    workers: int,
    register: Iterable[Callable[[grpc.Server], None]],
    service_names: Iterable[str],
    interceptors: Iterable[grpc.ServerInterceptor] = (),
    security: ServerSecurity | None = None,
) -> Served:
    """A grpc.Server with the given servicers, health (NOT_SERVING until the caller says
    so) and reflection when `security` says so, bound to host:port (port 0 = a free port)
    over TLS when `security` has a certificate. `interceptors`: e.g.
    recsys.metrics.ServerInterceptor (metrics, request id, access log)."""
    security = security or ServerSecurity()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        maximum_concurrent_rpcs=workers * 16,
        # the guard goes innermost, so the metrics interceptor sees the code it sets
        interceptors=[*interceptors, *security.interceptors(), GuardInterceptor()],
        options=[
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    for add in register:
        add(server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(service_names)
    if security.reflection:  # off by default outside dev: it maps the API for anyone
        reflection.enable_server_reflection(
            (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
    credentials = security.credentials()
    if credentials is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    health_server, health_port = None, 0
    if security.health_port:
        health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"),
                                    interceptors=[GuardInterceptor()], options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)  # same statuses
        health_port = health_server.add_insecure_port(f"{host}:{security.health_port}")
        if health_port == 0:
            raise OSError(f"could not bind health port {host}:{security.health_port}")
    served = Served(server, bound, health_servicer, names, health_server, health_port)
    served.set_serving(False)
    return served


def run_until_signal(served: Served, grace_s: float, port_file: str | None = None) -> None:
    """Start, mark SERVING, write the port file (for tests and scripts), and block until
    SIGTERM/SIGINT; then drain and stop."""
    served.start()
    served.set_serving(True)
    if port_file:
        tmp = Path(port_file + ".tmp")
        tmp.write_text(str(served.port))
        os.replace(tmp, port_file)
    log.info("serving %s on port %d", ",".join(served.service_names), served.port)
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: draining for up to %.1fs", signum, grace_s)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not done.wait(0.5):  # a timed wait keeps the main thread responsive to signals
        pass
    drained = served.stop(grace_s)
    log.info("stopped")
    arm_exit_watchdog(EXIT_WATCHDOG_S, 0 if drained else 1)


def arm_exit_watchdog(after_s: float, code: int) -> threading.Thread:
    """A daemon thread that ends the process with `code` if it is still alive `after_s`
    from now, for the exit that normally follows. Everything acknowledged is already
    durable by then (the event stores commit before they answer), so skipping the
    remaining interpreter shutdown loses nothing."""

    def fire() -> None:
        time.sleep(after_s)
        stuck = [t.name for t in threading.enumerate() if t not in (threading.current_thread(), threading.main_thread())]
        log.error("exit stuck %.0fs after the drain (threads still running: %s); exiting now",
                  after_s, ", ".join(stuck) or "none")
        logging.shutdown()
        os._exit(code)

    thread = threading.Thread(target=fire, name="exit-watchdog", daemon=True)
    thread.start()
    return thread
