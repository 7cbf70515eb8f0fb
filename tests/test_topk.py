"""Public top-k (elsa_index.topk): the selection every exact path and the allow-list scoring share."""

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.errors import ElsaIndexError
from elsa_index.topk import topk, topk_unchecked


def test_ties_go_to_the_lower_index_and_rows_are_padded():
    S = np.array([[1.0, 3.0, 3.0, 0.5], [2.0, 2.0, 2.0, 2.0]], np.float32)
    ids, top = topk(S, 3)
    assert ids.tolist() == [[1, 2, 0], [0, 1, 2]] and top.dtype == np.float32
    ex = sp.csr_matrix(([1, 1, 1], ([0, 0, 0], [0, 1, 2])), shape=(2, 4))
    ids, top = topk(S, 3, ex)
    assert ids[0].tolist() == [3, -1, -1] and np.isneginf(top[0, 1:]).all()
    assert ids[1].tolist() == [0, 1, 2]


def test_input_is_not_modified_unless_unchecked_without_copy():
    S = np.array([[0.1, 0.9, 0.5]], np.float32)
    ex = sp.csr_matrix(([1], ([0], [1])), shape=(1, 3))
    before = S.copy()
    assert topk(S, 2, ex)[0].tolist() == [[2, 0]]
    np.testing.assert_array_equal(S, before)
    ids, _ = topk_unchecked(S, 2, ex, copy=True)
    assert ids.tolist() == [[2, 0]]
    np.testing.assert_array_equal(S, before)


def test_k_is_clipped_and_checked():
    ids, top = topk(np.arange(3.0)[None, :], 10)
    assert ids.tolist() == [[2, 1, 0]] and top.dtype == np.float64
    with pytest.raises(ElsaIndexError, match="k must be a positive integer"):
        topk(np.zeros((1, 3)), 0)
