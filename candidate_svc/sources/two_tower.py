"""Two-tower ANN: usearch HNSW over the item-tower embeddings, queried with the user embedding.

Excluded ids are filtered by adaptive over-fetch, not inside the graph walk: usearch's C++
core has a predicate-filtered search, but its Python binding (2.26) exposes only
`search_many(vectors, count, exact, threads, dtype)`, no filter callback (and a Python
callback per visited node would cost more than it saves). So the first search asks for
n + (excluded ids, capped at 4n), and if filtering still leaves fewer than n, the count is
doubled until n are found or the whole index was returned. A user who excluded a third of
the catalogue costs one search; the loop is for the adversarial case.

The search calls the compiled index directly (`Index._compiled.search_many`, what
`Index.search` calls after its checks, ~3 us less), threads=1, float32 query. Where a
single query's time goes (perf, 100k x 64-d, ef 64; bench/bench_candidate.py): the graph
walk is bound by memory stalls in usearch's C++ core, which for every candidate loads the
vector through a pointer table, the node's key (the "not removed" predicate) and runs the
metric, with no software prefetch (hnswlib prefetches the next neighbour's vector); the
stock f32 cosine kernel widens to f64 and takes two norms per distance (hence
`prefer_inner_product`); and each call pays ~8-13 us for std::thread::hardware_concurrency
(glibc reads /sys/devices/system/cpu/online), which hnswlib does not. None of that is
reachable from Python; what is, is done here.
"""

from __future__ import annotations

import numpy as np
from numba import cfunc, types
from usearch.compiled import MetricKind, MetricSignature, ScalarKind
from usearch.index import CompiledMetric, Index

from candidate_svc.sources import TWO_TOWER, Context, Proposal

FLOAT_KINDS = (ScalarKind.F64, ScalarKind.F32, ScalarKind.BF16, ScalarKind.F16)


@cfunc(types.float32(types.CPointer(types.float32), types.CPointer(types.float32), types.uintp),
       fastmath={"reassoc", "contract"}, cache=True)  # reassociation only: vectorises the sum
def _inner_product_distance_f32(a, b, ndim):
    # d(a, b) = 1 - a.b  (usearch's "ip" distance)
    dot = np.float32(0.0)
    for i in range(ndim):
        dot += a[i] * b[i]
    return np.float32(1.0) - dot


INNER_PRODUCT_F32 = CompiledMetric(_inner_product_distance_f32.address, MetricKind.IP, MetricSignature.ArrayArraySize)


def prefer_inner_product(index: Index, vectors: np.ndarray, tolerance: float = 1e-3) -> bool:
    """Search a cosine index of unit vectors by inner product: the same order and, up to
    rounding, the same distance 1 - cos. usearch 2.26's f32 cosine kernel widens to f64 and
    takes both norms and a square root on every distance; its f32 inner product also widens
    to f64; this f32 dot (a Numba cfunc the C++ search calls through a pointer) cut a
    100k-item, ef=64 search by ~25% (bench/bench_candidate.py). Only the metric the search
    calls changes, never the index file. True if switched."""
    if index.metric_kind != MetricKind.Cos or index.dtype not in FLOAT_KINDS or len(vectors) == 0:
        return False
    sq_norms = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
    if not np.all(np.abs(sq_norms - 1.0) <= tolerance):  # written so that a NaN fails it
        return False
    index.metric = INNER_PRODUCT_F32 if index.dtype == ScalarKind.F32 else MetricKind.IP
    return True


class TwoTowerSource:
    name = TWO_TOWER

    def __init__(self, index: Index) -> None:
        self.index = index
        self.size = len(index)
        self._search = index._compiled.search_many  # see the module docstring

    def search(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys int64[m], cosine float32[m]) of the `count` nearest items, best first."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        # Asking for the whole index: search exactly. An HNSW walk does not promise to reach
        # every node (a test saw 39 of 40), and a full scan costs what returning all does.
        exact = count >= self.size
        keys, dist, counts, _, _ = self._search(q, count=count, exact=exact, threads=1, dtype=ScalarKind.F32)
        m = int(counts[0])
        return keys[0, :m].astype(np.int64), (1.0 - dist[0, :m]).astype(np.float32)

    def propose(self, ctx: Context, n: int, excluded: np.ndarray) -> Proposal:
        if n <= 0 or self.size == 0:
            return Proposal.empty()
        n_excluded = int(np.count_nonzero(excluded)) if ctx.n_excluded is None else ctx.n_excluded
        count = min(self.size, n + min(n_excluded, 4 * n))
        while True:
            keys, sims = self.search(ctx.user_embedding, count)
            keep = ~excluded[keys]
            keys, sims = keys[keep][:n], sims[keep][:n]
            if len(keys) == n or count >= self.size:
                return Proposal(keys, sims)
            count = min(self.size, 2 * count)
