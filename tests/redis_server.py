"""A real `redis-server` on a free loopback port, in a directory of its own, for tests.

Started with the durability settings the Redis event store demands (append-only file,
fsync on every write, no RDB snapshots), so it can be SIGKILLed and restarted on the same
directory to check that nothing acknowledged was lost.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

BINARY = "redis-server"
DURABLE_ARGS = ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]


def require_binary() -> str:
    """The redis-server path, or pytest.skip (a failure under RECSYS_REQUIRE_ALL=1, as in CI)."""
    path = shutil.which(BINARY)
    if path is None:
        pytest.skip(f"{BINARY} not on PATH (CI installs it: apt-get install redis-server)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = require_binary()
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.auto_port = port is None  # and not yet bound once: may move if taken meanwhile
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        for _ in range(2):  # free_port's answer may be taken by another socket before redis binds it
            try:
                return self._start(timeout)
            except RuntimeError:
                if not (self.auto_port and "Address already in use" in self.log_tail()):
                    raise
                self.port = free_port()
        return self._start(timeout)

    def _start(self, timeout: float) -> "RedisServer":
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--daemonize", "no", "--logfile", str(self.dir / "redis.log"), *DURABLE_ARGS,
               *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):  # -LOADING while replaying the AOF
                        self.auto_port = False  # bound: restarts keep this port
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server not answering PING after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no final fsync; only what was already on disk survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
