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

from elsa_index._io import load_array, save_array
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

    def __init__(self, **params):
        super().__init__(**params)
        self._local = threading.local()

    def _check_params(self) -> None:
        b = self._search_params["batch_size"]
        if not isinstance(b, (int, np.integer)) or b <= 0:
            raise BackendError(f"batch_size must be a positive integer, got {b!r}")

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

    def _save(self, directory: Path) -> None:
        if self.postings_ is not None:
            p = self.postings_
            save_array(directory / "postings_data.npy", p.data)
            save_array(directory / "postings_indices.npy", p.indices.astype(np.int32))
            save_array(directory / "postings_indptr.npy", p.indptr.astype(np.int64))
        else:
            save_array(directory / "embeddings.npy", self.dense_)

    def _load(self, directory: Path) -> None:
        if (directory / "embeddings.npy").exists():
            self.dense_ = load_array(directory / "embeddings.npy", BackendError)
            self.postings_ = None
            shape = self.dense_.shape
        else:
            data = load_array(directory / "postings_data.npy", BackendError)
            indices = load_array(directory / "postings_indices.npy", BackendError)
            indptr = load_array(directory / "postings_indptr.npy", BackendError)
            if len(indptr) != self.dims_ + 1 or len(data) != len(indices) or indptr[-1] != len(data):
                raise BackendError(f"{directory}: posting arrays are inconsistent with {self.dims_} dims")
            self.postings_ = sp.csr_matrix((data, indices, indptr), shape=(self.dims_, self.n_items_))
            self.dense_ = None
            shape = (self.n_items_, self.dims_)
        if shape != (self.n_items_, self.dims_):
            raise BackendError(f"{directory}: arrays have shape {shape}, expected ({self.n_items_}, {self.dims_})")
