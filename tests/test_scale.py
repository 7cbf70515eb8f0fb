"""Synthetic catalogues fitted from a checkpoint (elsa_index.eval.scale)."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.eval.scale import (
    CatalogueStats, fit_catalogue_stats, make_dense_counterpart, make_queries, make_sparse_catalogue, posting_bytes,
)

from conftest import planted_sparse_embeddings


def test_scale_catalogue_matches_fitted_statistics():
    E = planted_sparse_embeddings(n_items=300, dims=64, nnz=4)
    # Skew the dimension shares: dimension 0 in every third item.
    E = E.tolil()
    for i in range(0, 300, 3):
        E[i, 0] = 0.5
    E = sp.csr_matrix(E)
    H = sp.csr_matrix((np.ones(60), (np.repeat(np.arange(20), 3), np.arange(60))), shape=(20, 300))
    stats = fit_catalogue_stats(E, H)
    assert stats.dims == 64 and stats.history_lengths.tolist() == [3] * 20 and len(stats.query_terms) == 20
    stats = CatalogueStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    C = make_sparse_catalogue(stats, 5000, seed=3)
    assert C.shape == (5000, 64) and C.has_sorted_indices
    nnz = np.diff(C.indptr)
    assert set(np.unique(nnz)) <= set(stats.nnz_values.tolist())
    assert all(len(np.unique(C.indices[C.indptr[r]:C.indptr[r + 1]])) == nnz[r] for r in range(0, 5000, 97))
    assert np.allclose(sp.linalg.norm(C, axis=1), 1.0, atol=1e-5)
    share = np.bincount(C.indices, minlength=64) / C.nnz
    assert share[0] == pytest.approx(stats.dim_share[0], abs=0.02) and share[0] > 2 * np.median(share)
    assert (C != make_sparse_catalogue(stats, 5000, seed=3)).nnz == 0
    C2 = make_sparse_catalogue(stats, 1000, seed=3, dims=128)
    assert C2.shape == (1000, 128)

    Q, X = make_queries(stats, C, 40, query_terms=12, seed=1)
    terms = np.diff(Q.indptr)
    assert Q.shape == (40, 64) and abs(np.median(terms) - 12) <= 2
    assert X.shape == (40, 5000) and (np.diff(X.indptr) >= 1).all()
    # History items share a dimension with their query.
    r = 0
    hist = X.indices[X.indptr[r]:X.indptr[r + 1]]
    qd = set(Q.indices[Q.indptr[r]:Q.indptr[r + 1]])
    assert all(qd & set(C.indices[C.indptr[j]:C.indptr[j + 1]]) for j in hist)
    D, Qd = make_dense_counterpart(C, Q, 8)
    assert D.shape == (5000, 8) and Qd.shape == (40, 8) and np.allclose(np.linalg.norm(D, axis=1), 1, atol=1e-5)
    pb = posting_bytes(C, Q)
    plen = np.bincount(C.indices, minlength=64)
    assert pb[0] == 8 * plen[Q.indices[Q.indptr[0]:Q.indptr[1]]].sum()
