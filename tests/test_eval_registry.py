"""The metric registry of the harness (elsa_index.eval.registry): metrics, percentiles, Pareto fronts."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.errors import ElsaIndexError
from elsa_index.eval.registry import (
    RunData, compute_metrics, get_metric, higher_is_better, latency_percentiles, pareto_front,
)


def _run(**kw):
    base = dict(
        ids=np.array([[3, 1, 2], [0, -1, -1]]),
        true_scores=np.array([[0.9, 0.8, 0.5], [0.7, -np.inf, -np.inf]]),
        exact_scores=np.array([[0.9, 0.8, 0.7], [0.7, 0.6, -np.inf]]),
        latency_ns=np.array([1_000_000, 3_000_000]),
        targets=sp.csr_matrix(np.array([[0, 1, 0, 0, 1], [1, 0, 0, 0, 0]], dtype=np.float32)),
        scalars={"qps": {"1": 100.0, "2": 180.0}, "build_seconds": 1.5, "bytes_on_disk": 1024, "peak_rss_bytes": None},
    )
    base.update(kw)
    return RunData(**base)


def test_registry_computes_metrics_from_hand_made_results():
    m = compute_metrics(_run(), ["recall@2", "ndcg@3", "retrieval_recall@2", "retrieval_recall@3", "latency_p50",
                                 "latency_mean", "qps@2", "build_seconds", "bytes_on_disk", "peak_rss"])
    # user 0: targets {1, 4}, top-2 = [3, 1] -> 1 hit / min(2, 2); user 1: targets {0}, top-2 = [0, -1] -> 1/1.
    assert m["recall@2"] == pytest.approx(0.75)
    dcg0 = 1 / math.log2(3)
    idcg0 = 1 + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx((dcg0 / idcg0 + 1.0) / 2)
    # user 0: top-2 exact scores 0.9, 0.8 -> both returned items reach 0.8; user 1: one of min(2, 2) exact.
    assert m["retrieval_recall@2"] == pytest.approx((1.0 + 0.5) / 2)
    # k=3: user 0 returned 0.5 < 0.7 -> 2/3; user 1 has 2 exact results, 1 returned -> 1/2.
    assert m["retrieval_recall@3"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["latency_p50"] == pytest.approx(2.0) and m["latency_mean"] == pytest.approx(2.0)
    assert m["qps@2"] == 180.0 and m["build_seconds"] == 1.5 and m["bytes_on_disk"] == 1024
    assert math.isnan(m["peak_rss"])


def test_registry_quality_is_nan_without_targets_and_knows_directions():
    m = compute_metrics(_run(targets=None), ["recall@2", "retrieval_recall@2"])
    assert math.isnan(m["recall@2"]) and m["retrieval_recall@2"] == pytest.approx(0.75)
    assert higher_is_better("recall@20") and higher_is_better("qps@1")
    assert not higher_is_better("latency_p99") and not higher_is_better("peak_rss")
    assert get_metric("retrieval_recall@100")[1] == 100


@pytest.mark.parametrize("name", ["recal@20", "recall", "latency_p50@3", "qps"])
def test_registry_rejects_bad_names(name):
    with pytest.raises(ElsaIndexError):
        get_metric(name)


def test_retrieval_recall_counts_ties_with_the_kth_score():
    # Exact top-2 is items 0 and 1 (scores 1.0, 0.5); item 2 ties with item 1 at 0.5.
    run = _run(ids=np.array([[0, 2]]), true_scores=np.array([[1.0, 0.5]]),
               exact_scores=np.array([[1.0, 0.5]]), latency_ns=np.array([1]), targets=None)
    assert compute_metrics(run, ["retrieval_recall@2"])["retrieval_recall@2"] == 1.0
    # An item below the k-th exact score does not count.
    run = _run(ids=np.array([[0, 3]]), true_scores=np.array([[1.0, 0.4999]]),
               exact_scores=np.array([[1.0, 0.5]]), latency_ns=np.array([1]), targets=None)
    assert compute_metrics(run, ["retrieval_recall@2"])["retrieval_recall@2"] == 0.5


def test_latency_percentiles():
    lat = np.arange(1, 101) * 1_000_000  # 1 .. 100 ms
    p = latency_percentiles(lat)
    assert p["p50"] == pytest.approx(50.5) and p["p95"] == pytest.approx(95.05) and p["p99"] == pytest.approx(99.01)
    assert latency_percentiles(np.array([7_000_000]))["p99"] == pytest.approx(7.0)
    assert all(math.isnan(v) for v in latency_percentiles(np.array([])).values())


def test_pareto_front_uses_directions():
    pts = [(1.0, 0.5), (2.0, 0.9), (3.0, 0.8), (0.5, 0.1), (float("nan"), 1.0)]
    assert pareto_front(pts, x_higher_better=False, y_higher_better=True) == [3, 0, 1]
