"""Reference recommenders to put ELSA's numbers in context.

Both follow the scikit-learn convention: the constructor stores settings,
``fit(X)`` computes the state (names ending in ``_``) and returns ``self``,
and ``score(X)`` gives dense item scores for a batch of user histories, ready
for :func:`elsa_index.metrics.evaluate` (``evaluate(model.score, ...)``).

- ``Popularity``: every user gets the items ranked by how many training users
  interacted with them.
- ``EASE`` (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse
  Data"): a closed-form item-item model with a zero diagonal.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from .._checks import check_float, check_int
from ..errors import ElsaIndexError

logger = logging.getLogger(__name__)

__all__ = ["Popularity", "EASE"]


class Popularity:
    """Rank items by the number of training users who interacted with them.

    Attributes
    ----------
    popularity_ : ndarray of int64, shape (n_items,)
        Users with a non-zero entry per item (set by ``fit``).
    n_items_ : int
    """

    def fit(self, X) -> "Popularity":
        """Count users per item.

        Parameters
        ----------
        X : sparse matrix, shape (n_users, n_items)
            Training interactions; any stored non-zero counts once.

        Returns
        -------
        self
        """
        X = _as_interactions(X, "X")
        X.sum_duplicates()
        X.eliminate_zeros()
        self.n_items_ = X.shape[1]
        self.popularity_ = np.bincount(X.indices, minlength=self.n_items_).astype(np.int64)
        logger.info("popularity fitted on %d users x %d items", X.shape[0], self.n_items_)
        return self

    def score(self, X) -> np.ndarray:
        """The popularity row, repeated for every user.

        Parameters
        ----------
        X : sparse matrix or array, shape (n_users, n_items)
            User histories (only the number of rows is used).

        Returns
        -------
        ndarray of float32, shape (n_users, n_items)
        """
        _check_fitted(self, "popularity_")
        n_users = _check_score_input(X, self.n_items_)
        return np.tile(self.popularity_.astype(np.float32), (n_users, 1))

    def __repr__(self) -> str:
        return "Popularity()"


class EASE:
    """Closed-form EASE item-item model (Steck 2019).

    ``B`` minimises ``||X - X B||_F^2 + l2 * ||B||_F^2`` subject to
    ``diag(B) = 0``. With ``G = X^T X + l2 I`` and ``P = G^-1`` the solution
    is ``B = -P / diag(P)`` (column j divided by ``P[j, j]``), diagonal zeroed.

    Parameters
    ----------
    l2 : float >= 0
        L2 regularisation (lambda). Steck reports a few hundred for
        MovieLens-20M / Netflix-sized data.
    max_items : int
        Refuse to fit more items than this: the model holds dense
        n_items x n_items matrices (float64 while fitting, so 8 * n_items**2
        bytes, about 29 GB at 60,000 items).

    Attributes
    ----------
    B_ : ndarray of float32, shape (n_items, n_items)
        Item-item weights, zero diagonal (set by ``fit``).
    n_items_ : int
    """

    def __init__(self, l2: float = 300.0, *, max_items: int = 60_000):
        self.l2 = l2
        self.max_items = max_items

    def fit(self, X) -> "EASE":
        """Solve for ``B_``.

        Parameters
        ----------
        X : sparse matrix, shape (n_users, n_items)
            Training interactions (usually binary; values are used as given).

        Returns
        -------
        self

        Raises
        ------
        ElsaIndexError
            ``l2`` is negative or not finite, ``X`` has more than
            ``max_items`` columns, or ``X^T X + l2 I`` is singular (only
            possible with ``l2 = 0``).
        """
        l2 = check_float(self.l2, "l2", 0.0)
        check_int(self.max_items, "max_items", 1)
        X = _as_interactions(X, "X")
        n_items = X.shape[1]
        if n_items > self.max_items:
            gib = 8 * n_items**2 / 2**30
            raise ElsaIndexError(
                f"EASE needs a dense n_items x n_items matrix: {n_items} items "
                f"(about {gib:.1f} GiB in float64) exceeds max_items={self.max_items}; "
                "filter rare items or raise max_items"
            )
        if not np.all(np.isfinite(X.data)):
            raise ElsaIndexError("X contains NaN or infinite values; expected finite interaction weights")
        X = X.astype(np.float64)
        G = (X.T @ X).toarray()
        G[np.diag_indices(n_items)] += l2
        P = _spd_inverse(G)
        diag = np.diag(P).copy()
        P /= -diag[None, :]
        P[np.diag_indices(n_items)] = 0.0
        self.B_ = P.astype(np.float32)
        self.n_items_ = n_items
        logger.info("EASE fitted on %d users x %d items (l2=%g)", X.shape[0], n_items, l2)
        return self

    def score(self, X) -> np.ndarray:
        """Scores ``X @ B_``.

        Parameters
        ----------
        X : sparse matrix or array, shape (n_users, n_items)
            User histories.

        Returns
        -------
        ndarray of float32, shape (n_users, n_items)
        """
        _check_fitted(self, "B_")
        _check_score_input(X, self.n_items_)
        X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, np.float32)
        return np.asarray(X @ self.B_, dtype=np.float32)

    def __repr__(self) -> str:
        return f"EASE(l2={self.l2!r}, max_items={self.max_items!r})"


def _spd_inverse(G: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite float64 matrix (overwrites G)."""
    # LAPACK potrf + potri: about n^3 flops, a third of solving against the identity.
    potrf, potri = scipy.linalg.lapack.get_lapack_funcs(("potrf", "potri"), (G,))
    # LAPACK works in place only on a Fortran-ordered array; any other is silently copied (another 8 n^2 bytes).
    # G is symmetric, so its transpose (a Fortran-ordered view of the same memory) is the same matrix.
    A = G.T if G.flags.c_contiguous and not G.flags.f_contiguous else np.asfortranarray(G)
    c, info = potrf(A, lower=True, overwrite_a=True, clean=False)
    if info == 0:
        inv, info = potri(c, lower=True, overwrite_c=True)
    if info != 0:
        raise ElsaIndexError(
            "X^T X + l2 I is singular (an item without interactions, or linearly dependent "
            "items, with l2 = 0); use l2 > 0"
        )
    # potri fills the lower triangle only; mirror it block by block (no n x n temporaries).
    n, step = inv.shape[0], 1024
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        d = inv[i0:i1, i0:i1]
        d[:] = np.tril(d) + np.tril(d, -1).T
        inv[i0:i1, i1:] = inv[i1:, i0:i1].T
    return inv


def _as_interactions(X, name: str) -> sp.csr_matrix:
    """A CSR copy of a 2-D sparse matrix (so in-place clean-ups stay ours)."""
    if not sp.issparse(X):
        raise ElsaIndexError(
            f"{name} must be a scipy sparse matrix (users x items), got {type(X).__name__}"
        )
    if X.ndim != 2 or X.shape[1] == 0:
        raise ElsaIndexError(f"{name} must be 2-D with at least one item, got shape {X.shape}")
    return sp.csr_matrix(X, copy=True)


def _check_score_input(X, n_items: int) -> int:
    """Number of rows of ``X``, after checking it has ``n_items`` columns."""
    shape = X.shape if sp.issparse(X) else np.shape(X)
    if len(shape) != 2 or shape[1] != n_items:
        raise ElsaIndexError(
            f"X must have shape (n_users, {n_items}) (the fitted item count), got {tuple(shape)}"
        )
    return int(shape[0])


def _check_fitted(model, attr: str) -> None:
    if not hasattr(model, attr):
        raise ElsaIndexError(f"{type(model).__name__} is not fitted; call fit(X) first")
