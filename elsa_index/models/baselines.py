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
import math

import numpy as np
import scipy.sparse as sp

from .._checks import check_float, check_int
from .._memory import check_fits, format_bytes
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
    """Closed-form EASE item-item model (Steck 2019), solved in place.

    ``B`` minimises ``||X - X B||_F^2 + l2 * ||B||_F^2`` subject to
    ``diag(B) = 0``. With ``G = X^T X + l2 I`` and ``P = G^-1`` the solution
    is ``B = I - P / diag(P)`` (column j of P divided by ``P[j, j]``; the
    diagonal comes out 0).

    Two equivalent ways to solve it (``solver``):

    - ``"primal"``: the item x item system. ``G``, then ``P``, then ``B``
      occupy one dense ``n_items x n_items`` array, overwritten in place.
    - ``"dual"``: the user x user system, for training data with fewer users
      than items. With ``K = X X^T + l2 I`` and ``Q = K^-1``, the Woodbury
      identity gives ``P = (I - X^T Q X) / l2``, so for any history ``x``::

          x P     = (x - (x X^T) Q X) / l2
          P[j, j] = (1 - d_j) / l2,   d_j = sum_u X[u, j] (Q X)[u, j]
          x B     = x - (x - (x X^T) Q X) / (1 - d)

      The model keeps ``Q`` (``n_users x n_users``) and the training matrix
      instead of ``B``; its scores equal the primal ones for every history,
      not only for training users (for a training user's own row,
      ``x - (x X^T) Q X = l2 (Q X)[u]``). Scoring a batch costs a
      ``batch x n_users`` by ``n_users x n_users`` product more than the
      primal, so the dual pays off when the system it solves is smaller.

    ``"auto"`` picks the smaller system. The factorisation runs in place
    (Cholesky, then the inverse from it, through PyTorch's LAPACK, i.e. MKL
    on x86; scipy's bundled OpenBLAS has crashed in ``spotrf``/``spotri`` at
    about 30,000 rows). Before anything large is allocated, the memory the
    solve needs is estimated and refused with a clear error when it exceeds
    what the machine has available.

    Parameters
    ----------
    l2 : float >= 0
        L2 regularisation (lambda). Steck reports a few hundred for
        MovieLens-20M / Netflix-sized data.
    solver : ``"auto"``, ``"primal"`` or ``"dual"``
        Which system to solve (see above); ``"auto"`` takes the dual when the
        training data has fewer users than items.
    dtype : ``"auto"``, ``"float32"`` or ``"float64"``
        Precision of the solve. ``"auto"`` takes float32 when it is safe: when
        the Gershgorin bound on the condition number of the system,
        ``1 + max_j sum_i |G[i, j]| / l2`` (an upper bound of the true one),
        is at most :data:`FLOAT32_MAX_CONDITION` (1e4; the relative error of
        a float32 inverse then stays around 1e-3 or below), else float64.
        The primal model's ``B_`` is float32 either way (downcast in place).
    max_items : int or None
        Optionally refuse to fit more items than this (None: only the memory
        estimate limits the size).

    Attributes
    ----------
    B_ : ndarray of float32, shape (n_items, n_items)
        Item-item weights, zero diagonal (primal solver only).
    Q_ : ndarray, shape (n_users, n_users)
        ``(X X^T + l2 I)^-1`` (dual solver only), float32 or float64.
    solver_ : ``"primal"`` or ``"dual"``, the system that was solved.
    dtype_ : ``"float32"`` or ``"float64"``, the precision of the solve.
    condition_bound_ : float, the Gershgorin bound on the condition number.
    n_items_ : int
    """

    def __init__(self, l2: float = 300.0, *, solver: str = "auto", dtype: str = "auto",
                 max_items: int | None = None):
        self.l2 = l2
        self.solver = solver
        self.dtype = dtype
        self.max_items = max_items

    def get_params(self) -> dict:
        """Constructor settings (JSON-serialisable)."""
        return {"l2": self.l2, "solver": self.solver, "dtype": self.dtype, "max_items": self.max_items}

    def plan(self, X) -> dict:
        """What :meth:`fit` would solve for ``X`` and the memory it needs, without solving.

        Returns
        -------
        dict with ``solver``, ``dtype``, ``size`` (rows of the square system),
        ``bytes`` (the estimated peak of the solve) and ``condition_bound``.
        """
        l2 = check_float(self.l2, "l2", 0.0)
        X = _as_interactions(X, "X")
        return _plan(X, l2, self.solver, self.dtype)

    def fit(self, X) -> "EASE":
        """Solve for ``B_`` (primal) or ``Q_`` (dual).

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
            ``l2`` is negative or not finite, ``solver``/``dtype`` unknown,
            ``X`` has more than ``max_items`` columns, the solve needs more
            memory than is available (the message names the size and the
            memory), or the system is singular (only possible with ``l2 = 0``).
        """
        l2 = check_float(self.l2, "l2", 0.0)
        if self.max_items is not None:
            check_int(self.max_items, "max_items", 1)
        X = _as_interactions(X, "X")
        if not np.all(np.isfinite(X.data)):
            raise ElsaIndexError("X contains NaN or infinite values; expected finite interaction weights")
        n_users, n_items = X.shape
        if self.max_items is not None and n_items > self.max_items:
            raise ElsaIndexError(f"EASE was limited to max_items={self.max_items}, got {n_items} items; "
                                 "filter rare items or raise max_items")
        plan = _plan(X, l2, self.solver, self.dtype)
        side, size, dtype = plan["solver"], plan["size"], np.dtype(plan["dtype"])
        what = "item x item" if side == "primal" else "user x user"
        check_fits(plan["bytes"], f"EASE's {side} ({what}) system of {size:,} x {size:,} {dtype.name}",
                   hint="filter rare items or inactive users, or use dtype='float32'" if dtype == np.float64
                   else "filter rare items or inactive users")
        logger.info("EASE: %s system %d x %d in %s (condition bound %.3g), about %s", side, size, size, dtype.name,
                    plan["condition_bound"], format_bytes(plan["bytes"]))
        for attr in ("B_", "Q_", "X_", "weights_"):
            self.__dict__.pop(attr, None)
        X = X.astype(dtype)
        if side == "primal":
            G = _dense_gram(X.tocsc(), dtype, items=True)
            G[np.diag_indices(size)] += l2
            _spd_inverse(G)
            self.B_ = _ease_weights(G)
        else:
            Q = _dense_gram(X, dtype, items=False)
            Q[np.diag_indices(size)] += l2
            _spd_inverse(Q)
            self.Q_, self.X_ = Q, X
            # w_j = 1 / (1 - d_j) = 1 / (l2 P[j, j]).
            self.weights_ = 1.0 / (1.0 - _dual_diagonal(Q, X))
        self.solver_, self.dtype_, self.condition_bound_ = side, dtype.name, plan["condition_bound"]
        self.n_items_ = n_items
        logger.info("EASE fitted on %d users x %d items (l2=%g, %s)", n_users, n_items, l2, side)
        return self

    def score(self, X) -> np.ndarray:
        """Scores ``X @ B`` (the same for both solvers).

        Parameters
        ----------
        X : sparse matrix or array, shape (n_users, n_items)
            User histories.

        Returns
        -------
        ndarray of float32, shape (n_users, n_items)
        """
        if not hasattr(self, "B_") and not hasattr(self, "Q_"):
            _check_fitted(self, "B_")
        _check_score_input(X, self.n_items_)
        if hasattr(self, "B_"):
            X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, np.float32)
            return np.asarray(X @ self.B_, dtype=np.float32)
        dtype = self.Q_.dtype
        Xb = sp.csr_matrix(X, dtype=dtype)
        C = np.asarray((Xb @ self.X_.T).todense())           # (b, n_users) co-occurrences with training users
        V = np.asarray(self.X_.T @ (C @ self.Q_).T).T          # (x X^T) Q X, shape (b, n_items)
        x = Xb.toarray()
        V -= x                                                 # -(x - (x X^T) Q X) = -l2 x P
        V *= self.weights_
        V += x
        return np.ascontiguousarray(V, dtype=np.float32)

    def __repr__(self) -> str:
        return (f"EASE(l2={self.l2!r}, solver={self.solver!r}, dtype={self.dtype!r}, "
                f"max_items={self.max_items!r})")


#: largest condition-number bound for which dtype="auto" solves in float32
FLOAT32_MAX_CONDITION = 1e4
#: bytes of the sparse/dense work blocks used while building the Gram matrix and the dual diagonal
_BLOCK_BYTES = 1 << 27


def _plan(X: sp.csr_matrix, l2: float, solver: str, dtype: str) -> dict:
    """Which system (primal or dual), in which precision, and the bytes the solve needs."""
    if solver not in ("auto", "primal", "dual"):
        raise ElsaIndexError(f"solver must be 'auto', 'primal' or 'dual', got {solver!r}")
    if dtype not in ("auto", "float32", "float64"):
        raise ElsaIndexError(f"dtype must be 'auto', 'float32' or 'float64', got {dtype!r}")
    n_users, n_items = X.shape
    side = solver if solver != "auto" else ("dual" if n_users < n_items else "primal")
    size = n_items if side == "primal" else n_users
    # Gershgorin: every eigenvalue of X^T X (or X X^T, the same non-zero ones) is at most the
    # largest absolute row sum; |X|^T (|X| 1) gives them for X^T X, |X| (|X|^T 1) for X X^T.
    A = abs(X)
    sums = A.T @ (A @ np.ones(n_items)) if side == "primal" else A @ (A.T @ np.ones(n_users))
    top = float(sums.max()) if len(sums) else 0.0
    cond = math.inf if l2 == 0 else 1.0 + top / l2
    if dtype == "auto":
        dtype = "float32" if cond <= FLOAT32_MAX_CONDITION else "float64"
    item = np.dtype(dtype).itemsize
    # The square system (in place throughout), the work blocks, the converted copy of X, and for the
    # dual the kept training matrix and per-item vectors.
    need = float(size) ** 2 * item + 2 * _BLOCK_BYTES + 3 * X.nnz * (item + 8) + 4 * n_items * 8
    return {"solver": side, "dtype": dtype, "size": size, "bytes": need, "condition_bound": cond}


def _dense_gram(X: sp.spmatrix, dtype, *, items: bool) -> np.ndarray:
    """Dense ``X^T X`` (``items``, X in CSC) or ``X X^T`` (X in CSR), built in row blocks.

    No sparse copy of the whole product is formed (for a dense-ish Gram
    matrix it would take 12 bytes per entry, more than the dense array).
    """
    n = X.shape[1] if items else X.shape[0]
    G = np.empty((n, n), dtype=dtype)
    step = max(1, _BLOCK_BYTES // (12 * max(1, n)))
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        block = X[:, i0:i1].T @ X if items else X[i0:i1] @ X.T
        G[i0:i1] = block.toarray()
    return G


def _spd_inverse(G: np.ndarray) -> np.ndarray:
    """Invert a symmetric positive definite C-contiguous array in place; returns ``G``.

    Cholesky factor, then the inverse from it (LAPACK potrf + potri via
    PyTorch), both written into ``G``'s own memory: the transpose of a
    C-ordered symmetric array is the same matrix in the column-major order
    LAPACK works in, so no second n x n array is made.
    """
    import torch

    if not (G.flags.c_contiguous and G.flags.writeable) or G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError("internal: _spd_inverse needs a writable C-contiguous square array")
    A = torch.from_numpy(G).mT
    info = torch.zeros((), dtype=torch.int32)
    torch.linalg.cholesky_ex(A, upper=False, out=(A, info))
    if int(info) != 0:
        raise ElsaIndexError(
            "X^T X + l2 I is singular (an item without interactions, or linearly dependent "
            "items, with l2 = 0); use l2 > 0"
        )
    torch.cholesky_inverse(A, upper=False, out=A)
    return G


def _ease_weights(P: np.ndarray) -> np.ndarray:
    """``B = I - P / diag(P)`` computed in P's memory; float32 (a float64 P is downcast in place)."""
    n = P.shape[0]
    diag = np.diag(P).copy()
    step = max(1, _BLOCK_BYTES // (8 * n))
    for i0 in range(0, n, step):
        P[i0 : i0 + step] /= -diag[None, :]
    P[np.diag_indices(n)] = 0.0
    return P if P.dtype == np.float32 else _downcast_in_place(P, step)


def _downcast_in_place(A: np.ndarray, step: int) -> np.ndarray:
    """A float32 copy of the float64 C-contiguous square ``A``, written over ``A``'s own buffer.

    Row block ``[i0, i1)`` of the result occupies float32 slots ``[n*i0, n*i1)``,
    which lie at or before float64 row ``i1``: only rows already converted are
    overwritten. The buffer is then shrunk to the float32 size (``realloc``
    returns the upper half to the system), so no second n x n array exists.
    """
    n = A.shape[0]
    flat32 = A.reshape(-1).view(np.float32)
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        block = A[i0:i1].astype(np.float32)
        flat32[n * i0 : n * i1] = block.ravel()
    del flat32
    # No view of A is alive here (the caller's names refer to A itself), so resizing is safe; references
    # to A (not views) are what refcheck would count, hence refcheck=False.
    A.resize((n * n + 1) // 2, refcheck=False)
    return A.view(np.float32)[: n * n].reshape(n, n)


def _dual_diagonal(Q: np.ndarray, X: sp.csr_matrix) -> np.ndarray:
    """``d_j = sum_u X[u, j] (Q X)[u, j]``, in blocks of users (``Q X`` is never held whole)."""
    n_users, n_items = X.shape
    d = np.zeros(n_items, dtype=Q.dtype)
    XT = X.T.tocsr()
    step = max(1, _BLOCK_BYTES // (Q.dtype.itemsize * max(1, n_items)))
    for u0 in range(0, n_users, step):
        u1 = min(n_users, u0 + step)
        QX = XT @ Q[u0:u1].T                               # (n_items, b) = ((Q X)[u0:u1])^T
        d += np.asarray(X[u0:u1].multiply(QX.T).sum(axis=0)).ravel()
    return d


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
