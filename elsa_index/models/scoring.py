"""User encoding and item scoring with item embeddings (dense or sparse).

ELSA scores item j for a user with history x as ``(x·A)·a_j``: the user is
encoded as ``u = x·A`` (the sum of the history's item embeddings) and every
item is scored by its inner product with ``u``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["encode_users", "score_items"]


def encode_users(X: sp.spmatrix, embeddings) -> np.ndarray:
    """User vectors ``u = x·A``: the sum of the history's item embeddings.

    Parameters
    ----------
    X : sparse (n_users, n_items), binary histories.
    embeddings : ndarray (n_items, dims) or sparse CSR (n_items, dims).

    Returns
    -------
    ndarray float32 (n_users, dims)
    """
    U = sp.csr_matrix(X, dtype=np.float32) @ embeddings
    if sp.issparse(U):
        U = U.toarray()
    return np.asarray(U, dtype=np.float32)


def score_items(X: sp.spmatrix, embeddings) -> np.ndarray:
    """Scores ``(x·A)·Aᵀ`` of every item for each user, float32 (n_users, n_items).

    This is ELSA's prediction without the ``− x`` and ``relu`` terms, which do
    not change the ranking of items outside the history.
    """
    U = encode_users(X, embeddings)
    if sp.issparse(embeddings):
        return np.asarray((embeddings @ U.T).T, dtype=np.float32)
    return U @ np.asarray(embeddings, dtype=np.float32).T
