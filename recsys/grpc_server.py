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
# Threads kept for health Watch streams beyond `workers` (see build_server): one per
# watching client channel, e.g. one per ranking replica for a candidate replica.
WATCH_THREADS = 64
EXIT_WATCHDOG_S = 10.0
# Servers close each connection after this long (clients reconnect transparently), so a
# client balancing over DNS re-resolves and finds replicas added since it connected.
MAX_CONNECTION_AGE_MS = 300_000

# Request metadata (headers) a server accepts. gRPC has a soft limit (`max_metadata_size`:
# between it and the hard limit a request is refused at *random*) and a hard one
# (`absolute_max_metadata_size`); both equal makes the refusal deterministic: a request
# whose metadata is over this gets RESOURCE_EXHAUSTED "received metadata size exceeds hard
# limit (N vs. 16384)" before any handler runs. Ours are a token, a traceparent and a
# request id: well under 1 KiB.
MAX_METADATA_BYTES = 16 * 1024

# Keepalive, both ends agreeing (grpc doc/keepalive.md). Clients ping an idle connection
# every KEEPALIVE_TIME_MS (without calls too, so a dead peer behind a silent NAT/conntrack
# drop is found before the next call waits on it); servers accept pings as often as every
# MIN_PING_INTERVAL_MS and also without calls. A client pinging faster than the server
# allows gets GOAWAY `too_many_pings` after MAX_PING_STRIKES bad pings and reconnects: the
# client's time must never be below the server's minimum (tests/test_rpc_client.py reads
# both dicts). The server pings too, every SERVER_KEEPALIVE_TIME_MS, to reap dead clients.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
MIN_PING_INTERVAL_MS = 10_000
MAX_PING_STRIKES = 2
SERVER_KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_PERMIT_WITHOUT_CALLS = 1  # both ends: the client sends such pings, the server accepts them

# Retries come from the service config and nowhere else (no retry loop in our code, so
# they never stack; gRFC A6), for idempotent calls only, on UNAVAILABLE only (the replica
# was down, restarting or draining; DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED are never
# retried: that would multiply load on a tier that is already late or shedding):
# - Retrieve, RetrieveBatch: pure reads;
# - Recommend: a read (it writes nothing);
# - LogEvents: idempotent by each event's idempotency_key (the store keeps the first copy
#   and counts the rest as `duplicates`), so a retry of a batch that did commit stores
#   nothing twice.
# Attempts share the caller's deadline (a retry never extends it). retryThrottling is per
# channel: every failed attempt costs a token, every success refunds tokenRatio, and once
# the tokens fall to maxTokens/2 no retries are made until successes refill them, so a
# tier that is failing for real (over ~1 call in 3 failing here) gets no retry storm.
RETRY_POLICY = {
    "maxAttempts": 3,
    "initialBackoff": "0.02s",
    "maxBackoff": "0.2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
RETRY_THROTTLING = {"maxTokens": 20, "tokenRatio": 0.5}
IDEMPOTENT_METHODS = (
    ("recsys.v1.CandidateService", "Retrieve"),
    ("recsys.v1.CandidateService", "RetrieveBatch"),
    ("recsys.v1.RankingService", "Recommend"),
    ("recsys.v1.RankingService", "LogEvents"),
)

# Client-side outlier ejection (gRFC A50, built into grpcio's C core): every `interval`,
# a replica whose calls failed (any non-OK status) at >= `threshold` percent, over at least
# `requestVolume` calls, is taken out of the round_robin for baseEjectionTime x (times
# ejected), never more than maxEjectionPercent of the replicas (one of two). The breaker
# (ranking_svc/breaker.py) covers the whole tier; this covers one bad replica among good
# ones, which health checking misses when the replica still says SERVING.
OUTLIER_DETECTION = {
    "interval": "1s",
    "baseEjectionTime": "10s",
    "maxEjectionTime": "120s",
    "maxEjectionPercent": 50,
    "failurePercentageEjection": {
        "threshold": 50,
        "enforcementPercentage": 100,
        "minimumHosts": 2,
        "requestVolume": 5,
    },
    "childPolicy": [{"round_robin": {}}],
}

# Client side of the internal hop: round_robin over every address the target resolves to
# (`ipv4:127.0.0.1:p1,127.0.0.1:p2` locally, `dns:///svc:port` of a headless Service in a
# cluster), skipping any replica whose grpc.health.v1 status is not SERVING and ejecting
# one that keeps failing; idempotent calls retried as above.
CLIENT_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"outlier_detection_experimental": OUTLIER_DETECTION}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [{
        "name": [{"service": service, "method": method} for service, method in IDEMPOTENT_METHODS],
        "retryPolicy": RETRY_POLICY,
    }],
    "retryThrottling": RETRY_THROTTLING,
})


def client_keepalive_options(time_ms: int = KEEPALIVE_TIME_MS) -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", time_ms),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", KEEPALIVE_PERMIT_WITHOUT_CALLS),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging an idle connection
    ]


def server_keepalive_options(min_ping_interval_ms: int = MIN_PING_INTERVAL_MS) -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", KEEPALIVE_PERMIT_WITHOUT_CALLS),
        ("grpc.http2.min_ping_interval_without_data_ms", min_ping_interval_ms),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
    ]


def client_channel_options() -> list[tuple[str, object]]:
    """Every channel between our tiers (and the load generator's): the service config above
    and keepalive agreeing with server_keepalive_options."""
    return [("grpc.service_config", CLIENT_SERVICE_CONFIG), *client_keepalive_options()]


def server_options() -> list[tuple[str, object]]:
    return [
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.so_reuseport", 0),
        *server_keepalive_options(),
    ]


def single_thread_compute() -> None:
    """One compute thread per serving process (see docs/ARCHITECTURE.md: a busy second
    core wrecks multi-threaded kernels; serving scales by processes). Must run before
    numpy/numba/onnxruntime are imported to take full effect."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    # the search encoder's tokenizer (HF tokenizers) would otherwise start a thread per core
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
        # + WATCH_THREADS: a sync server parks one thread per open health Watch stream (each
        # client channel with health checking holds one), so those must not eat the workers
        futures.ThreadPoolExecutor(max_workers=workers + WATCH_THREADS, thread_name_prefix="rpc"),
        maximum_concurrent_rpcs=workers * 16 + WATCH_THREADS,
        # the guard goes innermost, so the metrics interceptor sees the code it sets
        interceptors=[*interceptors, *security.interceptors(), GuardInterceptor()],
        options=server_options(),
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
        health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2 + WATCH_THREADS, thread_name_prefix="health"),
                                    interceptors=[GuardInterceptor()], options=server_options())
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
