"""One request computes at a time per serving process; the others wait on a lock.

Why: a serving process computes on one thread (docs/ARCHITECTURE.md, "One compute thread
per serving process") but gRPC's sync server runs each call on its own worker thread.
Without this lock, every point where a handler lets the GIL go (an onnxruntime run, a
`nogil` Numba kernel, a gRPC client call) hands the interpreter to another handler half
way through its own work, and the two then trade the GIL back and forth: at 8 calls in
flight the candidate tier spent ~1.55 ms of CPU per Retrieve against ~1.2 ms at one call in
flight, the difference being context switches and cold caches. Holding this lock around
the compute part of a handler leaves the GIL's release points to the threads that do not
compute (gRPC's poller, I/O), and queues the other handlers on one futex: measured
(same run, 8 in flight, demo bundle) ~1.3 ms instead of ~1.55 ms per Retrieve.

`hold()` wraps a handler's compute; `released()` wraps a blocking wait inside it (the
ranking tier's Retrieve call), so another request computes meanwhile. Both are no-ops
for a thread that does not hold the lock (in-process callers: evaluation, tests), and
`released()` may nest inside code that never took it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ComputeLock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mine = threading.local()  # .held: this thread holds _lock

    def held(self) -> bool:
        return getattr(self._mine, "held", False)

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self.held():  # re-entered (a handler calling another in process): already ours
            yield
            return
        with self._lock:
            self._mine.held = True
            try:
                yield
            finally:
                self._mine.held = False

    @contextmanager
    def released(self) -> Iterator[None]:
        if not self.held():
            yield
            return
        self._mine.held = False
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
            self._mine.held = True


COMPUTE = ComputeLock()  # the process's one
