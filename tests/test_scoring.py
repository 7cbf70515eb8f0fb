"""Tests for elsa_index.models.scoring: u = x·A and u·a_j, dense and sparse embeddings agree."""

import numpy as np
import scipy.sparse as sp

from elsa_index.models import encode_users, score_items


def test_encode_and_score_dense_and_sparse_agree():
    A = np.array([[1.0, 0.0, 0.0], [0.0, -0.6, 0.8], [0.6, 0.8, 0.0]], np.float32)
    X = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 1]], np.float32))
    U = encode_users(X, A)
    np.testing.assert_allclose(U, [[1.0, -0.6, 0.8], [0.6, 0.8, 0.0]])
    S = score_items(X, A)
    np.testing.assert_allclose(S, U @ A.T, rtol=1e-6)
    assert U.dtype == S.dtype == np.float32
    np.testing.assert_allclose(encode_users(X, sp.csr_matrix(A)), U)
    np.testing.assert_allclose(score_items(X, sp.csr_matrix(A)), S, rtol=1e-6)
