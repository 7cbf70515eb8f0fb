"""Tests for elsa_index.data.synthetic: determinism, ranges, planted structure, speed."""

from __future__ import annotations


import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.data import Interactions, Log, filter_log
from elsa_index.errors import DataError, ElsaIndexError
from elsa_index.data.synthetic import MIN_HISTORY, make_synthetic, synthetic_index


@pytest.fixture(scope="module")
def default_log():
    return make_synthetic(2000, 1000, 10, seed=3, return_clusters=True)


def _user_cluster_counts(log: Log, item_cluster: np.ndarray, n_clusters: int) -> np.ndarray:
    """users x clusters matrix of interaction counts."""
    inter = Interactions.from_log(log)
    cl = item_cluster[synthetic_index(inter.item_ids.ids)]
    onehot = sp.csr_matrix((np.ones(len(cl)), (np.arange(len(cl)), cl)), shape=(len(cl), n_clusters))
    return (inter.matrix @ onehot).toarray()


def _same_cluster_rate(counts: np.ndarray) -> float:
    """Mean over users of P(two distinct items of the user share a cluster)."""
    n = counts.sum(axis=1)
    return float(np.mean(((counts**2).sum(axis=1) - n) / (n * (n - 1))))


# ------------------------------------------------------------- basic output


def test_default_call_returns_a_log_with_expected_columns():
    log = make_synthetic(300, 500, 5, seed=1)
    assert isinstance(log, Log)
    assert log.user.dtype.kind == "U" and log.item.dtype.kind == "U"
    assert log.rating.dtype == np.float32 and np.all(log.rating == 1.0)
    assert log.timestamp.dtype == np.int64
    assert log.split is None
    assert len(log.user) == len(log.item) == len(log.rating) == len(log.timestamp) == len(log)
    # Every user appears, ids follow the documented pattern and range.
    assert set(np.unique(log.user)) == {f"u{k}" for k in range(300)}
    assert synthetic_index(log.item).min() >= 0 and synthetic_index(log.item).max() < 500
    assert np.all(np.char.startswith(log.item, "i"))


def test_same_seed_is_deterministic_and_other_seeds_differ():
    a = make_synthetic(400, 600, 6, seed=7)
    b = make_synthetic(400, 600, 6, seed=7)
    c = make_synthetic(400, 600, 6, seed=8)
    for col in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    assert len(a) != len(c) or not np.array_equal(a.item, c.item)
    assert not np.array_equal(a.item[:50], c.item[:50])


def test_return_clusters_gives_the_same_log_plus_balanced_clusters():
    log, clusters = make_synthetic(200, 503, 7, seed=2, return_clusters=True)
    plain = make_synthetic(200, 503, 7, seed=2)
    np.testing.assert_array_equal(log.item, plain.item)
    np.testing.assert_array_equal(log.timestamp, plain.timestamp)
    assert clusters.shape == (503,) and clusters.dtype == np.int64
    sizes = np.bincount(clusters, minlength=7)
    assert len(sizes) == 7 and sizes.min() >= 503 // 7 and sizes.max() <= 503 // 7 + 1


def test_no_duplicate_pairs_and_min_history(default_log):
    log, _ = default_log
    key = np.char.add(np.char.add(log.user, "|"), log.item)
    assert len(np.unique(key)) == len(log)
    _, per_user = np.unique(log.user, return_counts=True)
    assert per_user.min() >= MIN_HISTORY == 5
    assert per_user.max() <= int(0.1 * 1000)  # default max_history_fraction
    # filter_log with the library's default support keeps every row.
    assert len(filter_log(log, min_user_support=5)) == len(log)


def test_history_length_mean_and_cap():
    log = make_synthetic(4000, 5000, 10, mean_history=40.0, history_sigma=0.5, seed=0)
    _, per_user = np.unique(log.user, return_counts=True)
    assert 36 < per_user.mean() < 44
    assert per_user.std() > 10  # lognormal spread, not constant
    fixed = make_synthetic(100, 2000, 10, mean_history=12.0, history_sigma=0.0, seed=0)
    _, per_user = np.unique(fixed.user, return_counts=True)
    assert np.all(per_user == 12)
    capped = make_synthetic(100, 100, 5, mean_history=500.0, max_history_fraction=0.2, seed=0)
    _, per_user = np.unique(capped.user, return_counts=True)
    assert np.all(per_user == 20)


def test_timestamps_strictly_increase_within_each_user(default_log):
    log, _ = default_log
    same_user = log.user[1:] == log.user[:-1]
    assert np.all(np.diff(log.timestamp)[same_user] > 0)
    # Rows are grouped by user (each user one contiguous run).
    starts = np.flatnonzero(np.r_[True, ~same_user])
    assert len(starts) == len(np.unique(log.user))
    assert log.timestamp.min() >= 1_577_836_800  # 2020-01-01


# ------------------------------------------------------------ distributions


def test_popularity_is_skewed_and_exponent_controls_it():
    def top10_share(log):
        pop = np.sort(Interactions.from_log(log).item_popularity())[::-1]
        return pop[: 200].sum() / pop.sum()  # top 10% of a 2000-item catalogue

    skewed = top10_share(make_synthetic(3000, 2000, 20, seed=0))
    flat = top10_share(make_synthetic(3000, 2000, 20, popularity_exponent=0.0, seed=0))
    assert skewed > 0.35
    assert flat < 0.2
    assert skewed > 2 * flat


def test_planted_clusters_are_real(default_log):
    log, clusters = default_log
    counts = _user_cluster_counts(log, clusters, 10)
    rate = _same_cluster_rate(counts)
    chance = 1 / 10  # balanced clusters
    assert rate > 4 * chance
    # Most of a user's items come from at most 3 clusters.
    top3 = np.sort(counts, axis=1)[:, -3:].sum(axis=1) / counts.sum(axis=1)
    assert np.median(top3) > 0.8


def test_cluster_affinity_zero_removes_the_structure():
    log, clusters = make_synthetic(
        1500, 1000, 10, cluster_affinity=0.0, popularity_exponent=0.0, seed=4, return_clusters=True
    )
    rate = _same_cluster_rate(_user_cluster_counts(log, clusters, 10))
    assert rate == pytest.approx(0.1, abs=0.02)


def test_full_affinity_small_clusters_still_fill_histories():
    # Clusters of 4 items cannot hold 30-item histories: the top-up kicks in.
    log = make_synthetic(200, 400, 100, cluster_affinity=1.0, mean_history=30.0, seed=0)
    _, per_user = np.unique(log.user, return_counts=True)
    assert per_user.min() >= 5
    key = np.char.add(np.char.add(log.user, "|"), log.item)
    assert len(np.unique(key)) == len(log)


def test_extreme_but_valid_arguments():
    log = make_synthetic(30, 10, 10, max_history_fraction=0.5, popularity_exponent=3.0, seed=0)
    _, per_user = np.unique(log.user, return_counts=True)
    assert np.all(per_user == 5)
    one = make_synthetic(1, 50, 1, seed=0)
    assert set(one.user) == {"u0"} and len(one) >= 5


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_users": 0}, r"n_users must be an integer >= 1, got 0"),
        ({"n_users": 2.5}, r"n_users must be an integer >= 1, got 2.5"),
        ({"n_users": True}, r"n_users must be an integer >= 1, got True"),
        ({"n_items": -3}, r"n_items must be an integer >= 1"),
        ({"n_clusters": 0}, r"n_clusters must be an integer >= 1"),
        ({"n_items": 100, "n_clusters": 101}, r"n_clusters must be in \[1, n_items=100\]"),
        ({"mean_history": 0.0}, r"mean_history must be a finite number > 0.0, got 0.0"),
        ({"mean_history": float("nan")}, r"mean_history must be a finite number > 0.0, got nan"),
        ({"popularity_exponent": -0.5}, r"popularity_exponent must be a finite number >= 0.0 and <= 10.0, got -0.5"),
        ({"cluster_affinity": 1.5}, r"cluster_affinity must be a finite number >= 0.0 and <= 1.0, got 1.5"),
        ({"cluster_affinity": "high"}, r"cluster_affinity must be a finite number .*, got 'high'"),
        ({"history_sigma": -1.0}, r"history_sigma must be a finite number >= 0.0 and <= 5.0"),
        ({"max_history_fraction": 0.0}, r"max_history_fraction must be a finite number > 0.0 and <= 0.5, got 0.0"),
        ({"max_history_fraction": 0.9}, r"max_history_fraction must be a finite number > 0.0 and <= 0.5, got 0.9"),
        ({"seed": -1}, r"seed must be an integer >= 0"),
        ({"n_items": 40, "n_clusters": 4}, r"n_items=40 is too small.*n_items >= 50"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(DataError, match=match) as info:
        make_synthetic(**kwargs)
    assert isinstance(info.value, ElsaIndexError) and isinstance(info.value, ValueError)


def test_synthetic_index_parses_and_rejects():
    np.testing.assert_array_equal(synthetic_index(["i0", "i42", "u7"]), [0, 42, 7])
    assert synthetic_index([]).shape == (0,)
    with pytest.raises(DataError, match="not synthetic ids"):
        synthetic_index(["i1", "item3"])
    with pytest.raises(DataError, match="not synthetic ids"):
        synthetic_index(["x"])


# ------------------------------------------------------------ large catalogues


def test_large_catalogue_keeps_history_bounds_and_cluster_labels():
    # Many more items than interactions: most items are never drawn, and the
    # sampler must still complete every history within the catalogue.
    log, clusters = make_synthetic(2_000, 200_000, 200, seed=0, return_clusters=True)
    _, per_user = np.unique(log.user, return_counts=True)
    assert per_user.min() >= 5 and len(np.unique(log.user)) == 2_000
    assert 2_000 * 25 < len(log) < 2_000 * 36
    assert clusters.shape == (200_000,) and set(np.unique(clusters)) == set(range(200))
    assert synthetic_index(log.item).max() < 200_000
