"""Tests for elsa_index.models.baselines: Popularity and closed-form EASE."""

from __future__ import annotations

import os
import subprocess
import sys

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
    with pytest.raises(ElsaIndexError, match=r"max_items=5, got 8 items"):
        EASE(max_items=5).fit(X)
    with pytest.raises(ElsaIndexError, match=r"l2 must be a finite number >= 0.0, got -1.0"):
        EASE(l2=-1.0).fit(X)
    with pytest.raises(ElsaIndexError, match=r"l2 must be a finite number >= 0.0, got 'big'"):
        EASE(l2="big").fit(X)
    with pytest.raises(ElsaIndexError, match=r"max_items must be an integer >= 1, got 0"):
        EASE(max_items=0).fit(X)
    with pytest.raises(ElsaIndexError, match=r"solver must be 'auto', 'primal' or 'dual', got 'qr'"):
        EASE(solver="qr").fit(X)
    with pytest.raises(ElsaIndexError, match=r"dtype must be 'auto', 'float32' or 'float64', got 'half'"):
        EASE(dtype="half").fit(X)
    with pytest.raises(ElsaIndexError, match="not fitted"):
        EASE().score(X)
    with pytest.raises(ElsaIndexError, match=r"\(n_users, 8\)"):
        EASE(l2=1.0).fit(X).score(sp.csr_matrix((2, 7)))
    empty_item = sp.csr_matrix(np.array([[1, 0], [1, 0]], np.float32))
    for solver in ("primal", "dual"):
        with pytest.raises(ElsaIndexError, match="singular"):
            EASE(l2=0.0, solver=solver).fit(empty_item if solver == "primal" else empty_item.T.tocsr())
    with pytest.raises(ElsaIndexError, match="sparse"):
        EASE().fit(X.toarray())


# ------------------------------------------------------------ EASE at scale


def _reference_scores(X, H, l2):
    """Scores of histories H from the primal solution computed with numpy in float64."""
    D = X.toarray().astype(np.float64)
    P = np.linalg.inv(D.T @ D + l2 * np.eye(D.shape[1]))
    return H.toarray() @ (np.eye(D.shape[1]) - P / np.diag(P))


@pytest.mark.parametrize("n_users,n_items", [(25, 60), (70, 30)])
def test_ease_dual_scores_equal_primal_scores(n_users, n_items):
    # The dual (user x user) system gives the same scores as the primal one, for the training users'
    # own rows and for histories of users it never saw.
    X = random_binary(6, n_users=n_users, n_items=n_items, density=0.2)
    H = sp.vstack([X, random_binary(7, n_users=9, n_items=n_items, density=0.2)]).tocsr()
    expect = _reference_scores(X, H, 2.0)
    for dtype, tol in (("float64", 1e-6), ("float32", 2e-4)):
        primal = EASE(l2=2.0, solver="primal", dtype=dtype).fit(X)
        dual = EASE(l2=2.0, solver="dual", dtype=dtype).fit(X)
        assert (primal.solver_, dual.solver_, primal.dtype_, dual.dtype_) == ("primal", "dual", dtype, dtype)
        assert hasattr(primal, "B_") and not hasattr(primal, "Q_")
        assert hasattr(dual, "Q_") and dual.Q_.shape == (n_users, n_users) and not hasattr(dual, "B_")
        for model in (primal, dual):
            S = model.score(H)
            assert S.dtype == np.float32 and S.shape == H.shape
            np.testing.assert_allclose(S, expect, atol=tol * np.abs(expect).max())


def test_ease_auto_solves_the_smaller_system_and_picks_the_precision():
    wide = random_binary(8, n_users=10, n_items=40)
    tall = random_binary(8, n_users=40, n_items=10)
    assert EASE(l2=5.0).fit(wide).solver_ == "dual"
    assert EASE(l2=5.0).fit(tall).solver_ == "primal"
    # Gershgorin bound 1 + max row sum of X^T X / l2: float32 when at most 1e4.
    D = tall.toarray().astype(np.float64)
    bound = 1 + (D.T @ D).sum(axis=1).max() / 5.0
    model = EASE(l2=5.0).fit(tall)
    assert model.condition_bound_ == pytest.approx(bound) and model.dtype_ == "float32"
    tiny_l2 = EASE(l2=(bound - 1) * 5.0 / 2e4).fit(tall)
    assert tiny_l2.condition_bound_ > 1e4 and tiny_l2.dtype_ == "float64"
    assert EASE(l2=0.0).plan(tall)["dtype"] == "float64"  # no regularisation: no bound, float64


def test_ease_memory_estimate_refuses_an_impossible_size():
    # 3 users x 3 million items: the primal system would be 3e6 x 3e6 floats (tens of TB). The estimate
    # refuses it before anything large is allocated, naming the size and the available memory.
    X = sp.csr_matrix((np.ones(3, np.float32), ([0, 1, 2], [0, 5, 2_999_999])), shape=(3, 3_000_000))
    plan = EASE(l2=1.0, solver="primal").plan(X)
    assert plan["size"] == 3_000_000 and plan["bytes"] > 3e12
    with pytest.raises(ElsaIndexError, match=r"EASE's primal \(item x item\) system of 3,000,000 x 3,000,000 "
                                              r"float32 needs about .* TiB of memory but only .* is available"):
        EASE(l2=1.0, solver="primal").fit(X)
    # The same data in the dual: a 3 x 3 system.
    assert EASE(l2=1.0).plan(X)["size"] == 3


_PEAK_SCRIPT = """
import numpy as np, scipy.sparse as sp
from elsa_index.models import baselines
from elsa_index.models.baselines import EASE

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

baselines._BLOCK_BYTES = 1 << 19   # small work blocks, so that only the n x n arrays count
rng = np.random.default_rng(0)
X = sp.csr_matrix((rng.random((2000, {n})) < 0.01).astype(np.float32))
EASE(l2=10.0, solver="primal").fit(X[:, :50])   # load the libraries first
for dtype in ("float64", "float32"):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")   # reset the peak (VmHWM) to the current resident size
    base = status("VmRSS:")
    model = EASE(l2=10.0, solver="primal", dtype=dtype).fit(X)
    print(dtype, (status("VmHWM:") - base) / ({n} ** 2 * np.dtype(dtype).itemsize), model.B_.dtype, model.B_.nbytes)
    del model
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_ease_primal_solves_in_place():
    # Peak resident memory of the fit, in units of one n x n array of the solve's dtype: the Gram matrix,
    # its inverse and B share one array (a float64 B is downcast into the same buffer), so the peak
    # stays near 1 (plus the sparse data and LAPACK's O(n * block) workspace, about 0.3 at this small n);
    # a second n x n array (a copy for LAPACK, an astype to float32) would add 0.5 to 1.
    n = 2000
    # Passive OpenMP waiting: on a loaded machine spinning LAPACK threads slow the solve several-fold.
    # A fixed mmap threshold: every large block is mapped and unmapped on free, so the first run's
    # memory is returned to the system and cannot hide the second run's allocations.
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT.format(n=n)], capture_output=True, text=True,
                         timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    assert [line[0] for line in lines] == ["float64", "float32"]
    for dtype, ratio, b_dtype, b_bytes in lines:
        assert b_dtype == "float32" and int(b_bytes) == 4 * n * n
        # At least the one array is seen (the measurement works), and no second one.
        assert 0.95 < float(ratio) < 1.45, f"{dtype}: peak was {float(ratio):.2f} n x n arrays"


def test_spd_inverse_in_place():
    from elsa_index.models.baselines import _spd_inverse

    rng = np.random.default_rng(0)
    M = rng.normal(size=(40, 40))
    G = M @ M.T + 40 * np.eye(40)
    expect = np.linalg.inv(G)
    work = G.copy()
    out = _spd_inverse(work)
    assert out is work
    np.testing.assert_allclose(work, expect, rtol=1e-8, atol=1e-12)
