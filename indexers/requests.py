"""What goes in and out of every backend's search: query, exclusion and candidate checks, and ``Results``.

:class:`~elsa_index.indexers.base.Backend` calls these on every request, so
each backend's private search steps receive validated input, and
:func:`finish` applies the shared output rules (exclusions dropped, top-k
kept, rows padded with id -1 / score -inf).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from elsa_index._io import load_csr
from elsa_index.errors import BackendError

__all__ = ["Results", "check_queries", "check_exclude", "check_candidates", "finish", "padded", "ranked", "rerank_rows", "load_rerank_rows",
           "query_entries", "prune"]


class Results(NamedTuple):
    """Top-k results: ``ids`` int64 and ``scores`` float32, both (n_queries, k).

    Rows are sorted by descending score; missing results are id -1, score -inf.
    """

    ids: np.ndarray
    scores: np.ndarray


def check_queries(queries, dims: int):
    """Validated queries: float32 CSR (indices sorted) or 2-D float32 ndarray of ``dims`` columns; raises BackendError."""
    if sp.issparse(queries):
        if queries.dtype.kind not in "biuf":
            raise BackendError(f"queries must hold real numbers; got a sparse matrix of dtype {queries.dtype}")
        # float32 CSR is used as it is (no new matrix: its checks cost ~20 us, much of a small index's search)
        Q = queries if isinstance(queries, sp.csr_matrix) and queries.dtype == np.float32 else \
            sp.csr_matrix(queries, dtype=np.float32)
        if not Q.has_sorted_indices:  # one summation order (ascending dims) for every exact score
            Q = Q.sorted_indices()
    else:
        try:
            Q = np.asarray(queries)
            if Q.dtype.kind not in "biufO" or (Q.dtype.kind == "O" and Q.size
                                              and any(isinstance(v, complex) for v in Q.ravel().tolist())):
                raise TypeError(f"dtype {Q.dtype}")
            Q = Q.astype(np.float32)
        except (TypeError, ValueError) as exc:
            raise BackendError(f"queries must be real numbers (a 2-D float array or a scipy sparse matrix); "
                               f"cannot use them: {exc}") from None
        if Q.ndim == 1:
            Q = Q[None, :]
        if Q.ndim != 2:
            raise BackendError(f"queries must be a 2-D (n_queries, dims) array, got shape {Q.shape}")
    if Q.shape[1] != dims:
        raise BackendError(f"queries have {Q.shape[1]} dims; the index was built with {dims}-dim embeddings")
    data = Q.data if sp.issparse(Q) else Q
    if data.size and not np.isfinite(data).all():
        raise BackendError("queries contain NaN or inf values; expected finite vectors")
    return Q


def check_exclude(exclude, n: int, n_items: int):
    """Validated exclusions of ``n`` queries as CSR (n, n_items), or None; raises BackendError."""
    if exclude is None:
        return None
    if sp.issparse(exclude):
        # A CSR matrix is used as it is (only read); other formats are converted.
        ex = exclude if isinstance(exclude, sp.csr_matrix) else sp.csr_matrix(exclude)
        if ex.shape != (n, n_items):
            raise BackendError(f"exclude has shape {ex.shape}; expected ({n}, {n_items})")
        return ex
    if len(exclude) != n:
        raise BackendError(f"exclude has {len(exclude)} rows for {n} queries; expected one per query")
    rows = []
    for r, e in enumerate(exclude):
        try:
            a = np.asarray(e).ravel()
        except (TypeError, ValueError) as exc:
            raise BackendError(f"exclude row {r} is not an array of item indices: {exc}") from None
        if a.size and a.dtype.kind not in "iu":
            raise BackendError(f"exclude row {r} holds {a.dtype} values; expected integer item indices "
                               f"in [0, {n_items})")
        rows.append(a.astype(np.int64))
    lens = [len(r) for r in rows]
    cols = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if len(cols) and (cols.min() < 0 or cols.max() >= n_items):
        raise BackendError(f"exclude holds item indices outside [0, {n_items})")
    indptr = np.concatenate([[0], np.cumsum(lens)])
    ex = sp.csr_matrix((np.ones(len(cols), bool), cols, indptr), shape=(n, n_items))
    return ex


def check_candidates(candidates, n_items: int) -> np.ndarray:
    """Validated candidate item rows: sorted unique int64 in ``[0, n_items)``; raises BackendError."""
    try:
        cand = np.asarray(candidates)
    except (TypeError, ValueError):  # e.g. ragged per-query lists
        raise BackendError("candidates must be a 1-D array of integer item indices, the same for every query; "
                           "got a ragged sequence") from None
    if cand.ndim != 1 or (cand.size and cand.dtype.kind not in "iu"):
        raise BackendError(
            f"candidates must be a 1-D array of integer item indices, got {cand.dtype} of shape {cand.shape}")
    cand = np.unique(cand.astype(np.int64, copy=False))
    if len(cand) and (cand[0] < 0 or cand[-1] >= n_items):
        raise BackendError(f"candidates hold item indices outside [0, {n_items})")
    return cand


def _check_scores_finite(ids: np.ndarray, scores: np.ndarray) -> None:
    """Refuse results where a real item got a non-finite score (float32 overflow of huge query values)."""
    if not np.isfinite(scores[ids >= 0]).all():
        raise BackendError("scores overflow float32 (a query's values are too large for its inner products to be "
                           "represented); scale the query vectors down")


def finish(ids: np.ndarray, scores: np.ndarray, exclude, k: int) -> Results:
    """Drop excluded ids, keep the top k, pad to width k with -1 / -inf.

    ``ids`` and ``scores`` are a backend's rows, sorted by descending score
    (padding last); dropping entries keeps the order of the others.
    """
    n = ids.shape[0]
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    _check_scores_finite(ids, scores)
    if exclude is not None and exclude.nnz:
        bad = _excluded(ids, exclude.tocsr())
        if bad.any():
            ids = np.where(bad, -1, ids)
            scores = np.where(bad, np.float32(-np.inf), scores)
            # The kept entries first, in their order (a stable sort of a bool key), the dropped ones after them.
            order = np.argsort(bad, axis=1, kind="stable")
            ids = np.take_along_axis(ids, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
    out_ids = np.full((n, k), -1, np.int64)
    out_scores = np.full((n, k), -np.inf, np.float32)
    w = min(k, ids.shape[1])
    out_ids[:, :w] = ids[:, :w]
    out_scores[:, :w] = scores[:, :w]
    out_ids[~np.isfinite(out_scores)] = -1
    return Results(out_ids, out_scores)


def padded(ids: np.ndarray, scores: np.ndarray, k: int) -> Results:
    """Rows that are already final (exclusions dropped, best first, missing entries -1 / -inf), padded to width k.

    For a backend that skips excluded items in its own search; scores are
    checked as :func:`finish` checks them.
    """
    _check_scores_finite(ids, scores)
    n, w = ids.shape
    if w >= k:
        return Results(ids[:, :k], scores[:, :k])
    out = Results(np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32))
    out.ids[:, :w], out.scores[:, :w] = ids, scores
    return out


def _excluded(ids: np.ndarray, ex: sp.csr_matrix) -> np.ndarray:
    """bool (n, w): whether ``ids[r, c]`` is a stored column of row r of ``ex`` (one sorted search for all rows)."""
    n, n_items = ex.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(ex.indptr))
    keys = np.sort(rows * n_items + ex.indices.astype(np.int64))
    probe = np.arange(n, dtype=np.int64)[:, None] * n_items + ids
    pos = np.minimum(np.searchsorted(keys, probe), len(keys) - 1)
    return (keys[pos] == probe) & (ids >= 0)


def ranked(cand: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of candidates ``cand`` by exact ``scores``: ``(ids int64, float32 scores)``, padded to k with
    -1 / -inf; ranked on the float32 scores, ties to the lower item index (the package's tie rule)."""
    s = np.asarray(scores, dtype=np.float32)
    order = np.lexsort((cand, -s))[:k]
    ids = np.full(k, -1, np.int64)
    out = np.full(k, -np.inf, np.float32)
    ids[: len(order)], out[: len(order)] = cand[order], s[order]
    return ids, out


def rerank_rows(embeddings) -> sp.csr_matrix:
    """Item rows for an exact re-rank of candidates, as float32 CSR (sharing the given arrays when they already are)."""
    return sp.csr_matrix(embeddings, dtype=np.float32, copy=False)


def load_rerank_rows(directory, checkpoint, shape: tuple[int, int], *, mmap: bool = False) -> sp.csr_matrix:
    """The re-rank rows of a loaded backend directory: the given checkpoint's (inside an index directory, one
    copy of the rows serves both; its fingerprint was checked), else the directory's own ``embeddings_*`` CSR."""
    if checkpoint is not None:
        if not checkpoint.sparse or checkpoint.embeddings.shape != shape:
            raise BackendError(f"{directory}: the checkpoint given is not a sparse {shape} one")
        return rerank_rows(checkpoint.embeddings)
    return load_csr(directory, "embeddings_", shape, BackendError, mmap=mmap)


def query_entries(queries, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Dims (ascending) and float64 values of the non-zero entries of query row ``r`` (CSR or ndarray)."""
    if sp.issparse(queries):
        a, b = queries.indptr[r], queries.indptr[r + 1]
        dims, vals = queries.indices[a:b], queries.data[a:b]
    else:
        row = queries[r]
        dims = np.flatnonzero(row)
        vals = row[dims]
    keep = vals != 0
    return dims[keep], vals[keep].astype(np.float64)


def prune(dims: np.ndarray, vals: np.ndarray, m: int | None, mass: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The entries of largest ``|value|`` a backend sends to its index: a share ``mass`` of the total ``|value|``, at most ``m``.

    The entries are taken in order of decreasing ``|value|`` (equal values:
    lower dimension first) until their ``|value|`` sum reaches ``mass`` times
    the sum over all entries; ``mass=1`` keeps all of them. At most ``m``
    entries are kept (``m=None``: no cap). Dims and values come back in that
    order (largest first).
    """
    n = len(dims)
    if n == 0 or (mass >= 1.0 and (m is None or n <= m)):
        return dims, vals
    w = np.abs(vals)
    order = np.argsort(-w, kind="stable")
    keep = n
    if mass < 1.0:
        # The first position whose running sum reaches the share (the running sums never decrease).
        keep = min(n, int(np.searchsorted(np.cumsum(w[order]), mass * float(w.sum()), side="left")) + 1)
    if m is not None:
        keep = min(keep, m)
    top = order[:keep]
    return dims[top], vals[top]
