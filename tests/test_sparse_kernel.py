import threading

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.indexers import _kernels
from elsa_index.topk import topk


def _random(n_items=500, dims=40, density=0.1, seed=0, integer=False):
    rng = np.random.default_rng(seed)
    E = sp.random(n_items, dims, density=density, format="csr", random_state=rng, dtype=np.float32)
    if integer:  # small integers: many exact ties
        E.data = rng.integers(-2, 3, size=E.nnz).astype(np.float32)
    Q = sp.random(30, dims, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    if integer:
        Q.data = rng.integers(-2, 3, size=Q.nnz).astype(np.float32)
    return E, Q


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("k", [1, 7, 500])
def test_kernel_equals_reference_topk(integer, k):
    E, Q = _random(integer=integer)
    postings = sp.csr_matrix(E.T)
    acc = np.zeros(E.shape[0], np.float32)
    ids, scores = _kernels.sparse_topk(postings, Q, k, acc)
    ref_ids, ref_scores = topk((Q @ E.T).toarray(), k)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    if integer:  # exact arithmetic: identical ids, ties by lower index
        np.testing.assert_array_equal(ids, ref_ids)
    assert not acc.any()  # left zeroed for the next call


def test_kernel_scores_and_ranks_bit_identical_to_exact_candidate_scoring():
    # One summation order (elsa_index.scoring): the kernel and score_rows + topk agree to the bit, ties included.
    from elsa_index.scoring import score_rows

    E, Q = _random(n_items=800, dims=60, density=0.15, seed=5)
    E.sort_indices()
    E = sp.vstack([E, E[:40]]).tocsr()  # duplicated rows: exact ties broken by the lower index
    acc = np.zeros(E.shape[0], np.float32)
    ids, scores = _kernels.sparse_topk(sp.csr_matrix(E.T), Q, 25, acc)
    S = score_rows(E, Q, np.broadcast_to(np.arange(E.shape[0]), (Q.shape[0], E.shape[0])))
    ref_ids, ref_scores = topk(S, 25)
    np.testing.assert_array_equal(scores, ref_scores)
    np.testing.assert_array_equal(ids, ref_ids)


def test_kernel_includes_zero_score_items_like_exact_scoring():
    # One query touching a single item: the rest of the top-k are zero-score items, lowest ids first.
    E = sp.csr_matrix(np.array([[0, 0], [0, 0], [1.0, 0], [0, 0]], np.float32))
    Q = sp.csr_matrix(np.array([[2.0, 0]], np.float32))
    ids, scores = _kernels.sparse_topk(sp.csr_matrix(E.T), Q, 3, np.zeros(4, np.float32))
    assert ids.tolist() == [[2, 0, 1]] and scores.tolist() == [[2.0, 0.0, 0.0]]


def test_kernel_threads_with_own_accumulators():
    E, Q = _random(n_items=2000, seed=3)
    postings = sp.csr_matrix(E.T)
    expect = _kernels.sparse_topk(postings, Q, 10, np.zeros(2000, np.float32))[0]
    out = {}

    def work(t):
        acc = np.zeros(2000, np.float32)
        out[t] = [_kernels.sparse_topk(postings, Q[r : r + 1], 10, acc)[0][0] for r in range(Q.shape[0])]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for t in range(4):
        np.testing.assert_array_equal(np.array(out[t]), expect)
