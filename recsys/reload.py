"""Hot reload of a bundle root's newest version, shared by both services.

`BundleWatcher` polls ROOT/LATEST every `interval_s`. When it names a version other than
the one served, the watcher loads it with every check `load_bundle` makes (manifest,
sha256 of each file, array shapes), hands it to the service's `build` (which constructs
the service's serving object from it, validates what only the service knows, e.g. the
ONNX user tower's inputs and outputs or the ranker's features, and warms it), and only
then to `swap`, which assigns one reference that handlers read once per request. A call
already running keeps the old object until it returns; Python frees the old bundle when
the last such call lets go (TF Serving's availability-preserving policy: load the new
version before unloading the old, never drop to none).

A version that fails any step is refused: logged, counted in
`recsys_bundle_reload_total{service,result="failure"}`, remembered (so it is not retried
every poll) and the old version keeps serving. Publishing a newer version tries again.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Callable, Generic, TypeVar

from recsys.bundle import Bundle, BundleError, load_bundle, resolve_version_dir

log = logging.getLogger(__name__)

T = TypeVar("T")


class BundleWatcher(Generic[T]):
    def __init__(
        self,
        root: str | Path,
        served_version_dir: Path,
        build: Callable[[Bundle], T],
        swap: Callable[[T], None],
        interval_s: float,
        service: str,
    ) -> None:
        self.root = Path(root)
        self.served = Path(served_version_dir).resolve()
        self.build = build
        self.swap = swap
        self.interval_s = interval_s
        self.service = service
        self.counts: Counter[str] = Counter()  # "success" / "failure"
        self.refused: set[Path] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one reload at a time (poll thread or a direct call)
        self._last_error = ""

    def check_once(self) -> str | None:
        """Reload if LATEST moved: "success", "failure", or None (nothing new)."""
        with self._lock:
            try:
                vdir = resolve_version_dir(self.root).resolve()
            except (BundleError, OSError) as e:  # LATEST missing or naming nothing: keep serving
                if str(e) != self._last_error:  # once per distinct problem, not every poll
                    log.warning("bundle reload: cannot resolve %s: %s", self.root, e)
                    self._last_error = str(e)
                return None
            self._last_error = ""
            if vdir == self.served or vdir in self.refused:
                return None
            try:
                bundle = load_bundle(vdir)
                built = self.build(bundle)
            except Exception as e:  # any failure of a new version must leave the old one serving
                self.refused.add(vdir)
                self._count("failure")
                log.error("bundle reload: refused %s, still serving %s: %s: %s",
                          vdir.name, self.served.name, type(e).__name__, e)
                return "failure"
            self.swap(built)
            old, self.served = self.served, vdir
            self._count("success")
            self._set_info(old.name, bundle.version)
            log.info("bundle reload: now serving %s (was %s)", bundle.version, old.name)
            return "success"

    def start(self) -> "BundleWatcher[T]":
        self._thread = threading.Thread(target=self._run, name=f"{self.service}-reload", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:  # the poll loop must outlive any surprise
                log.exception("bundle reload: unexpected error")

    def _count(self, result: str) -> None:
        self.counts[result] += 1
        from recsys.metrics import default_metrics

        default_metrics().reload.labels(self.service, result).inc()

    def _set_info(self, old: str, new: str) -> None:
        from recsys.metrics import default_metrics

        gauge = default_metrics().bundle
        try:
            gauge.remove(self.service, old)
        except KeyError:
            pass
        gauge.labels(self.service, new).set(1)


def start_watcher(
    bundle_path: str | Path, bundle: Bundle, build: Callable[[Bundle], T], swap: Callable[[T], None],
    interval_s: float, service: str,
) -> BundleWatcher[T] | None:
    """A running watcher when reloading is on (interval > 0) and the bundle was given as a
    root (a version directory given directly is pinned: there is nothing to watch)."""
    if interval_s <= 0 or (Path(bundle_path) / "manifest.json").is_file():
        return None
    log.info("bundle reload: watching %s/LATEST every %.1fs", bundle_path, interval_s)
    return BundleWatcher(bundle_path, bundle.path, build, swap, interval_s, service).start()
