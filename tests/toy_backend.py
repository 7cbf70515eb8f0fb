"""A minimal backend defined outside the package: brute-force dense dot products.

It shows what a new backend needs: one module with a Backend subclass and one
``register_backend`` line. ``tests/test_backends.py`` and ``tests/test_search.py``
run their contract suites against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from elsa_index._io import load_array, save_array
from elsa_index.errors import BackendError
from elsa_index.indexers.base import Backend

#: the registry target of this backend
TARGET = "toy_backend:ToyBackend"


class ToyBackend(Backend):
    """Exact top-k by a dense matrix product over every item (ties: lower index first)."""

    name = "toy"
    accepts = "any"
    exact = True
    # Parameters that change nothing: they show how parameters and their docs reach the CLI help.
    build_params = {"shards": 2}
    search_params = {"probe": 3, "mode": "fast"}
    param_docs = {"shards": "how many pieces the toy index has"}

    @classmethod
    def touched_bytes(cls, info, search_params, k, posting, n_queries):
        return np.full(n_queries, float(info["n_items"]) * info["dims"] * 4), "all vectors (n x dims x 4 B)"

    def _build(self, embeddings, *, progress: bool) -> None:
        E = embeddings.toarray() if sp.issparse(embeddings) else embeddings
        self.emb_ = np.ascontiguousarray(E, dtype=np.float32)

    def _search(self, queries, k: int):
        Q = queries.toarray() if sp.issparse(queries) else queries
        S = np.asarray(Q, np.float32) @ self.emb_.T
        ids = np.argsort(-S, axis=1, kind="stable")[:, :k]
        return ids, np.take_along_axis(S, ids, axis=1)

    def _save(self, directory: Path, *, with_embeddings: bool = True) -> None:
        save_array(directory / "toy.npy", self.emb_)

    def _load(self, directory: Path, *, checkpoint=None, mmap: bool = False) -> None:
        self.emb_ = load_array(directory / "toy.npy", BackendError, mmap=mmap)
