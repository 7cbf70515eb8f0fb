"""What the modules of ``elsa_index.segments`` share: opening a source, the user vector, exact scores.

Private to the package. The exact score of item j for a history is
``u·a_j`` with ``u = x·A`` computed in float32 by scipy with the dimensions of
``u`` in ascending order; every row of the page and every explanation is
ranked by these scores (ties: lower item index), whatever backend proposed the
candidates, so all backends give the same rows.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..checkpoint import Checkpoint
from ..errors import SegmentError, UnknownItemsWarning


def open_source(source) -> tuple:
    """``(index or None, checkpoint)`` of an Index, a sparse Checkpoint, or a directory of either.

    Parameters
    ----------
    source : an :class:`~elsa_index.search.Index`, a
        :class:`~elsa_index.checkpoint.Checkpoint`, or the path of an index
        directory (it holds ``index.json``) or a checkpoint directory.

    Raises
    ------
    SegmentError
        ``source`` is none of these, or its embeddings are dense.
    """
    from ..search import Index, open_index

    if isinstance(source, Index):
        index, ckpt, what = source, source.checkpoint, "this index"
    elif isinstance(source, Checkpoint):
        index, ckpt, what = None, source, "this checkpoint"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if (path / "index.json").is_file():
            index = open_index(path)
            ckpt = index.checkpoint
        else:
            index, ckpt = None, Checkpoint.load(path)
        what = str(source)
    else:
        raise SegmentError(f"expected a Checkpoint, an Index or a directory of either, got {type(source).__name__}")
    require_sparse(ckpt, what)
    return index, ckpt


def require_sparse(ckpt: Checkpoint, what: str = "this checkpoint") -> None:
    if not ckpt.sparse:
        raise SegmentError(
            f"segments need sparse embeddings (the inverted index of a Compressed ELSA checkpoint), but {what} holds "
            f"dense embeddings ({ckpt.kind}, {ckpt.dims} dims, every entry active); use a sparse checkpoint"
        )


def history_indices(ckpt: Checkpoint, history_ids: Sequence[str]) -> np.ndarray:
    """Sorted unique row indices of the known ids; unknown ids are dropped with an UnknownItemsWarning."""
    if isinstance(history_ids, (str, bytes)) or not isinstance(history_ids, (Sequence, np.ndarray)):
        raise SegmentError(f"history_ids must be a list of item ids, got {type(history_ids).__name__}")
    ids = list(history_ids)
    idx = ckpt.item_ids.index(ids, missing="ignore")
    if (idx < 0).any():
        unknown = [str(v) for v, i in zip(ids, idx) if i < 0]
        warnings.warn(f"{len(unknown)} history item id(s) are not in the catalogue and were ignored, e.g. "
                      f"{unknown[:5]}", UnknownItemsWarning, stacklevel=3)
    return np.unique(idx[idx >= 0])


def history_matrix(ckpt: Checkpoint, hist: np.ndarray) -> sp.csr_matrix:
    """Binary CSR (1, n_items) float32 of one history."""
    return sp.csr_matrix((np.ones(len(hist), np.float32), (np.zeros(len(hist), np.int64), hist)),
                         shape=(1, ckpt.n_items))


def user_vector(ckpt: Checkpoint, hist: np.ndarray) -> sp.csr_matrix:
    """``u = x·A`` as a sparse (1, dims) float32 row, dimensions ascending."""
    u = sp.csr_matrix(history_matrix(ckpt, hist) @ ckpt.embeddings, dtype=np.float32)
    u.eliminate_zeros()
    u.sort_indices()
    return u


def exact_scores(ckpt: Checkpoint, u: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
    """float32 ``u·a_j`` of the given items (scipy, float32, summed in the order of u's dimensions)."""
    items = np.asarray(items, dtype=np.int64)
    if not len(items):
        return np.zeros(0, np.float32)
    return np.asarray((u @ ckpt.embeddings[items].T).todense(), dtype=np.float32).ravel()


def take_top(cand: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The k candidates with the highest ``scores`` (aligned with ``cand``); ties: lower index first."""
    cand = np.asarray(cand, dtype=np.int64)
    order = np.lexsort((cand, -np.asarray(scores)))
    return cand[order[:k]]
