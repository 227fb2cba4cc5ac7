"""Two-tower ANN: usearch HNSW over the item-tower embeddings, queried with the user embedding.

Excluded ids are filtered by adaptive over-fetch, not inside the graph walk: usearch's C++
core has a predicate-filtered search, but its Python binding (2.26) exposes only
`search_many(vectors, count, exact, threads, dtype)`, no filter callback (and a Python
callback per visited node would cost more than it saves). So the first search asks for
n + (excluded ids, capped at 4n), and if filtering still leaves fewer than n, the count is
doubled until n are found or the whole index was returned. A user who excluded a third of
the catalogue costs one search; the loop is for the adversarial case.

The search calls the compiled index directly (`Index._compiled.search_many`, what
`Index.search` calls after its checks), with threads=1 and a preallocated float32 query:
`Index.search` spends most of a small query in argument checks, a Matches wrapper and a
thread-pool dispatch for threads=0 (see bench/bench_candidate.py).
"""

from __future__ import annotations

import numpy as np
from usearch.compiled import ScalarKind
from usearch.index import Index

from candidate_svc.sources import TWO_TOWER, Context, Proposal


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
