"""Where Numba's compile cache goes by default: `<root>/.cache/numba/<key>`.

Numba invalidates a cached kernel when the file that defines it changes, but not when a
helper it inlined from another file does (kernels.mmr and kernels.dedupe inline
kernels.scoring's `_dot` and `_row_norms`): after an edit to scoring.py they would keep
running the old machine code (once observed as an MMR 4x off its current speed). So the
key is a hash of every kernels/*.py, and an edit there starts a fresh cache. The Makefile
computes the same key (sha1 of the files' bytes in name order). Stdlib only: this runs
before anything imports Numba.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


def default_cache_dir(base: Path) -> str:
    """base/.cache/numba/<first 12 hex digits of the key>."""
    spec = importlib.util.find_spec("kernels")  # locates the package without importing it (or Numba)
    digest = hashlib.sha1()
    if spec is not None and spec.origin:
        for path in sorted(Path(spec.origin).parent.glob("*.py")):
            digest.update(path.read_bytes())
    return str(base / ".cache" / "numba" / digest.hexdigest()[:12])
