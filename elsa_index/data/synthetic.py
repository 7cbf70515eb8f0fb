"""Synthetic implicit-feedback logs with planted cluster structure.

``make_synthetic`` draws a seeded interaction log whose structure is known:
items belong to latent clusters, item popularity follows a power law, and each
user mostly consumes popular items of one to three preferred clusters. It is
fully vectorised (numpy; the only Python loops run over blocks of users and
over sampling rounds), so a log of a million users over a million items is a
matter of tens of seconds.

Generative model
----------------
1. Items ``"i0" .. "i{n_items-1}"`` are spread over ``n_clusters`` clusters in
   equal shares (sizes differ by at most one), at random.
2. Each item gets a random popularity rank ``r`` (0 = most popular) and the
   weight ``(r + 1) ** -popularity_exponent`` (Zipf-like; exponent 0 is
   uniform).
3. Each user ``"u{k}"`` prefers 1, 2 or 3 distinct clusters (uniformly; at
   most ``n_clusters``) with Dirichlet(1) mixture weights.
4. History lengths are lognormal with mean ``mean_history`` and log-scale
   spread ``history_sigma``, rounded and clipped to
   ``[MIN_HISTORY, max(MIN_HISTORY, max_history_fraction * n_items)]``.
5. Each interaction is, with probability ``cluster_affinity``, an item of one
   of the user's clusters (cluster chosen by the mixture weights, item by
   popularity within the cluster), otherwise an item from the global
   popularity distribution. Repeated items are redrawn, so (user, item) pairs
   are unique. A user whose history cannot be completed this way within a few
   rounds (a tiny cluster, a long history) is topped up with uniformly random
   unseen items.
6. Timestamps (int64 seconds) start at a random time in 2020-2021 per user and
   increase strictly along the history; every rating is 1.0.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, overload

import numpy as np

from .._checks import check_float, check_int
from .log import Log
from ..errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["make_synthetic", "synthetic_index", "MIN_HISTORY"]

#: Shortest history a synthetic user gets.
MIN_HISTORY = 5

# Rounds drawn from the model's distribution before unfilled histories are
# topped up uniformly, and the oversampling factor of each round.
_MODEL_ROUND_FACTORS = (1.0, 2.0, 4.0, 8.0)
_MAX_UNIFORM_ROUNDS = 200
# Users are generated in blocks of about this many interactions (bounds memory).
_BLOCK_INTERACTIONS = 1 << 21
_T0 = 1_577_836_800  # 2020-01-01T00:00:00Z
_START_SPAN = 2 * 365 * 86_400
_MEAN_GAP = 3_600.0


# The return type depends on ``return_clusters``; the other keyword options
# (``**options``) are spelled out once, in the implementation below.
@overload
def make_synthetic(n_users: int = ..., n_items: int = ..., n_clusters: int = ..., *,
                   return_clusters: Literal[False] = ..., **options: Any) -> Log: ...


@overload
def make_synthetic(n_users: int = ..., n_items: int = ..., n_clusters: int = ..., *,
                   return_clusters: Literal[True], **options: Any) -> tuple[Log, np.ndarray]: ...


def make_synthetic(
    n_users: int = 5000,
    n_items: int = 2000,
    n_clusters: int = 20,
    *,
    mean_history: float = 30.0,
    popularity_exponent: float = 1.0,
    cluster_affinity: float = 0.85,
    history_sigma: float = 0.75,
    max_history_fraction: float = 0.1,
    seed: int = 0,
    return_clusters: bool = False,
):
    """Generate a seeded implicit-feedback log with planted cluster structure.

    See the module docstring for the generative model.

    Parameters
    ----------
    n_users : int, >= 1
        Number of users; every one gets at least ``MIN_HISTORY`` (5) items.
    n_items : int, >= 1
        Catalogue size. Items that are never drawn do not appear in the log.
        Must satisfy ``max_history_fraction * n_items >= 5``.
    n_clusters : int, in [1, n_items]
        Number of latent item clusters.
    mean_history : float, > 0
        Mean of the lognormal history length (before rounding and clipping).
    popularity_exponent : float, in [0, 10]
        Zipf exponent of item popularity; 0 gives uniform popularity.
    cluster_affinity : float, in [0, 1]
        Probability that an interaction comes from the user's own clusters
        rather than from the global popularity distribution.
    history_sigma : float, in [0, 5]
        Standard deviation of the log history length (0: every user gets
        ``round(mean_history)`` items, clipped).
    max_history_fraction : float, in (0, 0.5]
        Longest history as a fraction of the catalogue.
    seed : int, >= 0
        Seed of ``numpy.random.default_rng``; the same arguments and seed
        always give the same log.
    return_clusters : bool
        Also return the planted cluster of every item.

    Returns
    -------
    log : Log
        String ids ``"u{k}"``/``"i{j}"`` (no zero padding), ``rating`` all 1.0
        (float32), ``timestamp`` int64 seconds strictly increasing within
        each user, ``split`` None. Rows are grouped by user in increasing
        user number and, within a user, in time order.
    item_cluster : ndarray of int64, shape (n_items,)
        Only with ``return_clusters=True``: ``item_cluster[j]`` is the cluster
        (in ``[0, n_clusters)``) of item ``"i{j}"``. To align it with an
        ``Interactions``' items use
        ``item_cluster[synthetic_index(inter.item_ids.ids)]``
        (``IdMap`` sorts ids as strings, so ``"i10"`` precedes ``"i2"``).

    Raises
    ------
    DataError
        An argument is out of range or of the wrong type; the message names
        it and the expected range.
    """
    n_users = check_int(n_users, "n_users", 1, error=DataError)
    n_items = check_int(n_items, "n_items", 1, error=DataError)
    n_clusters = check_int(n_clusters, "n_clusters", 1, error=DataError)
    if n_clusters > n_items:
        raise DataError(f"n_clusters must be in [1, n_items={n_items}], got {n_clusters}")
    mean_history = check_float(mean_history, "mean_history", 0.0, low_open=True, error=DataError)
    popularity_exponent = check_float(popularity_exponent, "popularity_exponent", 0.0, 10.0, error=DataError)
    cluster_affinity = check_float(cluster_affinity, "cluster_affinity", 0.0, 1.0, error=DataError)
    history_sigma = check_float(history_sigma, "history_sigma", 0.0, 5.0, error=DataError)
    max_history_fraction = check_float(max_history_fraction, "max_history_fraction", 0.0, 0.5, low_open=True, error=DataError)
    seed = check_int(seed, "seed", 0, error=DataError)
    max_history = int(max_history_fraction * n_items)
    if max_history < MIN_HISTORY:
        need = int(np.ceil(MIN_HISTORY / max_history_fraction))
        raise DataError(
            f"n_items={n_items} is too small for histories of at least {MIN_HISTORY} items with "
            f"max_history_fraction={max_history_fraction}; expected n_items >= {need} "
            "(or a larger max_history_fraction, at most 0.5)"
        )

    rng = np.random.default_rng(seed)

    # Items: clusters (equal shares, random membership) and Zipf popularity.
    item_cluster = rng.permutation(np.arange(n_items, dtype=np.int64) % n_clusters)
    rank = rng.permutation(n_items)
    weight = (rank + 1.0) ** -popularity_exponent
    # One CDF over items ordered by cluster serves both the global and the
    # per-cluster distributions (a cluster is a contiguous range of it).
    order = np.argsort(item_cluster, kind="stable")
    cdf = np.cumsum(weight[order])
    cluster_end = np.cumsum(np.bincount(item_cluster, minlength=n_clusters))
    cluster_start = cluster_end - np.bincount(item_cluster, minlength=n_clusters)
    mass_hi = cdf[cluster_end - 1]
    mass_lo = np.where(cluster_start > 0, cdf[np.maximum(cluster_start - 1, 0)], 0.0)

    # Users: 1-3 distinct preferred clusters with Dirichlet(1) weights.
    k_max = min(3, n_clusters)
    n_pref = rng.integers(1, k_max + 1, size=n_users)
    pref = _distinct_clusters(rng, n_users, n_clusters, k_max)
    mix = rng.standard_exponential((n_users, k_max)) * (np.arange(k_max) < n_pref[:, None])
    mix_cdf = np.cumsum(mix / mix.sum(axis=1, keepdims=True), axis=1)
    mix_cdf[:, -1] = 1.0

    # History lengths: lognormal with the requested mean, clipped.
    mu = np.log(mean_history) - history_sigma**2 / 2.0
    lengths = np.rint(rng.lognormal(mu, history_sigma, size=n_users)) if history_sigma else np.full(n_users, np.rint(mean_history))
    lengths = np.clip(lengths, MIN_HISTORY, max_history).astype(np.int64)

    def draw(users: np.ndarray) -> np.ndarray:
        """One item per entry of ``users`` from the model's distribution."""
        m = len(users)
        target = rng.random(m)
        own = rng.random(m) < cluster_affinity
        lo = np.zeros(m)
        hi = np.full(m, cdf[-1])
        first = np.zeros(m, np.int64)
        last = np.full(m, n_items - 1, np.int64)
        if own.any():
            cu = users[own]
            s = rng.random(len(cu))
            slot = (s[:, None] >= mix_cdf[cu, :-1]).sum(axis=1)
            c = pref[cu, slot]
            lo[own], hi[own] = mass_lo[c], mass_hi[c]
            first[own], last[own] = cluster_start[c], cluster_end[c] - 1
        pos = np.searchsorted(cdf, lo + target * (hi - lo), side="right")
        return order[np.clip(pos, first, last)]

    # Rows come out grouped by user, lengths[u] rows for user u, in order.
    items_out = []
    bounds = _blocks(lengths, _BLOCK_INTERACTIONS)
    for b0, b1 in zip(bounds[:-1], bounds[1:]):
        items_out.append(_fill_block(rng, np.arange(b0, b1), lengths[b0:b1], n_items, draw))
    i = np.concatenate(items_out)
    del items_out
    n = len(i)

    # Timestamps: random start per user, then strictly increasing gaps.
    timestamp = rng.exponential(_MEAN_GAP, size=n).astype(np.int64)
    timestamp += 1
    np.cumsum(timestamp, out=timestamp)
    row_start = np.cumsum(lengths) - lengths
    start = _T0 + rng.integers(0, _START_SPAN, size=n_users)
    timestamp += np.repeat(start - np.where(row_start > 0, timestamp[np.maximum(row_start - 1, 0)], 0), lengths)

    user = np.repeat(_names("u", n_users), lengths)
    item = _names("i", n_items)[i]
    log = Log(user, item, np.ones(n, np.float32), timestamp, None)
    logger.info(
        "synthetic log: %d users, %d items (%d in the log), %d clusters, %d interactions",
        n_users, n_items, np.count_nonzero(np.bincount(i, minlength=n_items)), n_clusters, n,
    )
    if return_clusters:
        return log, item_cluster
    return log


def synthetic_index(ids) -> np.ndarray:
    """Numbers of synthetic ids: ``"i42"`` -> 42, ``"u7"`` -> 7 (int64 array).

    Use it to align ``make_synthetic``'s ``item_cluster`` with any list of
    item ids, e.g. ``item_cluster[synthetic_index(inter.item_ids.ids)]``.

    Raises
    ------
    DataError
        An id is not a letter followed by digits.
    """
    arr = np.asarray(ids).astype(str)
    if arr.size == 0:
        return np.zeros(arr.shape, np.int64)
    digits = np.char.lstrip(arr, "uiUI")
    ok = np.char.isdigit(digits) & (np.char.str_len(arr) - np.char.str_len(digits) == 1)
    if not ok.all():
        bad = arr[~ok].ravel()[:5].tolist()
        raise DataError(f"not synthetic ids (expected 'u<number>' or 'i<number>'): {bad}")
    return digits.astype(np.int64)


# ------------------------------------------------------------------- helpers


def _distinct_clusters(rng: np.random.Generator, n_users: int, n_clusters: int, k: int) -> np.ndarray:
    """``k`` distinct uniform clusters per user, shape (n_users, k), int64."""
    out = np.empty((n_users, k), np.int64)
    for j in range(k):
        c = rng.integers(0, n_clusters - j, size=n_users)
        # Skip past the clusters already taken, in increasing order.
        taken = np.sort(out[:, :j], axis=1)
        for t in range(j):
            c += c >= taken[:, t]
        out[:, j] = c
    return out


def _names(prefix: str, n: int) -> np.ndarray:
    """``prefix + str(k)`` for k < n, in the narrowest unicode dtype."""
    width = len(prefix) + len(str(max(n - 1, 0)))
    return np.char.add(prefix, np.arange(n).astype(str)).astype(f"<U{width}")


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Sorted positions of the first occurrence of each distinct key."""
    if len(keys) == 0:
        return np.zeros(0, np.int64)
    perm = np.argsort(keys)
    sk = keys[perm]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    first = np.minimum.reduceat(perm, starts)
    first.sort()
    return first


def _member(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean mask: which entries of ``a`` occur in ``b`` (int64 arrays)."""
    if len(b) == 0:
        return np.zeros(len(a), bool)
    bs = np.sort(b)
    pos = np.minimum(np.searchsorted(bs, a), len(bs) - 1)
    return bs[pos] == a


def _blocks(lengths: np.ndarray, per_block: int) -> np.ndarray:
    """User boundaries [0, ..., n_users] of blocks of about ``per_block`` rows."""
    ends = np.cumsum(lengths)
    cuts = np.searchsorted(ends, np.arange(per_block, ends[-1], per_block), side="right")
    return np.unique(np.concatenate([[0], cuts, [len(lengths)]]))


def _fill_block(rng, users, lengths, n_items, draw):
    """Distinct items for each user of a block: ``lengths[k]`` items of user
    ``users[k]`` in draw order, users in block order (int64, concatenated)."""
    n_block = len(users)
    local = np.arange(n_block)
    need = lengths.copy()
    acc_u = np.zeros(0, np.int64)
    acc_i = np.zeros(0, np.int64)
    n_rounds = len(_MODEL_ROUND_FACTORS) + _MAX_UNIFORM_ROUNDS
    for rnd in range(n_rounds):
        active = local[need > 0]
        if active.size == 0:
            break
        if rnd < len(_MODEL_ROUND_FACTORS):
            factor, uniform = _MODEL_ROUND_FACTORS[rnd], False
        else:
            factor, uniform = 2.0, True
        counts = np.ceil(need[active] * factor).astype(np.int64)
        du = np.repeat(active, counts)
        di = rng.integers(0, n_items, size=len(du)) if uniform else draw(users[du])
        keys = du * n_items + di
        if acc_u.size:
            prior = need[acc_u] > 0
            fresh = ~_member(keys, acc_u[prior] * n_items + acc_i[prior])
            du, di, keys = du[fresh], di[fresh], keys[fresh]
        # First occurrence of each pair, back in draw (user-grouped) order.
        first = _first_occurrences(keys)
        du, di = du[first], di[first]
        # Keep at most need[u] per user: rank within the user's group.
        idx = np.arange(len(du))
        group_start = np.maximum.accumulate(np.where(np.r_[True, du[1:] != du[:-1]], idx, 0)) if len(du) else idx
        keep = (idx - group_start) < need[du]
        du, di = du[keep], di[keep]
        need -= np.bincount(du, minlength=n_block)
        acc_u = np.concatenate([acc_u, du])
        acc_i = np.concatenate([acc_i, di])
        if uniform and rnd == len(_MODEL_ROUND_FACTORS):
            logger.debug("topping up %d users with uniform items", active.size)
    if (need > 0).any():  # pragma: no cover - probability ~0 with fraction <= 0.5
        raise RuntimeError("synthetic sampler failed to complete histories; this is a bug")
    return acc_i[np.argsort(acc_u, kind="stable")]
