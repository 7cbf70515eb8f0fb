"""Row-wise top-k with one deterministic tie rule, shared by metrics and every backend.

Ties are broken by the lower item index; rows with fewer than ``k`` eligible
items are padded with id -1 and score -inf (the ``Results`` convention of the
backends).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._checks import check_csr, check_k
from .errors import ElsaIndexError

__all__ = ["topk", "topk_unchecked"]

# Rows of a score block ranked at once: bounds the int64 temporary of
# argpartition to about 32 MB whatever the batch size.
_TOPK_CHUNK_ELEMENTS = 1 << 22


def topk(
    scores: np.ndarray,
    k: int,
    exclude: sp.spmatrix | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k items, best first.

    Parameters
    ----------
    scores : ndarray, shape (n_users, n_items), real dtype
        Higher is better. Not modified. NaN is not allowed.
    k : int >= 1
        Clipped to ``n_items``.
    exclude : sparse matrix, shape (n_users, n_items), optional
        Stored entries (of any value) are items masked out for that row,
        typically the user's history.

    Returns
    -------
    ids : ndarray of int64, shape (n_users, min(k, n_items))
    top_scores : ndarray of float32 or float64, shape (n_users, min(k, n_items))
        float32 for float32 (and smaller) input, float64 otherwise.

    Notes
    -----
    Ties are broken by the lower item index first, deterministically. When
    fewer than ``k`` items remain after exclusion, the row is padded with
    id -1 and score -inf (the ``Results`` convention of the backends).
    """
    scores = _as_score_matrix(scores, "scores")
    k = check_k(k, "k")
    excl = None
    if exclude is not None:
        excl = check_csr(exclude, "exclude")
        if excl.shape != scores.shape:
            raise ElsaIndexError(
                f"exclude must have the shape of scores {scores.shape}, got {excl.shape}"
            )
    if np.isnan(scores).any():
        raise ElsaIndexError("scores contain NaN; expected real numbers (use -inf to mask items)")
    return topk_unchecked(scores, k, excl, copy=True)


def topk_unchecked(
    scores: np.ndarray, k: int, exclude: sp.csr_matrix | None, *, copy: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``topk`` without validation, for callers that built ``scores`` themselves; writes into ``scores`` unless ``copy``."""
    n_rows, n_items = scores.shape
    k = min(k, n_items)
    if exclude is not None and exclude.nnz:
        if copy:
            scores = scores.copy()
        rows = np.repeat(np.arange(n_rows), np.diff(exclude.indptr))
        scores[rows, exclude.indices] = -np.inf
    ids = np.empty((n_rows, k), np.int64)
    chunk = max(1, _TOPK_CHUNK_ELEMENTS // max(n_items, 1))
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        ids[start:stop] = _topk_unsorted(scores[start:stop], k)
    top = np.take_along_axis(scores, ids, axis=1)
    # Sort by score descending, then by item index ascending.
    order = np.lexsort((ids, -top), axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    top = np.take_along_axis(top, order, axis=1)
    if exclude is not None and exclude.nnz:
        _pad_excluded(ids, top, exclude)
    return ids, top


def _topk_unsorted(block: np.ndarray, k: int) -> np.ndarray:
    """The set of top-k column indices per row (ties: lowest indices), unsorted."""
    n_rows, n_items = block.shape
    if k == n_items:
        return np.broadcast_to(np.arange(n_items, dtype=np.int64), (n_rows, n_items))
    part = np.argpartition(block, n_items - k, axis=1)[:, n_items - k :]
    kth = np.take_along_axis(block, part, axis=1).min(axis=1)
    # argpartition picks an arbitrary subset of the items tied at the k-th
    # value; redo the rows where such a tie crosses the cut.
    crowded = np.nonzero((block >= kth[:, None]).sum(axis=1) > k)[0]
    for r in crowded:
        row, v = block[r], kth[r]
        above = np.flatnonzero(row > v)
        tied = np.flatnonzero(row == v)[: k - len(above)]
        part[r] = np.concatenate([above, tied])
    return part.astype(np.int64, copy=False)


def _pad_excluded(ids: np.ndarray, top: np.ndarray, exclude: sp.csr_matrix) -> None:
    """Replace excluded items that still made the top-k by (-1, -inf), in place."""
    for r in np.nonzero(np.isneginf(top[:, -1]))[0]:
        masked = exclude.indices[exclude.indptr[r] : exclude.indptr[r + 1]]
        bad = np.isneginf(top[r]) & np.isin(ids[r], masked)
        ids[r, bad] = -1


def _as_score_matrix(scores, name: str) -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != 2:
        raise ElsaIndexError(f"{name} must be 2-D (n_users, n_items), got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ElsaIndexError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize >= 4:
        return arr
    return arr.astype(np.float32 if arr.dtype.kind == "f" else np.float64)
