"""Start the services as real child processes on loopback and wait until they serve.

Used by `recsys demo`, the end-to-end tests and local multi-process runs: one code path
for "start a server, learn its port, wait for health SERVING, stop it with SIGTERM".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass
class ServiceProcess:
    kind: str
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; SIGKILL only if the grace period is blown."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_service(
    kind: str,
    extra_args: Sequence[str],
    log_dir: str | Path,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> ServiceProcess:
    """`recsys serve KIND --port 0 ...` as a child process; returns once health says
    SERVING (raises RuntimeError with the log tail if it dies or times out first)."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    port_file = Path(tempfile.mkdtemp(dir=log_dir)) / f"{kind}.port"
    log_path = log_dir / f"{kind}.log"
    cmd = [sys.executable, "-m", "recsys.cli", "serve", kind, "--host", "127.0.0.1", "--port", "0",
           "--port-file", str(port_file), *extra_args]
    log_file = open(log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    log_file.close()
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = ServiceProcess(kind, proc, 0, log_path).log_tail()
            proc.kill()
            raise RuntimeError(f"{kind} service did not start (exit {proc.poll()}):\n{tail}")
        time.sleep(0.05)
    service = ServiceProcess(kind, proc, int(port_file.read_text()), log_path)
    wait_serving(service.address, max(1.0, deadline - time.monotonic()))
    return service


def wait_serving(address: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{address} not SERVING after {timeout:.0f}s")
            time.sleep(0.05)
