"""Exact scores of candidate items: the one implementation every re-rank and allow-list uses.

One summation order for sparse embeddings: the score of item j for query u
is the float32 sum, from 0, of the float32 products ``a_jd * u_d`` over the
item's stored entries in ascending dimension order. The exact sparse
backend's kernel (``elsa_index.indexers._kernels``) adds the same products
in the same order, so exact scores are bit-identical whichever path computes
them, and with one tie rule (lower item index first) so are the rankings.
"""

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
    dtype : dtype of the result. Sparse ``E``: float32 sums in the shared
        order (see the module), converted to ``dtype``; dense ``E``: float64
        sums (no kernel to agree with), rounded to ``dtype``.

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
    low = int(cand.min()) if cand.size else 0
    if cand.size and (low < -1 or cand.max() >= n_items):
        raise ValueError(f"candidates hold item rows outside [-1, {n_items})")
    out = np.full(cand.shape, -np.inf, np.float64 if not sp.issparse(E) else np.float32)
    block = max(1, 4_000_000 // max(dims, 1))  # queries densified at once
    for start in range(0, Q.shape[0], block):
        Qb = Q if Q.shape[0] <= block else Q[start : start + block]  # slicing a sparse matrix costs ~30 us
        Qb = Qb.toarray() if sp.issparse(Qb) else Qb
        cb = cand[start : start + block]
        if low >= 0:  # no padding (the usual re-rank): every entry, row by row, without a mask
            rr, cc = np.repeat(np.arange(cb.shape[0]), cb.shape[1]), None
            items = cb.ravel()
        else:
            rr, cc = np.nonzero(cb >= 0)
            items = cb[rr, cc]
        if sp.issparse(E):
            vals = _sparse_sums(E, np.asarray(Qb, dtype=np.float32), rr, items)
        else:
            vals = np.einsum("ij,ij->i", E[items].astype(np.float64), np.asarray(Qb, dtype=np.float64)[rr])
        if cc is None:
            out[start : start + cb.shape[0]] = vals.reshape(cb.shape)
        else:
            out[start + rr, cc] = vals
    return out.astype(dtype, copy=False)


def _sparse_sums(E, Qb: np.ndarray, rr: np.ndarray, items: np.ndarray) -> np.ndarray:
    """float32 ``Qb[rr[i]] · E[items[i]]``, summed sequentially in each row's stored order (the shared order)."""
    from elsa_index.indexers._kernels import row_sums  # numba: loaded by the first sparse re-rank only

    if not E.has_sorted_indices:  # never sorts the caller's matrix in place
        E = E.sorted_indices()
    return row_sums(E, np.ascontiguousarray(Qb, dtype=np.float32), rr.astype(np.int64, copy=False),
                    items.astype(np.int64, copy=False))
