"""Evaluation splits of an interaction matrix.

``strong_generalization_split`` holds out whole users (the protocol of the
ELSA papers); ``column_split`` follows a split shipped with the data;
``interaction_holdout_split`` holds out some interactions of training users
(the validation counterpart of a fixed split). All return a :class:`Split`:
the training matrix plus the evaluated users' fold-in histories and
targets, in the training item space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .._checks import check_int
from ..errors import DataError
from .log import IdMap, Interactions, Log

logger = logging.getLogger(__name__)

__all__ = ["Split", "strong_generalization_split", "column_split", "interaction_holdout_split"]


@dataclass
class Split:
    """Training matrix plus held-out users for evaluation.

    Attributes
    ----------
    train : Interactions
        What models are fitted on.
    fold_in : csr_matrix, shape (n_heldout, n_items)
        The held-out users' input histories (same item space as ``train``).
    targets : csr_matrix, shape (n_heldout, n_items)
        The held-out users' items to retrieve; disjoint from ``fold_in``.
    heldout_user_ids : IdMap
    protocol : ``"users"`` (held-out users, not in ``train``: strong
        generalisation) or ``"interactions"`` (the evaluated users are
        training users; their fold-in is their training row, the targets
        interactions ``train`` does not hold: a fixed split).
    spec : the data settings the split was made from (a
        :class:`~elsa_index.workflow.DataSpec` as a dict), when known;
        checkpoints record it so that they can be evaluated again without
        naming the data.
    """

    train: Interactions
    fold_in: sp.csr_matrix
    targets: sp.csr_matrix
    heldout_user_ids: IdMap
    protocol: str = "users"
    spec: dict | None = None

    @property
    def item_ids(self) -> IdMap:
        return self.train.item_ids


def strong_generalization_split(
    interactions: Interactions,
    n_heldout_users: int,
    *,
    fold_in_fraction: float = 0.8,
    seed: int = 42,
) -> Split:
    """Hold out whole users; split each one's items into fold-in and targets.

    A seeded random set of ``n_heldout_users`` users is removed from the
    training matrix. Each held-out user's items are shuffled and split:
    ``round(fold_in_fraction * n)`` (at least 1, at most n - 1) become the
    fold-in history, the rest the targets.
    """
    n = interactions.n_users
    check_int(n_heldout_users, "n_heldout_users", 1, n - 1, error=DataError, hint=f" ({n} users)")
    is_number = isinstance(fold_in_fraction, (int, float, np.integer, np.floating)) and not isinstance(fold_in_fraction, bool)
    if not (is_number and 0.0 < fold_in_fraction < 1.0):  # NaN fails the comparison too
        raise DataError(f"fold_in_fraction must be in (0, 1), got {fold_in_fraction}")
    rng = np.random.default_rng(seed)
    heldout = np.sort(rng.choice(n, size=n_heldout_users, replace=False))
    is_train = np.ones(n, bool)
    is_train[heldout] = False
    X = interactions.matrix
    H = X[heldout]
    fi_rows, fi_cols, t_rows, t_cols = [], [], [], []
    too_short = 0
    for r in range(H.shape[0]):
        items = H.indices[H.indptr[r] : H.indptr[r + 1]]
        if len(items) < 2:
            too_short += 1
            continue
        perm = rng.permutation(items)
        n_in = int(min(max(round(fold_in_fraction * len(items)), 1), len(items) - 1))
        fi_rows.append(np.full(n_in, r)), fi_cols.append(perm[:n_in])
        t_rows.append(np.full(len(items) - n_in, r)), t_cols.append(perm[n_in:])
    if too_short:
        logger.warning("%d held-out users have fewer than 2 items and get no targets", too_short)
    shape = H.shape

    def build(rows, cols):
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
        m.sort_indices()
        return m

    train_ids = IdMap(interactions.user_ids.ids[is_train])
    train = Interactions(X[is_train].tocsr(), train_ids, interactions.item_ids)
    return Split(train, build(fi_rows, fi_cols), build(t_rows, t_cols), IdMap(interactions.user_ids.ids[heldout]))


def column_split(log: Log, *, train_value: str = "train", test_value: str = "test") -> Split:
    """Split by a given ``split`` column, as datasets with a fixed split ship it.

    The model trains on the train rows. Every user with test rows is evaluated:
    their train items are the fold-in history, their test items the targets.
    Test items never seen in training are dropped (no embedding exists), and
    users left with an empty history or no targets are skipped.
    """
    if log.split is None:
        raise DataError("the log has no split column; pass split_col (e.g. 'split')")
    values = set(np.unique(log.split).tolist())
    if not {train_value, test_value} <= values:
        raise DataError(
            f"split column must contain {train_value!r} and {test_value!r}, found {sorted(values)[:10]}"
        )
    train_log = log.take(log.split == train_value)
    test_log = log.take(log.split == test_value)
    train = Interactions.from_log(train_log)
    test_users = IdMap.from_values(test_log.user)
    tgt = Interactions.from_log(test_log, item_ids=train.item_ids, user_ids=test_users).matrix
    # Fold-in: the test users' rows of the train matrix (empty if unknown in train).
    rows = train.user_ids.index(test_users.ids, missing="ignore")
    known = np.nonzero(rows >= 0)[0]
    select = sp.csr_matrix(
        (np.ones(len(known), np.float32), (known, rows[known])), shape=(len(test_users), train.n_users)
    )
    fold = select @ train.matrix
    fold = fold.tocsr()
    fold.sort_indices()
    # Targets must be disjoint from the fold-in history.
    tgt = (tgt - tgt.multiply(fold)).tocsr()
    tgt.eliminate_zeros()
    keep = (np.diff(fold.indptr) > 0) & (np.diff(tgt.indptr) > 0)
    if not keep.any():
        raise DataError("no test user has both train history and test items in the training item space")
    return Split(train, fold[keep], tgt[keep].astype(np.float32), IdMap(test_users.ids[keep]), protocol="interactions")


def interaction_holdout_split(
    interactions: Interactions,
    n_users: int,
    *,
    holdout_fraction: float = 0.2,
    seed: int = 42,
) -> Split:
    """Hold out some interactions of some users; everyone stays in training.

    The validation counterpart of a fixed train/test split (where a test
    user's input is its training row): a seeded set of ``n_users`` users with
    at least two interactions each gets ``round(holdout_fraction * n)`` (at
    least 1, at most n - 1) of its interactions removed from the training
    matrix; those are the targets, and the user's remaining row is both its
    training row and its fold-in history. Applied to a split's ``train``
    only, it never sees the test interactions.

    Returns
    -------
    Split
        ``train`` has every user (same ids and order) minus the held-out
        interactions; ``protocol="interactions"``.
    """
    X = interactions.matrix
    eligible = np.nonzero(np.diff(X.indptr) >= 2)[0]
    check_int(n_users, "n_users", 1, max(1, len(eligible)), error=DataError,
              hint=f" ({len(eligible)} users have at least 2 interactions)")
    is_number = isinstance(holdout_fraction, (int, float, np.integer, np.floating)) and not isinstance(
        holdout_fraction, bool)
    if not (is_number and 0.0 < holdout_fraction < 1.0):
        raise DataError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(eligible, size=n_users, replace=False))
    keep = np.ones(X.nnz, bool)
    for u in chosen:
        lo, hi = X.indptr[u], X.indptr[u + 1]
        n_out = int(min(max(round(holdout_fraction * (hi - lo)), 1), hi - lo - 1))
        keep[lo + rng.choice(hi - lo, size=n_out, replace=False)] = False
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    kept = sp.csr_matrix((X.data[keep], (rows[keep], X.indices[keep])), shape=X.shape, dtype=np.float32)
    out = sp.csr_matrix((X.data[~keep], (rows[~keep], X.indices[~keep])), shape=X.shape, dtype=np.float32)
    for m in (kept, out):
        m.sort_indices()
    train = Interactions(kept, interactions.user_ids, interactions.item_ids)
    return Split(train, kept[chosen], out[chosen], IdMap(interactions.user_ids.ids[chosen]), protocol="interactions")
