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

A small catalogue is scanned instead (`scan_per_result`): a graph walk for `count`
results visits on the order of count x 2M nodes, so once the catalogue is within a few
dozen times the count, one BLAS pass over every item vector plus a heap top-k
(kernels.top_k_masked, which skips excluded items during the pass: no over-fetch) costs
less and is exact. Measured on this machine (bench/bench_candidate.py --scan, p50 per query,
M=16): 254 results of 1,500 items, walk 114 us / scan 92 us; of 10,000 items, 186 / 155;
of 20,000, 174 / 213. 64 results of 1,500 items, 34 / 28; of 3,000, 40 / 44. Hence
scanning up to 40 items per result asked for.
"""

from __future__ import annotations

import numpy as np
from numba import cfunc, types
from usearch.compiled import MetricKind, MetricSignature, ScalarKind
from usearch.index import CompiledMetric, Index

import kernels
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


# Scan when the catalogue holds at most this many items per result asked for (measured
# crossover, see the module docstring); 0 = always walk the graph.
SCAN_PER_RESULT = 40

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

    def __init__(self, index: Index, vectors: np.ndarray | None = None, inner_product: bool = False,
                 scan_per_result: int = SCAN_PER_RESULT) -> None:
        """`vectors`: the indexed item vectors, row = key (the bundle's item embeddings);
        with them, a small enough catalogue is scanned exactly instead of walked, by the
        similarity the search returns: the dot product when `inner_product` (what
        `prefer_inner_product` returned), else the index's cosine. Other metrics never scan.
        The scan reads the float32 vectors, not the index's copies: on an f16 / bf16 / i8
        index its scores are the exact ones (a walk's differ by the quantisation, ~1e-3 for
        f16, ~1e-2 for i8), so near-ties may order differently from a walk's."""
        self.index = index
        self.size = len(index)
        self._search = index._compiled.search_many  # see the module docstring
        self.scan_per_result = scan_per_result
        self.vectors: np.ndarray | None = None
        self._inv_norms: np.ndarray | None = None  # None: scan by dot
        if vectors is not None and scan_per_result > 0 and (inner_product or index.metric_kind == MetricKind.Cos):
            if vectors.shape != (self.size, index.ndim):
                raise ValueError(f"vectors: shape {vectors.shape}, the index holds {self.size} x {index.ndim}")
            self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if not inner_product:
                norms = np.linalg.norm(self.vectors, axis=1)
                self._inv_norms = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(np.float32)

    def scans(self, count: int) -> bool:
        """Whether a search for `count` results scans every item instead of walking."""
        return self.vectors is not None and self.size <= self.scan_per_result * count

    def search(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys int64[m], cosine float32[m]) of the `count` nearest items, best first."""
        if self.scans(count):
            return self._scan(query, count, None)
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        # Asking for the whole index: search exactly. An HNSW walk does not promise to reach
        # every node (a test saw 39 of 40), and a full scan costs what returning all does.
        exact = count >= self.size
        keys, dist, counts, _, _ = self._search(q, count=count, exact=exact, threads=1, dtype=ScalarKind.F32)
        m = int(counts[0])
        return keys[0, :m].astype(np.int64), (1.0 - dist[0, :m]).astype(np.float32)

    def _scan(self, query: np.ndarray, count: int, excluded: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if excluded is not None and len(excluded) != self.size:  # the kernel reads it unchecked
            raise ValueError(f"excluded: {len(excluded)} flags for {self.size} items")
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        sims = self.vectors @ q
        if self._inv_norms is not None:
            qn = float(np.linalg.norm(q))
            sims *= self._inv_norms * (np.float32(1.0 / qn) if qn > 0 else np.float32(0.0))
        if excluded is None:
            keys = kernels.top_k(sims, count)
        else:
            keys = kernels.top_k_masked(sims, excluded, count)
        return keys, sims[keys]

    def propose(self, ctx: Context, n: int, excluded: np.ndarray) -> Proposal:
        if n <= 0 or self.size == 0:
            return Proposal.empty()
        n_excluded = int(np.count_nonzero(excluded)) if ctx.n_excluded is None else ctx.n_excluded
        count = min(self.size, n + min(n_excluded, 4 * n))
        if self.scans(count):  # excluded items skipped during the one pass: no over-fetch, no retry
            return Proposal(*self._scan(ctx.user_embedding, n, excluded))
        while True:
            keys, sims = self.search(ctx.user_embedding, count)
            keep = ~excluded[keys]
            keys, sims = keys[keep][:n], sims[keep][:n]
            if len(keys) == n or count >= self.size:
                return Proposal(keys, sims)
            count = min(self.size, 2 * count)
