"""What the modules of ``elsa_index.segments`` share: opening a source, a history, the user vector.

Private to the package. The score of item j for a history is ``u·a_j`` with
``u = x·A``, computed in the one summation order of
:mod:`elsa_index.scoring` by every exact path (the ``sparse`` backend's
kernel, :meth:`~elsa_index.checkpoint.Checkpoint.score_candidates`, Lucene's
re-rank); rows and explanations are ranked by it with ties to the lower item
index, so all exact paths give the same rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from ..checkpoint import Checkpoint
from ..errors import SegmentError
from ..search import Index, open_index


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


def user_history(ckpt: Checkpoint, history_ids: Sequence[str], *, stacklevel: int = 3) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(X, hist)`` of one history: binary float32 CSR (1, n_items) and its sorted unique item rows.

    Unknown ids are dropped with an :class:`~elsa_index.errors.UnknownItemsWarning`
    (:meth:`~elsa_index.checkpoint.Checkpoint.histories_to_matrix`; ``stacklevel``
    is passed on: 3 points at the caller of the public function calling this).

    Raises
    ------
    SegmentError
        ``history_ids`` is not a list of ids (e.g. one string).
    """
    if isinstance(history_ids, (str, bytes)) or not isinstance(history_ids, (Sequence, np.ndarray)):
        raise SegmentError(f"history_ids must be a list of item ids, got {type(history_ids).__name__}")
    X = ckpt.histories_to_matrix([list(history_ids)], stacklevel=stacklevel)[0]
    if not X.has_sorted_indices:
        X = X.sorted_indices()
    return X, X.indices.astype(np.int64)


def user_vector(ckpt: Checkpoint, X: sp.csr_matrix) -> sp.csr_matrix:
    """``u = x·A`` of a (1, n_items) history matrix, as a sparse (1, dims) float32 row, dimensions ascending."""
    u = sp.csr_matrix(X @ ckpt.embeddings, dtype=np.float32)
    u.eliminate_zeros()
    u.sort_indices()
    return u


def take_top(cand: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The k candidates with the highest ``scores`` (aligned with ``cand``); ties: lower index first."""
    cand = np.asarray(cand, dtype=np.int64)
    order = np.lexsort((cand, -np.asarray(scores)))
    return cand[order[:k]]
