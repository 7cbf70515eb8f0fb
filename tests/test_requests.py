"""The shared request rules of every backend: query checks and the output step (exclusions, top k, padding)."""

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.errors import BackendError
from elsa_index.indexers.requests import check_queries, finish


def _reference_finish(ids, scores, excluded, k):
    """Per row, in order: drop padding and excluded items, keep the first k, pad with -1 / -inf."""
    out_ids = np.full((len(ids), k), -1, np.int64)
    out_scores = np.full((len(ids), k), -np.inf, np.float32)
    for r in range(len(ids)):
        kept = [(i, s) for i, s in zip(ids[r], scores[r]) if i >= 0 and i not in excluded[r]][:k]
        for c, (i, s) in enumerate(kept):
            out_ids[r, c], out_scores[r, c] = i, s
    return out_ids, out_scores


@pytest.mark.parametrize("seed", range(5))
def test_finish_drops_exclusions_and_keeps_the_order(seed):
    rng = np.random.default_rng(seed)
    n, width, n_items, k = 7, 30, 60, 12
    ids = np.stack([rng.choice(n_items, width, replace=False) for _ in range(n)]).astype(np.int64)
    scores = -np.sort(-rng.integers(0, 5, size=(n, width)).astype(np.float32), axis=1)  # sorted, many ties
    ids[0, -5:] = -1  # padding at the end of a row
    scores[0, -5:] = -np.inf
    excluded = [set(rng.choice(n_items, rng.integers(0, 25), replace=False).tolist()) for _ in range(n)]
    excluded[1] = set(ids[1, :width - 3].tolist())  # all but three: the row ends padded
    rows = [np.array(sorted(e), np.int64)[::-1] for e in excluded]  # unsorted columns within each row
    ex = sp.csr_matrix((np.ones(sum(map(len, rows)), bool), np.concatenate(rows),
                        np.concatenate([[0], np.cumsum([len(r) for r in rows])])), shape=(n, n_items))
    ex.has_sorted_indices = False
    got = finish(ids.copy(), scores.copy(), ex, k)
    want_ids, want_scores = _reference_finish(ids, scores, excluded, k)
    np.testing.assert_array_equal(got.ids, want_ids)
    np.testing.assert_array_equal(got.scores, want_scores)
    assert (got.ids[1, 3:] == -1).all()
    # Without exclusions the rows are only cut to k.
    plain = finish(ids.copy(), scores.copy(), None, k)
    np.testing.assert_array_equal(plain.ids, np.where(np.isfinite(scores[:, :k]), ids[:, :k], -1))


def test_finish_refuses_non_finite_scores_of_real_items():
    with pytest.raises(BackendError, match="overflow float32"):
        finish(np.array([[3, 1]]), np.array([[np.inf, 1.0]], np.float32), None, 2)


def test_check_queries_never_sorts_or_keeps_a_caller_matrix_it_must_change():
    q = sp.csr_matrix((np.array([1.0, 2.0], np.float32), np.array([3, 1]), np.array([0, 2])), shape=(1, 5))
    q.has_sorted_indices = False
    Q = check_queries(q, 5)
    assert Q is not q and Q.has_sorted_indices and q.indices.tolist() == [3, 1]
    ordered = sp.csr_matrix(np.array([[0, 1.0, 0, 2.0, 0]], np.float32))
    assert check_queries(ordered, 5) is ordered  # float32 CSR with sorted indices is used as it is
    arr = sp.csr_array(np.array([[0, 1.0, 0, 2.0, 0]], np.float64))
    Q = check_queries(arr, 5)
    assert isinstance(Q, sp.csr_matrix) and Q.dtype == np.float32
    bad = ordered.copy()
    bad.data[0] = np.nan
    with pytest.raises(BackendError, match="NaN or inf"):
        check_queries(bad, 5)
