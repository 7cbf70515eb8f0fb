"""A tiny backend registered by tests/test_cli.py to check that the CLI learns backends from the registry."""

import numpy as np

from elsa_index.indexers.base import Backend


class ToyBackend(Backend):
    """Brute-force dense scores, for tests only."""

    name = "toy"
    accepts = "dense"
    build_params = {"shards": 2}
    search_params = {"probe": 3, "mode": "fast"}
    param_docs = {"shards": "how many pieces the toy index has"}

    def _build(self, embeddings, *, progress: bool) -> None:
        self._emb = np.asarray(embeddings, np.float32)

    def _search(self, queries, k: int):
        scores = np.asarray(queries, np.float32) @ self._emb.T
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return ids, np.take_along_axis(scores, ids, axis=1)
