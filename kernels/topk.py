"""Top-k selection over a score vector.

Order: higher score first, NaN after every number (including -inf), ties (and NaN among
themselves) by the lower position. -0.0 and 0.0 tie. The Numba kernels keep a size-k heap
whose root is the kept position that ranks last: O(n log k), no full sort.
"""

import numpy as np
from numba import njit


@njit(cache=True)
def _ranks_before(scores, a, b):
    # a before b  <=>  (isnan_a, -s_a, a) < (isnan_b, -s_b, b) lexicographically
    s_a = scores[a]
    s_b = scores[b]
    if np.isnan(s_a):
        return np.isnan(s_b) and a < b
    if np.isnan(s_b):
        return True
    if s_a != s_b:
        return s_a > s_b
    return a < b


@njit(cache=True)
def _sift_up(heap, pos, scores):
    # restore "every parent ranks after its children" from a new leaf at pos
    while pos > 0:
        parent = (pos - 1) >> 1
        if not _ranks_before(scores, heap[parent], heap[pos]):
            return
        heap[parent], heap[pos] = heap[pos], heap[parent]
        pos = parent


@njit(cache=True)
def _sift_down(heap, size, pos, scores):
    # restore the heap order below pos after its entry was replaced
    while True:
        last = pos
        left = 2 * pos + 1
        right = left + 1
        if left < size and _ranks_before(scores, heap[last], heap[left]):
            last = left
        if right < size and _ranks_before(scores, heap[last], heap[right]):
            last = right
        if last == pos:
            return
        heap[last], heap[pos] = heap[pos], heap[last]
        pos = last


@njit(cache=True)
def _offer(heap, size, scores, j):
    # keep j if the heap has room or j ranks before the worst kept position; returns new size
    if size < heap.shape[0]:
        heap[size] = j
        _sift_up(heap, size, scores)
        return size + 1
    if _ranks_before(scores, j, heap[0]):
        heap[0] = j
        _sift_down(heap, size, 0, scores)
    return size


@njit(cache=True)
def _drain(heap, size, scores):
    # heap sort: repeatedly move the worst kept position to the back
    order = np.empty(size, dtype=np.int64)
    for end in range(size - 1, -1, -1):
        order[end] = heap[0]
        heap[0] = heap[end]
        _sift_down(heap, end, 0, scores)
    return order


@njit(cache=True)
def top_k(scores, k):
    # argsort by (isnan, -score, index), first min(k, n)
    n = scores.shape[0]
    heap = np.empty(min(max(k, 0), n), dtype=np.int64)
    size = 0
    if heap.shape[0] == 0:
        return heap
    for j in range(n):
        # full heap: a score below the worst kept one cannot get in (one compare; a NaN on
        # either side is False here and takes the full test in _offer)
        if size == heap.shape[0] and scores[j] < scores[heap[0]]:
            continue
        size = _offer(heap, size, scores, j)
    return _drain(heap, size, scores)


@njit(cache=True)
def top_k_masked(scores, excluded, k):
    # top_k over the positions j with excluded[j] False
    n = scores.shape[0]
    heap = np.empty(min(max(k, 0), n), dtype=np.int64)
    size = 0
    if heap.shape[0] == 0:
        return heap
    for j in range(n):
        if excluded[j] or (size == heap.shape[0] and scores[j] < scores[heap[0]]):  # as in top_k
            continue
        size = _offer(heap, size, scores, j)
    return _drain(heap, size, scores)


def top_k_numpy(scores: np.ndarray, k: int) -> np.ndarray:
    """NumPy twin of `top_k`: partition to a threshold, then stable-sort the survivors."""
    n = scores.shape[0]
    k = min(max(k, 0), n)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    neg = -scores  # ascending neg = descending score; NumPy sorts NaN last
    candidates = np.arange(n, dtype=np.int64)
    if k < n:
        kth = np.partition(neg, k - 1)[k - 1]
        if not np.isnan(kth):
            # every position tied with the k-th survives, so ties resolve by position below
            candidates = np.flatnonzero(neg <= kth).astype(np.int64)
    order = np.lexsort((candidates, neg[candidates]))
    return candidates[order[:k]]


def top_k_masked_numpy(scores: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    """NumPy twin of `top_k_masked`."""
    kept = np.flatnonzero(~excluded).astype(np.int64)
    return kept[top_k_numpy(scores[kept], k)]
