"""Recommendation-quality metrics against held-out interactions.

The flow is ``score_fn`` (a model: histories -> dense scores) -> ``topk``
(rank, skipping the history) -> per-user ``recall_at_k`` /
``hit_recall_at_k`` / ``ndcg_at_k`` against the held-out targets.
``evaluate`` runs the whole flow in batches of users, so that a dense score
matrix never has more than ``batch_size`` rows.

Two recalls are offered and never mixed up:

- ``recall`` is the normalised Recall@k of Liang et al. (VAE-CF), also used by
  EASE and ELSA: hits in the top-k divided by ``min(k, |targets|)``, so that a
  perfect ranking always scores 1.
- ``hit_recall`` is hits divided by ``|targets|``, the plain Recall@k of the
  LightGCN / KGAT papers.

Users with no targets have no defined recall or NDCG: their per-user value is
NaN and they are left out of every mean.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from ._checks import check_int, check_k
from .errors import ElsaIndexError
from .topk import topk_unchecked

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "hits_at_k",
    "recall_at_k",
    "hit_recall_at_k",
    "ndcg_at_k",
    "evaluate",
    "retrieval_recall",
    "metric_legend",
    "check_metrics",
]

#: Metric names understood by :func:`evaluate` (all: higher is better).
METRICS = ("recall", "hit_recall", "ndcg")

#: What each metric divides by, as printed beside reported numbers (the two recalls are easily confused).
DEFINITIONS = {
    "recall": "recall@k = hits in the top k / min(k, |targets|)",
    "hit_recall": "hit_recall@k = hits in the top k / |targets|",
    "ndcg": "ndcg@k = DCG@k / ideal DCG@k (binary relevance)",
}


def check_metrics(names: Sequence[str]) -> list[tuple[str, int]]:
    """``[("hit_recall", 20), ...]`` for metric names with explicit cut-offs; ElsaIndexError naming a bad one."""
    return _parse_metrics(names, ())


def metric_legend(names) -> str:
    """One line defining the recalls among ``names`` (e.g. ``"recall@20"``), or ``""`` when there are none.

    ``recall@k`` (normalised by ``min(k, |targets|)``, the VAE-CF / EASE /
    ELSA papers') and ``hit_recall@k`` (divided by ``|targets|``, the
    LightGCN / KGAT papers') are printed with their definitions so that a
    number is never compared with a table using the other one.
    """
    kinds = []
    for name in names:
        kind = str(name).partition("@")[0]
        if kind in ("recall", "hit_recall") and kind not in kinds:
            kinds.append(kind)
    return "; ".join(DEFINITIONS[k] for k in kinds)


# ---------------------------------------------------------------- per-user metrics


def hits_at_k(topk_ids: np.ndarray, targets: sp.spmatrix) -> np.ndarray:
    """Which ranked items are targets.

    Parameters
    ----------
    topk_ids : ndarray of int, shape (n_users, k)
        Ranked item indices per user; -1 (padding) is never a hit.
    targets : sparse matrix, shape (n_users, n_items)
        Stored non-zero entries are the relevant items.

    Returns
    -------
    ndarray of bool, shape (n_users, k)
    """
    ids = _as_ids(topk_ids)
    t = _canonical_targets(targets, ids.shape[0])
    return _hits(ids, t)


def recall_at_k(topk_ids: np.ndarray, targets: sp.spmatrix, k: int) -> np.ndarray:
    """Normalised Recall@k (Liang et al. 2018): hits / min(k, |targets|).

    Parameters
    ----------
    topk_ids : ndarray of int, shape (n_users, >= k)
        Ranked item indices, best first; only the first ``k`` columns are
        used (all of them when the catalogue is smaller than ``k``).
    targets : sparse matrix, shape (n_users, n_items)
    k : int >= 1

    Returns
    -------
    ndarray of float64, shape (n_users,)
        NaN for users with no targets.
    """
    hits, n_t, k = _prepare(topk_ids, targets, k)
    return _recall(hits, n_t, k)


def hit_recall_at_k(topk_ids: np.ndarray, targets: sp.spmatrix, k: int) -> np.ndarray:
    """Plain Recall@k (LightGCN / KGAT): hits in the top-k / |targets|.

    Parameters and return value as in :func:`recall_at_k`.
    """
    hits, n_t, k = _prepare(topk_ids, targets, k)
    return _hit_recall(hits, n_t, k)


def ndcg_at_k(topk_ids: np.ndarray, targets: sp.spmatrix, k: int) -> np.ndarray:
    """NDCG@k with binary relevance.

    DCG = sum over hits at 0-based rank r < k of 1 / log2(r + 2); the ideal
    DCG puts ``min(k, |targets|)`` hits at the top ranks.

    Parameters and return value as in :func:`recall_at_k`.
    """
    hits, n_t, k = _prepare(topk_ids, targets, k)
    return _ndcg(hits, n_t, k)


def _prepare(topk_ids, targets, k):
    ids = _as_ids(topk_ids)
    k = check_k(k, "k")
    t = _canonical_targets(targets, ids.shape[0])
    return _hits(ids[:, :k], t), np.diff(t.indptr), k


def _hits(ids: np.ndarray, t: sp.csr_matrix) -> np.ndarray:
    """Membership of ``ids`` in rows of canonical CSR ``t`` via sorted keys."""
    n_rows, n_items = t.shape
    if ids.size == 0 or t.nnz == 0:
        return np.zeros(ids.shape, bool)
    # Canonical CSR: (row, col) keys are sorted, so searchsorted finds them.
    keys = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(t.indptr)) * n_items + t.indices
    valid = (ids >= 0) & (ids < n_items)
    query = np.arange(n_rows, dtype=np.int64)[:, None] * n_items + np.where(valid, ids, 0)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return valid & (keys[pos] == query)


def _recall(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    denom = np.minimum(k, n_targets).astype(np.float64)
    return _safe_divide(hits[:, :k].sum(axis=1), denom)


def _hit_recall(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    return _safe_divide(hits[:, :k].sum(axis=1), n_targets.astype(np.float64))


def _ndcg(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    h = hits[:, :k]
    discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = h @ discount[: h.shape[1]]
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    idcg = ideal[np.minimum(k, n_targets)]
    return _safe_divide(dcg, idcg)


def _safe_divide(num: np.ndarray, denom: np.ndarray) -> np.ndarray:
    """num / denom as float64, NaN where denom is 0 (users with no targets)."""
    out = np.full(len(denom), np.nan)
    ok = denom > 0
    out[ok] = num[ok] / denom[ok]
    return out


# --------------------------------------------------------------------- evaluate


def evaluate(
    score_fn: Callable[[sp.csr_matrix], np.ndarray],
    fold_in: sp.spmatrix,
    targets: sp.spmatrix,
    *,
    ks: Sequence[int] = (20, 50, 100),
    batch_size: int = 1000,
    metrics: Sequence[str] = ("recall", "ndcg"),
    exclude_fold_in: bool = True,
    return_per_user: bool = False,
):
    """Rank items for held-out users in batches and score the rankings.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(X)`` with ``X`` a float32 CSR matrix of shape (b, n_items)
        (a batch of fold-in histories) returns real scores of shape
        (b, n_items), higher is better (an ndarray, or anything
        ``np.asarray`` accepts, or a sparse matrix).
    fold_in : sparse matrix, shape (n_users, n_items)
        The users' input histories.
    targets : sparse matrix, shape (n_users, n_items)
        The users' held-out items (stored non-zeros are relevant).
    ks : sequence of int >= 1
        Cut-offs for every metric named without one.
    batch_size : int >= 1
        Users scored at once; peak memory is about ``batch_size * n_items``
        scores plus the model's own.
    metrics : sequence of str
        Names from :data:`METRICS` (``"recall"``, ``"hit_recall"``,
        ``"ndcg"``), each evaluated at every k in ``ks``, or with an explicit
        cut-off such as ``"hit_recall@20"`` for that k only.
    exclude_fold_in : bool
        Rank without the users' own history items (the usual protocol).
    return_per_user : bool
        Also return the per-user values.

    Returns
    -------
    means : dict of str -> float
        ``{"recall@20": ..., "ndcg@100": ...}``, the mean over users with at
        least one target (NaN if there are none), in the order requested.
    per_user : dict of str -> ndarray of float64, shape (n_users,)
        Only with ``return_per_user=True``; NaN for users with no targets.

    Raises
    ------
    ElsaIndexError
        Shapes disagree, a metric name or k is invalid, or ``score_fn``
        returns the wrong shape or NaN.

    Notes
    -----
    The top-k is computed once per batch at the largest cut-off and every
    metric reads its prefix, so the results do not depend on ``batch_size``.
    """
    fold_in = _as_csr(fold_in, "fold_in")
    targets = _as_csr(targets, "targets")
    if fold_in.shape != targets.shape:
        raise ElsaIndexError(
            "fold_in and targets must have the same shape (n_users, n_items); "
            f"got fold_in {fold_in.shape} and targets {targets.shape}"
        )
    check_int(batch_size, "batch_size", 1)
    requested = _parse_metrics(metrics, ks)
    n_users, n_items = fold_in.shape
    k_max = max(k for _, k in requested)
    fold_in = fold_in.astype(np.float32)
    targets = _canonical_targets(targets, n_users)
    n_targets = np.diff(targets.indptr)
    overlap = targets.multiply(fold_in).nnz
    if overlap and exclude_fold_in:
        logger.warning(
            "%d target entries are also in the fold-in histories; they are excluded from "
            "the ranking and can never be hit", overlap,
        )

    per_user = {f"{name}@{k}": np.full(n_users, np.nan) for name, k in requested}
    for start in range(0, n_users, batch_size):
        stop = min(start + batch_size, n_users)
        X = fold_in[start:stop]
        scores = _call_score_fn(score_fn, X, n_items, start, stop)
        ids, _ = topk_unchecked(scores, k_max, X if exclude_fold_in else None, copy=False)
        hits = _hits(ids, targets[start:stop])
        nt = n_targets[start:stop]
        for name, k in requested:
            per_user[f"{name}@{k}"][start:stop] = _METRIC_FNS[name](hits, nt, k)
        logger.debug("evaluated users %d-%d of %d", start, stop, n_users)

    counted = n_targets > 0
    if not counted.all():
        logger.info("%d of %d users have no targets and are left out of the means",
                    int((~counted).sum()), n_users)
    means = {
        key: float(vals[counted].mean()) if counted.any() else float("nan")
        for key, vals in per_user.items()
    }
    if return_per_user:
        return means, per_user
    return means


_METRIC_FNS = {"recall": _recall, "hit_recall": _hit_recall, "ndcg": _ndcg}


def _parse_metrics(metrics: Sequence[str], ks: Sequence[int]) -> list[tuple[str, int]]:
    """``["recall", "ndcg@10"]`` -> ``[("recall", k) for k in ks] + [("ndcg", 10)]``."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    ks = [check_k(k, "each of ks") for k in ks]
    out: list[tuple[str, int]] = []
    for m in metrics:
        match = re.fullmatch(r"([a-z_]+)(?:@(\d+))?", str(m))
        if match is None or match.group(1) not in _METRIC_FNS:
            raise ElsaIndexError(
                f"unknown metric {m!r}; expected one of {list(METRICS)}, optionally with '@k'"
            )
        name, at = match.groups()
        if at is not None:
            cut = [check_k(int(at), f"the cut-off of {m!r}")]
        elif ks:
            cut = ks
        else:
            raise ElsaIndexError(f"metric {m!r} has no cut-off and ks is empty; give ks or '{m}@k'")
        for k in cut:
            if (name, k) not in out:
                out.append((name, k))
    if not out:
        raise ElsaIndexError("no metrics requested; expected at least one of " f"{list(METRICS)}")
    return out


def _call_score_fn(score_fn, X: sp.csr_matrix, n_items: int, start: int, stop: int) -> np.ndarray:
    """Scores for one batch, checked, as a fresh writable float array."""
    out = score_fn(X)
    if sp.issparse(out):
        out = out.toarray()
    out = np.asarray(out)
    expected = (stop - start, n_items)
    if out.shape != expected:
        raise ElsaIndexError(
            f"score_fn returned scores of shape {out.shape} for users {start}-{stop}; "
            f"expected (batch users, n_items) = {expected}"
        )
    if out.dtype.kind not in "biuf":
        raise ElsaIndexError(f"score_fn must return real numbers, got dtype {out.dtype}")
    dtype = np.float32 if out.dtype.kind == "f" and out.dtype.itemsize <= 4 else np.float64
    # A copy: the exclusion mask is written into it, and score_fn may have
    # handed out an array it still owns.
    out = np.array(out, dtype=dtype, copy=True)
    if np.isnan(out).any():
        raise ElsaIndexError(f"score_fn returned NaN scores for users {start}-{stop}")
    return out


# ------------------------------------------------------------------- validation


def _as_csr(m, name: str) -> sp.csr_matrix:
    if not sp.issparse(m):
        raise ElsaIndexError(
            f"{name} must be a scipy sparse matrix (users x items), got {type(m).__name__}"
        )
    if m.ndim != 2:
        raise ElsaIndexError(f"{name} must be 2-D (users x items), got shape {m.shape}")
    return sp.csr_matrix(m)


def _canonical_targets(targets, n_rows: int) -> sp.csr_matrix:
    """A copy of ``targets`` with sorted, unique, non-zero entries."""
    t = _as_csr(targets, "targets").copy()
    if t.shape[0] != n_rows:
        raise ElsaIndexError(
            f"targets has {t.shape[0]} rows but the ranking has {n_rows}; expected one row per user"
        )
    t.sum_duplicates()
    t.eliminate_zeros()
    return t


def _as_ids(topk_ids) -> np.ndarray:
    ids = np.asarray(topk_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ElsaIndexError(
            f"topk_ids must be a 2-D integer array (n_users, k), got shape {ids.shape} dtype {ids.dtype}"
        )
    return ids.astype(np.int64, copy=False)


# ------------------------------------------------------------- retrieval recall


def retrieval_recall(
    true_scores_of_ids: np.ndarray,
    ids: np.ndarray,
    exact_scores: np.ndarray,
    k: int,
    *,
    rtol: float = 1e-5,
) -> np.ndarray:
    """Tie-tolerant retrieval recall@k of approximate results against the exact top-k.

    A returned item counts as correct when its *exact* score is at least the
    exact k-th best score (within ``rtol``), so an item that ties with the
    k-th exact result is as good as it (cf. faiss ``check_ref_knn_with_draws``).

    Parameters
    ----------
    true_scores_of_ids : (n, >=k) exact scores of the returned ``ids``.
    ids : (n, >=k) int, returned items (-1 = padding, never correct).
    exact_scores : (n, >=k) exact top scores, descending (-inf = padding).
    k : cut-off.

    Returns
    -------
    ndarray float64 (n,): correct results / min(k, number of exact results).
    """
    k = check_k(k, "k")
    ids = np.asarray(ids)[:, :k]
    got = np.asarray(true_scores_of_ids, dtype=np.float64)[:, :k]
    ex = np.asarray(exact_scores, dtype=np.float64)[:, :k]
    if not (ids.shape == got.shape and ids.shape[0] == ex.shape[0]):
        raise ElsaIndexError(f"shapes differ: ids {ids.shape}, their scores {got.shape}, exact scores {ex.shape}")
    n_exact = np.isfinite(ex).sum(axis=1)
    kth = np.where(n_exact > 0, ex[np.arange(len(ex)), np.maximum(n_exact - 1, 0)], np.inf)
    ok = (ids >= 0) & (got >= kth[:, None] - rtol * np.maximum(1.0, np.abs(kth[:, None])))
    return _safe_divide(ok.sum(axis=1).astype(np.float64), np.minimum(k, n_exact).astype(np.float64))
