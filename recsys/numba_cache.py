"""Where Numba's compile cache goes by default: `<base>/.cache/numba/<key>`.

Numba invalidates a cached kernel when the file that defines it changes, but not when a
kernel it calls from another file does: the callee's code is compiled into the caller's
cache entry (kernels.mmr and kernels.dedupe call kernels.scoring's `_dot` and
`_row_norms`), so after an edit to scoring.py they would keep running the old machine code
(once observed as an MMR 4x off its current speed). So the key is a hash of every
kernels/*.py, and an edit there starts a fresh cache. The candidate tier's kernels call
nothing outside their own files, so Numba's own check covers them. The Makefile computes
the same key (sha1 of the files' bytes in name order). Stdlib only: this runs before
anything imports Numba.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[1] / "kernels"


def default_cache_dir(base: Path) -> str:
    """base/.cache/numba/<first 12 hex digits of the key>."""
    sources = sorted(p for p in KERNELS.glob("*.py") if p.is_file() and not p.name.startswith("."))
    if not sources:
        raise FileNotFoundError(f"no kernel sources in {KERNELS}")
    digest = hashlib.sha1()
    for path in sources:
        digest.update(path.read_bytes())
    return str(base / ".cache" / "numba" / digest.hexdigest()[:12])
