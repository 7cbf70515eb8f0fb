"""Tests for elsa_index.metrics: tiny inputs with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.errors import ElsaIndexError
from elsa_index.metrics import (
    evaluate,
    hit_recall_at_k,
    hits_at_k,
    ndcg_at_k,
    recall_at_k,
)
from elsa_index.topk import topk


def csr(rows, n_items):
    """CSR matrix with a 1 at each listed item of each row."""
    r = [i for i, items in enumerate(rows) for _ in items]
    c = [j for items in rows for j in items]
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(rows), n_items))


# -------------------------------------------------------------- per-user metrics

# Four users, six items; rankings and targets:
#   user 0: ranking [3, 1, 4, 0, 5], targets {1, 2, 5}   -> hits at ranks 1 and 4
#   user 1: ranking [0, 2, 1, 3, 4], targets {0}         -> hit at rank 0
#   user 2: ranking [0, 1, 2, 3, 4], targets {}          -> undefined (NaN)
#   user 3: ranking [5, 4, 3, 2, 1], targets {0..5}      -> hits at every rank
IDS = np.array([[3, 1, 4, 0, 5], [0, 2, 1, 3, 4], [0, 1, 2, 3, 4], [5, 4, 3, 2, 1]])
TARGETS = csr([[1, 2, 5], [0], [], [0, 1, 2, 3, 4, 5]], 6)
L3, L6 = math.log2(3), math.log2(6)  # discounts 1/log2(rank + 2) for ranks 1 and 4


def test_hits_at_k():
    np.testing.assert_array_equal(
        hits_at_k(IDS, TARGETS),
        [[0, 1, 0, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]],
    )


def test_recall_is_normalised_by_min_k_and_targets():
    # k=2: user 0 has 1 hit / min(2, 3) = 1/2; user 1: 1 / min(2, 1) = 1;
    #      user 3: 2 / min(2, 6) = 1.
    np.testing.assert_allclose(recall_at_k(IDS, TARGETS, 2), [0.5, 1.0, np.nan, 1.0])
    # k=5: user 0: 2 / min(5, 3) = 2/3; user 3: 5 / min(5, 6) = 1.
    np.testing.assert_allclose(recall_at_k(IDS, TARGETS, 5), [2 / 3, 1.0, np.nan, 1.0])


def test_hit_recall_divides_by_all_targets():
    # k=2: 1/3, 1/1, NaN, 2/6;  k=5: 2/3, 1/1, NaN, 5/6.
    np.testing.assert_allclose(hit_recall_at_k(IDS, TARGETS, 2), [1 / 3, 1.0, np.nan, 1 / 3])
    np.testing.assert_allclose(hit_recall_at_k(IDS, TARGETS, 5), [2 / 3, 1.0, np.nan, 5 / 6])


def test_ndcg_binary_relevance():
    # user 0, k=2: DCG = 1/log2(3) (hit at rank 1); IDCG = 1 + 1/log2(3) (min(2,3)=2 ideal hits).
    # user 0, k=5: DCG = 1/log2(3) + 1/log2(6); IDCG = 1 + 1/log2(3) + 1/log2(4) (3 ideal hits).
    # user 1: hit at rank 0 with a single target: 1/1. user 3: every rank a hit: 1.
    # 1/log2(3) = 0.6309298, 1/log2(6) = 0.3868528.
    u0_k2 = (1 / L3) / (1 + 1 / L3)  # 0.6309298 / 1.6309298 = 0.3868528
    u0_k5 = (1 / L3 + 1 / L6) / (1 + 1 / L3 + 1 / 2)  # 1.0177826 / 2.1309298 = 0.4776237
    np.testing.assert_allclose(ndcg_at_k(IDS, TARGETS, 2), [u0_k2, 1.0, np.nan, 1.0])
    np.testing.assert_allclose(ndcg_at_k(IDS, TARGETS, 5), [u0_k5, 1.0, np.nan, 1.0])
    assert u0_k2 == pytest.approx(0.3868528, abs=1e-7)
    assert u0_k5 == pytest.approx(0.4776237, abs=1e-7)


def test_metrics_with_fewer_columns_than_k_and_padding():
    # Catalogue of 3 items, k=20: the ranking has 3 columns; padding -1 never hits.
    ids = np.array([[2, -1, -1]])
    t = csr([[2, 0]], 3)
    # 1 hit / min(20, 2) = 1/2; NDCG = 1 / (1 + 1/log2(3)).
    np.testing.assert_allclose(recall_at_k(ids, t, 20), [0.5])
    np.testing.assert_allclose(ndcg_at_k(ids, t, 20), [1 / (1 + 1 / L3)])


def test_metric_inputs_validated():
    with pytest.raises(ElsaIndexError, match="rows"):
        recall_at_k(IDS, TARGETS[:2], 2)
    with pytest.raises(ElsaIndexError, match="integer"):
        recall_at_k(IDS.astype(float), TARGETS, 2)
    with pytest.raises(ElsaIndexError, match="sparse"):
        recall_at_k(IDS, TARGETS.toarray(), 2)


# --------------------------------------------------------------------- evaluate


def popularity_fn(item_scores):
    item_scores = np.asarray(item_scores, np.float32)
    return lambda X: np.tile(item_scores, (X.shape[0], 1))


def test_evaluate_hand_values_and_exclusion_changes_ranking():
    # Item scores [4, 3, 2, 1] for everyone. User 0 saw item 0 and wants item 1;
    # user 1 saw item 2 and wants item 0.
    fold_in = csr([[0], [2]], 4)
    targets = csr([[1], [0]], 4)
    fn = popularity_fn([4, 3, 2, 1])
    # With exclusion user 0 ranks [1, 2, 3] -> item 1 at rank 0: recall@1 = 1;
    # user 1 ranks [0, 1, 3] -> item 0 at rank 0: recall@1 = 1.
    out = evaluate(fn, fold_in, targets, ks=(1,), metrics=("recall",))
    assert out == {"recall@1": 1.0}
    # Without exclusion user 0 ranks [0, 1, ...]: item 1 at rank 1 -> recall@1 = 0,
    # NDCG@2 = 1/log2(3); user 1 still hits at rank 0 -> 1.
    out = evaluate(fn, fold_in, targets, ks=(1, 2), metrics=("recall", "ndcg"), exclude_fold_in=False)
    assert out["recall@1"] == pytest.approx((0 + 1) / 2)
    assert out["ndcg@2"] == pytest.approx((1 / L3 + 1) / 2)


def test_evaluate_names_order_and_explicit_cutoffs():
    fold_in, targets = csr([[0]], 4), csr([[1, 3]], 4)
    out = evaluate(popularity_fn([4, 3, 2, 1]), fold_in, targets,
                   ks=(1, 3), metrics=("recall", "ndcg", "hit_recall@2"))
    assert list(out) == ["recall@1", "recall@3", "ndcg@1", "ndcg@3", "hit_recall@2"]
    # Ranking [1, 2, 3]: targets at ranks 0 and 2.
    # recall@1 = 1/min(1,2) = 1; recall@3 = 2/min(3,2) = 1; hit_recall@2 = 1/2;
    # ndcg@3 = (1 + 1/log2(4)) / (1 + 1/log2(3)).
    assert out["recall@1"] == 1.0 and out["recall@3"] == 1.0
    assert out["hit_recall@2"] == 0.5
    assert out["ndcg@3"] == pytest.approx(1.5 / (1 + 1 / L3))


def test_evaluate_users_without_targets_left_out_of_means():
    fold_in, targets = csr([[0], [0], [0]], 4), csr([[1], [], [2]], 4)
    means, per_user = evaluate(popularity_fn([4, 3, 2, 1]), fold_in, targets, ks=(1,),
                               metrics=("recall",), return_per_user=True)
    # Per user: 1 (item 1 first), NaN (no targets), 0 -> mean over 2 users = 0.5.
    np.testing.assert_array_equal(per_user["recall@1"], [1.0, np.nan, 0.0])
    assert means["recall@1"] == 0.5


def random_problem(seed=0, n_users=23, n_items=40):
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < 0.2
    fold = dense & (rng.random(dense.shape) < 0.6)
    tgt = dense & ~fold
    tgt[3] = False  # one user without targets
    W = rng.standard_normal((n_items, n_items)).astype(np.float32)
    return sp.csr_matrix(fold.astype(np.float32)), sp.csr_matrix(tgt.astype(np.float32)), W


def test_evaluate_batching_is_exact():
    fold_in, targets, W = random_problem()
    seen = []

    def fn(X):
        seen.append(X.shape[0])
        return X @ W

    kw = dict(ks=(1, 5, 10), metrics=("recall", "hit_recall", "ndcg"), return_per_user=True)
    ref_means, ref = evaluate(fn, fold_in, targets, batch_size=1000, **kw)
    for bs in (1, 4, 7):
        seen.clear()
        means, per = evaluate(fn, fold_in, targets, batch_size=bs, **kw)
        assert max(seen) <= bs and sum(seen) == fold_in.shape[0]
        assert means == ref_means
        for key in ref:
            np.testing.assert_array_equal(per[key], ref[key])


def test_evaluate_agrees_with_topk_and_metric_functions():
    fold_in, targets, W = random_problem(seed=1)
    ids, _ = topk(np.asarray(fold_in @ W), 10, exclude=fold_in)
    means, per = evaluate(lambda X: X @ W, fold_in, targets, ks=(10,),
                          metrics=("recall", "hit_recall", "ndcg"), batch_size=5, return_per_user=True)
    np.testing.assert_array_equal(per["recall@10"], recall_at_k(ids, targets, 10))
    np.testing.assert_array_equal(per["hit_recall@10"], hit_recall_at_k(ids, targets, 10))
    np.testing.assert_array_equal(per["ndcg@10"], ndcg_at_k(ids, targets, 10))
    assert means["ndcg@10"] == pytest.approx(np.nanmean(ndcg_at_k(ids, targets, 10)))


def test_evaluate_does_not_write_into_score_fn_arrays():
    cached = np.array([[4, 3, 2, 1]], np.float32)
    evaluate(lambda X: cached, csr([[0]], 4), csr([[1]], 4), ks=(2,))
    np.testing.assert_array_equal(cached, [[4, 3, 2, 1]])


def test_evaluate_shape_errors():
    fn = popularity_fn([1, 2, 3, 4])
    with pytest.raises(ElsaIndexError, match=r"fold_in \(2, 4\) and targets \(2, 5\)"):
        evaluate(fn, csr([[0], [1]], 4), csr([[0], [1]], 5))
    with pytest.raises(ElsaIndexError, match=r"shape \(1, 3\).*expected.*\(1, 4\)"):
        evaluate(lambda X: np.zeros((X.shape[0], 3)), csr([[0]], 4), csr([[1]], 4))
    with pytest.raises(ElsaIndexError, match="NaN"):
        evaluate(lambda X: np.full((X.shape[0], 4), np.nan), csr([[0]], 4), csr([[1]], 4))
    with pytest.raises(ElsaIndexError, match="unknown metric"):
        evaluate(fn, csr([[0]], 4), csr([[1]], 4), metrics=("precision",))
    with pytest.raises(ElsaIndexError, match="batch_size"):
        evaluate(fn, csr([[0]], 4), csr([[1]], 4), batch_size=0)
    with pytest.raises(ElsaIndexError, match="sparse"):
        evaluate(fn, np.zeros((1, 4)), csr([[1]], 4))


def test_metric_legend_names_what_each_recall_divides_by():
    from elsa_index.metrics import check_metrics, metric_legend

    assert metric_legend(["ndcg@20"]) == ""
    assert metric_legend({"hit_recall@20": 0.1, "ndcg@20": 0.2}) == "hit_recall@k = hits in the top k / |targets|"
    both = metric_legend(["recall@20", "hit_recall@20", "recall@50"])
    assert both == ("recall@k = hits in the top k / min(k, |targets|); "
                    "hit_recall@k = hits in the top k / |targets|")
    # The definitions match the numbers: 1 hit in the top 2, 3 targets.
    ids = np.array([[0, 5]])
    t = sp.csr_matrix(np.array([[1, 1, 1, 0, 0, 0]], np.float32))
    assert recall_at_k(ids, t, 2)[0] == pytest.approx(1 / 2)
    assert hit_recall_at_k(ids, t, 2)[0] == pytest.approx(1 / 3)
    assert check_metrics(["hit_recall@20", "ndcg@5"]) == [("hit_recall", 20), ("ndcg", 5)]
    with pytest.raises(ElsaIndexError, match="unknown metric 'map@5'"):
        check_metrics(["map@5"])
    with pytest.raises(ElsaIndexError, match="has no cut-off"):
        check_metrics(["ndcg"])
