"""A toy backend for the harness tests: registered at test time, unknown to eval/ and indexers/.

Brute-force inner products over a dense copy of the embeddings (exact), with
a made-up cost model (every vector once) so that the report's lower bound is
defined. Importable by the memory-probe child processes through the parent's
``sys.path``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from elsa_index.indexers.base import Backend

TARGET = "toy_backend:ToyBackend"


class ToyBackend(Backend):
    """Exact top-k by a dense matrix product."""

    name = "toy"
    accepts = "any"
    exact = True
    search_params = {"chunk": 64}

    @classmethod
    def touched_bytes(cls, info, search_params, k, posting, n_queries):
        n, d = int(info.get("n_items") or 0), int(info.get("dims") or 0)
        return np.full(n_queries, float(n * d * 4)), "toy: every vector"

    def _build(self, embeddings, *, progress):
        E = embeddings.toarray() if sp.issparse(embeddings) else np.asarray(embeddings)
        self.E_ = np.ascontiguousarray(E, dtype=np.float32)

    def _search(self, queries, k):
        Q = queries.toarray() if sp.issparse(queries) else np.asarray(queries)
        S = Q.astype(np.float32) @ self.E_.T
        k = min(k, S.shape[1])
        ids = np.argsort(-S, axis=1, kind="stable")[:, :k]
        return ids, np.take_along_axis(S, ids, axis=1)

    def _save(self, directory: Path):
        np.save(directory / "E.npy", self.E_)

    def _load(self, directory: Path):
        self.E_ = np.load(directory / "E.npy", allow_pickle=False)
