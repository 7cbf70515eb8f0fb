"""Exact in-process backend: inner products with scipy, the reference for every other backend.

Sparse checkpoints are stored as an inverted index (``Eᵀ`` in CSR: one
posting list of (item, value) per dimension), so a sparse query touches only
the postings of its active dimensions; sparse queries are scored by a
compiled term-at-a-time kernel (``_kernels``, numba) with one accumulator per
thread, dense queries by a sparse-dense product. Dense checkpoints are scored with a
dense matrix product. Signed values, no approximation; ties are broken by
the lower item index.

Thread safety: searches only read the arrays; concurrent calls are safe.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from elsa_index._checks import check_int
from elsa_index._io import load_array, load_csr, save_array, save_csr
from elsa_index.errors import BackendError
from elsa_index.topk import topk_unchecked

from . import _kernels
from .base import Backend

__all__ = ["ExactSparse"]


class ExactSparse(Backend):
    """Exact top-k by inner product over sparse (or dense) item embeddings.

    Search parameters
    -----------------
    batch_size : queries scored at once (bounds memory to batch_size x n_items floats).
    """

    name = "sparse"
    accepts = "any"
    exact = True
    search_params = {"batch_size": 256}
    param_docs = {"batch_size": "queries scored at once by the matrix-product path (bounds memory to "
                                "batch_size x n_items floats)"}

    @classmethod
    def touched_bytes(cls, info: dict, search_params: dict, k: int, posting, n_queries: int):
        """Sparse checkpoints: the postings of the query's dims (8 B each); dense: every vector (n x dims x 4 B)."""
        if posting is not None:
            return np.asarray(posting, dtype=np.float64), "postings of the query's dims x 8 B"
        n_items, dims = int(info.get("n_items") or 0), int(info.get("dims") or 0)
        return np.full(n_queries, float(n_items) * dims * 4), "all vectors (n x dims x 4 B)"

    def __init__(self, **params):
        super().__init__(**params)
        self._local = threading.local()

    def _check_params(self) -> None:
        check_int(self._search_params["batch_size"], "batch_size", 1, error=BackendError)

    def _build(self, embeddings, *, progress: bool) -> None:
        if sp.issparse(embeddings):
            # Postings: row d of Eᵀ lists the items active in dimension d.
            self.postings_ = sp.csr_matrix(embeddings.T, dtype=np.float32)
            self.postings_.sort_indices()
            self.dense_ = None
        else:
            self.postings_ = None
            self.dense_ = np.ascontiguousarray(embeddings, dtype=np.float32)

    def _scores(self, Q) -> np.ndarray:
        if self.postings_ is not None:
            if sp.issparse(Q):
                S = Q @ self.postings_  # sparse x sparse: only the query's posting lists
                return S.toarray()
            return np.asarray((self.postings_.T @ Q.T).T, dtype=np.float32)
        if sp.issparse(Q):
            return np.asarray(Q @ self.dense_.T, dtype=np.float32)
        return Q @ self.dense_.T

    def _search(self, queries, k: int):
        if self.postings_ is not None and sp.issparse(queries) and _kernels.HAVE_NUMBA:
            # Compiled term-at-a-time scoring with a per-thread accumulator.
            acc = getattr(self._local, "acc", None)
            if acc is None or acc.shape[0] != self.n_items_:
                acc = self._local.acc = np.zeros(self.n_items_, np.float32)
            return _kernels.sparse_topk(self.postings_, queries, k, acc)
        n = queries.shape[0]
        ids = np.empty((n, k), np.int64)
        scores = np.empty((n, k), np.float32)
        step = int(self._search_params["batch_size"])
        for start in range(0, n, step):
            stop = min(n, start + step)
            S = np.asarray(self._scores(queries[start:stop]), dtype=np.float32)
            ids[start:stop], scores[start:stop] = topk_unchecked(S, k, None, copy=False)
        return ids, scores

    def _save(self, directory: Path, *, with_embeddings: bool = True) -> None:
        if self.postings_ is not None:
            save_csr(directory, "postings_", self.postings_)
        elif with_embeddings:
            save_array(directory / "embeddings.npy", self.dense_)
        # else: a dense index inside an index directory scores with its checkpoint's array.

    def _load(self, directory: Path, *, checkpoint=None, mmap: bool = False) -> None:
        shape = (self.n_items_, self.dims_)
        if (directory / "postings_data.npy").exists():
            # Eᵀ: one row (posting list) per dimension; memory-mapped arrays work with the kernel as they are.
            self.postings_ = load_csr(directory, "postings_", (self.dims_, self.n_items_), BackendError, mmap=mmap)
            self.dense_ = None
            return
        if (directory / "embeddings.npy").exists():
            dense = load_array(directory / "embeddings.npy", BackendError, mmap=mmap)
        elif checkpoint is not None and not checkpoint.sparse:
            dense = checkpoint.embeddings
        else:
            raise BackendError(f"{directory} holds neither postings_*.npy nor embeddings.npy; "
                               "expected a directory written by the 'sparse' backend")
        if dense.shape != shape or dense.dtype != np.float32:
            raise BackendError(f"{directory}: embeddings have {dense.dtype} {dense.shape}, expected float32 {shape}")
        if dense.size and not np.isfinite(dense).all():
            raise BackendError(f"{directory}: embeddings contain NaN or inf values; expected finite weights")
        self.postings_ = None
        self.dense_ = dense
