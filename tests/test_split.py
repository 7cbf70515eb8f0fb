"""Tests for elsa_index.data.split: held-out users and shipped splits, on tiny logs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.data import IdMap, Interactions, Log, column_split, strong_generalization_split
from elsa_index.errors import DataError


def _rows(m: sp.csr_matrix) -> list[list[int]]:
    return [sorted(m.indices[m.indptr[r] : m.indptr[r + 1]].tolist()) for r in range(m.shape[0])]



@pytest.fixture(scope="module")
def inter50():
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(50):
        n = int(rng.integers(2, 16))
        for i in rng.choice(40, size=n, replace=False):
            users.append(f"u{u:02d}")
            items.append(f"i{i:02d}")
    return Interactions.from_log(Log.from_arrays(users, items))


def test_strong_generalization_split_sizes_and_disjointness(inter50):
    split = strong_generalization_split(inter50, 10, seed=1)
    held = split.heldout_user_ids.ids
    assert len(held) == 10 and list(held) == sorted(held)
    assert split.train.n_users == 40
    assert set(held).isdisjoint(split.train.user_ids.ids)
    assert set(held) | set(split.train.user_ids.ids) == set(inter50.user_ids.ids)
    assert split.item_ids == inter50.item_ids
    assert split.fold_in.shape == split.targets.shape == (10, inter50.n_items)
    full = _rows(inter50.matrix)
    for r, uid in enumerate(held):
        items = full[inter50.user_ids.index([uid])[0]]
        fold, tgt = _rows(split.fold_in)[r], _rows(split.targets)[r]
        n = len(items)
        assert len(fold) == min(max(round(0.8 * n), 1), n - 1)
        assert len(tgt) == n - len(fold) >= 1
        assert set(fold).isdisjoint(tgt)
        assert sorted(set(fold) | set(tgt)) == items
    # Training rows are the original rows of the remaining users.
    for r, uid in enumerate(split.train.user_ids.ids):
        assert _rows(split.train.matrix)[r] == full[inter50.user_ids.index([uid])[0]]
    assert split.train.nnz + split.fold_in.nnz + split.targets.nnz == inter50.nnz


def test_strong_generalization_split_is_seeded(inter50):
    a = strong_generalization_split(inter50, 10, seed=3)
    b = strong_generalization_split(inter50, 10, seed=3)
    c = strong_generalization_split(inter50, 10, seed=4)
    assert a.heldout_user_ids == b.heldout_user_ids
    assert (a.fold_in != b.fold_in).nnz == 0 and (a.targets != b.targets).nnz == 0
    assert a.heldout_user_ids != c.heldout_user_ids


@pytest.mark.parametrize("n_heldout", [0, -1, 50, 51, 2.0, True])
def test_strong_generalization_split_bad_n_heldout(inter50, n_heldout):
    with pytest.raises(DataError, match=r"n_heldout_users must be an integer in \[1, 49\], got .* \(50 users\)"):
        strong_generalization_split(inter50, n_heldout)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, float("nan")])
def test_strong_generalization_split_bad_fraction(inter50, fraction):
    with pytest.raises(DataError, match=r"fold_in_fraction must be in \(0, 1\)"):
        strong_generalization_split(inter50, 5, fold_in_fraction=fraction)


def test_single_item_heldout_users_get_nothing_and_a_warning(caplog):
    inter = Interactions.from_log(Log.from_arrays(["a", "b", "b", "c"], ["x", "x", "y", "y"]))
    with caplog.at_level(logging.WARNING, logger="elsa_index.data"):
        split = strong_generalization_split(inter, 2, seed=0)
    n_short = sum(u in ("a", "c") for u in split.heldout_user_ids.ids)
    assert n_short >= 1 and "fewer than 2 items" in caplog.text
    for r, uid in enumerate(split.heldout_user_ids.ids):
        expect = 0 if uid in ("a", "c") else 1
        assert split.fold_in.getrow(r).nnz == expect and split.targets.getrow(r).nnz == expect


def _split_log():
    rows = [
        # user, item, split
        ("A", "i1", "train"), ("A", "i2", "train"), ("A", "i3", "train"),
        ("B", "i1", "train"), ("B", "i4", "train"),
        ("C", "i2", "train"), ("C", "i3", "train"),
        ("B", "i2", "test"), ("B", "i9", "test"),  # i9 never in training: dropped
        ("C", "i1", "test"), ("C", "i3", "test"),  # i3 also in C's fold-in: not a target
        ("D", "i1", "test"),  # no training history: skipped
        ("A", "i9", "test"),  # only an unseen item: no targets, skipped
    ]
    return Log.from_arrays([r[0] for r in rows], [r[1] for r in rows], split=[r[2] for r in rows])


def test_column_split_routes_rows():
    split = column_split(_split_log())
    assert split.train.user_ids.ids.tolist() == ["A", "B", "C"]
    assert split.item_ids.ids.tolist() == ["i1", "i2", "i3", "i4"]
    np.testing.assert_array_equal(split.train.matrix.toarray(), [[1, 1, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0]])
    assert split.heldout_user_ids.ids.tolist() == ["B", "C"]
    assert split.fold_in.shape == split.targets.shape == (2, 4)
    assert _rows(split.fold_in) == [[0, 3], [1, 2]]  # B: i1,i4; C: i2,i3
    assert _rows(split.targets) == [[1], [0]]  # B: i2; C: i1
    assert split.targets.dtype == np.float32 and np.all(split.targets.data == 1.0)
    assert split.fold_in.has_sorted_indices


def test_column_split_custom_values_and_errors():
    log = _split_log()
    renamed = Log.from_arrays(log.user, log.item, split=np.where(log.split == "train", "fit", "eval"))
    split = column_split(renamed, train_value="fit", test_value="eval")
    assert split.heldout_user_ids.ids.tolist() == ["B", "C"]
    with pytest.raises(DataError, match="split column must contain 'train' and 'test'.*'eval', 'fit'"):
        column_split(renamed)
    with pytest.raises(DataError, match="has no split column"):
        column_split(Log.from_arrays(["a"], ["x"]))
    nothing = Log.from_arrays(["a", "b"], ["x", "y"], split=["train", "test"])
    with pytest.raises(DataError, match="no test user has both train history and test items"):
        column_split(nothing)


# ------------------------------------------------------------ interaction hold-out


def test_interaction_holdout_split_partitions_the_training_rows(inter50):
    from elsa_index.data.split import interaction_holdout_split

    split = interaction_holdout_split(inter50, 12, holdout_fraction=0.25, seed=3)
    X = inter50.matrix
    assert split.protocol == "interactions"
    # Everyone stays in training, in the same order; only the held-out interactions leave the matrix.
    assert split.train.user_ids == inter50.user_ids and split.train.item_ids == inter50.item_ids
    rows = inter50.user_ids.index(split.heldout_user_ids.ids)
    assert len(rows) == 12 and list(rows) == sorted(rows)
    place = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.arange(len(rows)))), shape=(X.shape[0], len(rows)))
    held = (place @ split.targets).tocsr()                        # the targets at their users' rows
    assert (split.train.matrix + held != X).nnz == 0            # kept + held out = the original
    assert split.train.matrix.multiply(held).nnz == 0            # disjoint
    # The validation input is the user's remaining training row (as a test user's is in a fixed split).
    assert (split.fold_in != split.train.matrix[rows]).nnz == 0
    n = np.diff(X.indptr)[rows]
    n_out = np.diff(split.targets.indptr)
    np.testing.assert_array_equal(n_out, np.clip(np.round(0.25 * n), 1, n - 1))
    # Seeded.
    again = interaction_holdout_split(inter50, 12, holdout_fraction=0.25, seed=3)
    assert (again.targets != split.targets).nnz == 0
    assert (interaction_holdout_split(inter50, 12, holdout_fraction=0.25, seed=4).targets != split.targets).nnz > 0


def test_interaction_holdout_split_errors(inter50):
    from elsa_index.data.split import interaction_holdout_split

    with pytest.raises(DataError, match=r"n_users must be an integer in \[1, 50\], got 51"):
        interaction_holdout_split(inter50, 51)
    with pytest.raises(DataError, match=r"holdout_fraction must be in \(0, 1\), got 1.0"):
        interaction_holdout_split(inter50, 5, holdout_fraction=1.0)


def test_column_split_is_a_fixed_split_protocol():
    assert column_split(_split_log()).protocol == "interactions"
    inter = Interactions.from_log(Log.from_arrays(["a", "a", "b", "b", "c", "c"], ["x", "y", "x", "z", "y", "z"]))
    assert strong_generalization_split(inter, 1, seed=0).protocol == "users"
