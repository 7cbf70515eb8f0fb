"""Tests for elsa_index.models.baselines: Popularity and closed-form EASE."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.models.baselines import EASE, Popularity
from elsa_index.errors import ElsaIndexError
from elsa_index.metrics import evaluate
from elsa_index.topk import topk


def random_binary(seed, n_users=40, n_items=9, density=0.35):
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((n_users, n_items)) < density).astype(np.float32))


# ------------------------------------------------------------------ popularity


def test_popularity_counts_and_ranks():
    X = sp.csr_matrix(np.array([
        [1, 0, 0, 1, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 0, 1, 1],
    ], np.float32))
    model = Popularity().fit(X)
    # Column sums: item 0: 3 users, item 1: 1, item 2: 0, item 3: 2, item 4: 1.
    np.testing.assert_array_equal(model.popularity_, [3, 1, 0, 2, 1])
    assert model.popularity_.dtype == np.int64
    S = model.score(X[:2])
    assert S.shape == (2, 5) and S.dtype == np.float32
    np.testing.assert_array_equal(S, [[3, 1, 0, 2, 1]] * 2)
    # Rank: 0 (3), 3 (2), then the tie 1/4 at 1 in index order, then 2 (0).
    np.testing.assert_array_equal(topk(S, 5)[0][0], [0, 3, 1, 4, 2])


def test_popularity_ignores_explicit_zeros_and_counts_users_once():
    X = sp.csr_matrix((np.array([1.0, 0.0, 5.0], np.float32), ([0, 1, 1], [0, 0, 1])), shape=(2, 2))
    np.testing.assert_array_equal(Popularity().fit(X).popularity_, [1, 1])


def test_popularity_errors():
    with pytest.raises(ElsaIndexError, match="not fitted"):
        Popularity().score(sp.csr_matrix((1, 3)))
    model = Popularity().fit(sp.csr_matrix(np.eye(3, dtype=np.float32)))
    with pytest.raises(ElsaIndexError, match=r"\(n_users, 3\).*\(1, 4\)"):
        model.score(sp.csr_matrix((1, 4)))


# ------------------------------------------------------------------------ EASE


def test_ease_two_items_by_hand():
    # Columns x0 = [1,1,1,0], x1 = [1,0,0,1]; x0.x0 = 3, x1.x1 = 2, x0.x1 = 1.
    # With a zero diagonal each column is a 1-D ridge regression on the other:
    # B[0,1] = x0.x1 / (x0.x0 + l2) = 1 / (3 + 1) = 0.25
    # B[1,0] = x0.x1 / (x1.x1 + l2) = 1 / (2 + 1) = 1/3
    X = sp.csr_matrix(np.array([[1, 1], [1, 0], [1, 0], [0, 1]], np.float32))
    model = EASE(l2=1.0).fit(X)
    np.testing.assert_allclose(model.B_, [[0.0, 0.25], [1 / 3, 0.0]], rtol=1e-6)
    assert model.B_.dtype == np.float32


def test_ease_matches_per_column_ridge_solve():
    # Independent computation: column j of B is the ridge regression of item j
    # on all the other items, min ||x_j - X_{-j} b||^2 + l2 ||b||^2.
    X = random_binary(0)
    l2 = 3.0
    model = EASE(l2=l2).fit(X)
    D = X.toarray().astype(np.float64)
    n = D.shape[1]
    for j in range(n):
        others = [i for i in range(n) if i != j]
        A = D[:, others]
        b = np.linalg.solve(A.T @ A + l2 * np.eye(n - 1), A.T @ D[:, j])
        np.testing.assert_allclose(model.B_[others, j], b, rtol=1e-4, atol=1e-6)
        assert model.B_[j, j] == 0.0


def test_ease_satisfies_optimality_conditions():
    # Gradient of ||X - XB||^2 + l2 ||B||^2 is 2 (G B - X^T X) with G = X^T X + l2 I;
    # with the diag(B) = 0 constraint it must vanish off the diagonal.
    X = random_binary(1, n_users=60, n_items=12)
    l2 = 10.0
    B = EASE(l2=l2).fit(X).B_.astype(np.float64)
    D = X.toarray().astype(np.float64)
    C = D.T @ D
    grad = (C + l2 * np.eye(len(C))) @ B - C
    off = ~np.eye(len(C), dtype=bool)
    assert np.abs(grad[off]).max() < 1e-4 * np.abs(C).max()

    def loss(M):
        return np.sum((D - D @ M) ** 2) + l2 * np.sum(M**2)

    rng = np.random.default_rng(2)
    for _ in range(5):
        E = rng.standard_normal(B.shape) * 1e-2
        np.fill_diagonal(E, 0.0)
        assert loss(B) < loss(B + E)


def test_ease_score_and_evaluate():
    X = random_binary(3)
    model = EASE(l2=2.0).fit(X)
    S = model.score(X[:5])
    assert S.shape == (5, X.shape[1]) and S.dtype == np.float32
    np.testing.assert_allclose(S, X[:5].toarray() @ model.B_, rtol=1e-5, atol=1e-6)
    out = evaluate(model.score, X[:10], X[10:20], ks=(3,), batch_size=4)
    assert set(out) == {"recall@3", "ndcg@3"}


def test_ease_does_not_mutate_input():
    X = random_binary(4)
    before = X.copy()
    EASE(l2=1.0).fit(X)
    assert (X != before).nnz == 0 and X.dtype == np.float32


def test_ease_errors():
    X = random_binary(5, n_items=8)
    with pytest.raises(ElsaIndexError, match=r"8 items.*max_items=5"):
        EASE(max_items=5).fit(X)
    with pytest.raises(ElsaIndexError, match=r"l2 must be a finite number >= 0.0, got -1.0"):
        EASE(l2=-1.0).fit(X)
    with pytest.raises(ElsaIndexError, match=r"l2 must be a finite number >= 0.0, got 'big'"):
        EASE(l2="big").fit(X)
    with pytest.raises(ElsaIndexError, match=r"max_items must be an integer >= 1, got 0"):
        EASE(max_items=0).fit(X)
    with pytest.raises(ElsaIndexError, match="not fitted"):
        EASE().score(X)
    with pytest.raises(ElsaIndexError, match=r"\(n_users, 8\)"):
        EASE(l2=1.0).fit(X).score(sp.csr_matrix((2, 7)))
    empty_item = sp.csr_matrix(np.array([[1, 0], [1, 0]], np.float32))
    with pytest.raises(ElsaIndexError, match="singular"):
        EASE(l2=0.0).fit(empty_item)
    with pytest.raises(ElsaIndexError, match="sparse"):
        EASE().fit(X.toarray())


@pytest.mark.parametrize("order", ["C", "F"])
def test_spd_inverse_is_exact_for_either_memory_order(order):
    from elsa_index.models.baselines import _spd_inverse

    rng = np.random.default_rng(0)
    M = rng.normal(size=(40, 40))
    G = np.array(M @ M.T + 40 * np.eye(40), order=order)
    expect = np.linalg.inv(G)
    np.testing.assert_allclose(_spd_inverse(G.copy(order=order)), expect, rtol=1e-8, atol=1e-12)
