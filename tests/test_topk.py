"""Tests for elsa_index.topk: ordering, ties, exclusions, padding, validation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.errors import ElsaIndexError
from elsa_index.topk import topk, topk_unchecked


def csr(rows, n_items):
    """CSR matrix with a 1 at each listed item of each row."""
    r = [i for i, items in enumerate(rows) for _ in items]
    c = [j for items in rows for j in items]
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(rows), n_items))


def test_topk_sorted_descending_with_scores():
    ids, scores = topk(np.array([[0.1, 0.9, 0.5, 0.3]], np.float32), 2)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [[1, 2]])
    np.testing.assert_array_equal(scores, np.array([[0.9, 0.5]], np.float32))
    assert scores.dtype == np.float32


def test_topk_ties_prefer_lower_index():
    s = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]])
    # Three items tie at 3 (indices 1, 2, 4): the cut at k=2 keeps 1 and 2.
    np.testing.assert_array_equal(topk(s, 2)[0], [[1, 2]])
    # k=4: the tie block in index order, then the 2 at index 3.
    np.testing.assert_array_equal(topk(s, 4)[0], [[1, 2, 4, 3]])
    # All equal: the first k indices.
    np.testing.assert_array_equal(topk(np.zeros((2, 100)), 5)[0], [[0, 1, 2, 3, 4]] * 2)


def test_topk_ties_match_stable_sort_reference():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, size=(50, 37)).astype(np.float32)  # many ties
    for k in (1, 3, 10, 36, 37):
        ids, scores = topk(s, k)
        ref = np.argsort(-s, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(ids, ref)
        np.testing.assert_array_equal(scores, np.take_along_axis(s, ref, axis=1))


def test_topk_k_larger_than_catalogue_is_clipped():
    ids, scores = topk(np.array([[0.2, 0.7, 0.1]]), 10)
    np.testing.assert_array_equal(ids, [[1, 0, 2]])
    assert scores.shape == (1, 3)


def test_topk_exclude_masks_items_and_pads():
    s = np.array([[0.9, 0.8, 0.1], [0.9, 0.8, 0.1]], np.float32)
    before = s.copy()
    excl = csr([[0], []], 3)
    ids, scores = topk(s, 2, exclude=excl)
    np.testing.assert_array_equal(ids, [[1, 2], [0, 1]])
    # Only 2 items are left for row 0: the third slot is padding (-1, -inf).
    ids, scores = topk(s, 3, exclude=excl)
    np.testing.assert_array_equal(ids, [[1, 2, -1], [0, 1, 2]])
    assert scores[0, 2] == -np.inf
    np.testing.assert_array_equal(s, before)  # the caller's array is untouched


def test_topk_validates():
    with pytest.raises(ElsaIndexError, match="NaN"):
        topk(np.array([[0.1, np.nan]]), 1)
    with pytest.raises(ElsaIndexError, match="positive integer"):
        topk(np.zeros((1, 3)), 0)
    with pytest.raises(ElsaIndexError, match=r"\(2, 3\).*\(1, 3\)"):
        topk(np.zeros((2, 3)), 1, exclude=csr([[0]], 3))
    with pytest.raises(ElsaIndexError, match="2-D"):
        topk(np.zeros(3), 1)


def test_input_is_not_modified_unless_unchecked_without_copy():
    S = np.array([[0.1, 0.9, 0.5]], np.float32)
    ex = sp.csr_matrix(([1], ([0], [1])), shape=(1, 3))
    before = S.copy()
    assert topk(S, 2, ex)[0].tolist() == [[2, 0]]
    np.testing.assert_array_equal(S, before)
    ids, _ = topk_unchecked(S, 2, ex, copy=True)
    assert ids.tolist() == [[2, 0]]
    np.testing.assert_array_equal(S, before)
