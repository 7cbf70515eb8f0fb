"""Exact scores of candidate items: the one implementation every re-rank and allow-list uses."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["score_rows"]


def score_rows(E, queries, candidates, dtype=np.float32) -> np.ndarray:
    """Exact inner products of each query with its own candidate rows of ``E``.

    Parameters
    ----------
    E : item embeddings, scipy CSR (n_items, dims) or ndarray (n_items, dims).
    queries : ndarray (n, dims) or scipy sparse (n, dims), or one 1-D vector.
    candidates : int array (n, c) of item rows per query (one 1-D array for
        one query); ``-1`` marks padding.
    dtype : dtype of the result; the sums are taken in float64 (the stored
        entries of a row in their order) whatever ``dtype``.

    Returns
    -------
    ndarray ``dtype`` (n, c): ``queries[r] · E[j]`` for each candidate ``j`` of
    row ``r``; ``-inf`` where the candidate is ``-1``.

    Raises
    ------
    ValueError
        Shapes that do not fit, or candidates outside ``[-1, n_items)``.
    """
    n_items, dims = E.shape
    Q = queries if sp.issparse(queries) else np.asarray(queries)
    if Q.ndim == 1:
        Q = Q[None, :]
    cand = np.asarray(candidates)
    if cand.ndim == 1:
        cand = cand[None, :]
    if Q.ndim != 2 or Q.shape[1] != dims:
        raise ValueError(f"queries must have shape (n, {dims}), got {Q.shape}")
    if cand.ndim != 2 or cand.shape[0] != Q.shape[0] or (cand.size and cand.dtype.kind not in "iu"):
        raise ValueError(
            f"candidates must be an integer array of shape ({Q.shape[0]}, c), got {cand.dtype} {cand.shape}")
    cand = cand.astype(np.int64, copy=False)
    if cand.size and (cand.min() < -1 or cand.max() >= n_items):
        raise ValueError(f"candidates hold item rows outside [-1, {n_items})")
    out = np.full(cand.shape, -np.inf, np.float64)
    block = max(1, 4_000_000 // max(dims, 1))  # queries densified at once (float64)
    for start in range(0, Q.shape[0], block):
        Qb = Q[start : start + block]
        Qb = Qb.toarray() if sp.issparse(Qb) else Qb
        Qb = np.asarray(Qb, dtype=np.float64)
        rr, cc = np.nonzero(cand[start : start + block] >= 0)
        items = cand[start + rr, cc]
        if sp.issparse(E):
            # Gather the candidates' stored entries (CSR rows) and sum their products per candidate.
            starts = E.indptr[items]
            lens = E.indptr[items + 1] - starts
            first = np.cumsum(lens) - lens
            pos = np.repeat(starts - first, lens) + np.arange(int(lens.sum()))
            prod = E.data[pos].astype(np.float64) * Qb[np.repeat(rr, lens), E.indices[pos]]
            vals = np.bincount(np.repeat(np.arange(len(items)), lens), weights=prod, minlength=len(items))
        else:
            vals = np.einsum("ij,ij->i", E[items].astype(np.float64), Qb[rr])
        out[start + rr, cc] = vals
    return out.astype(dtype, copy=False)
