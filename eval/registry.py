"""Metrics computed afterwards from stored raw per-query results.

The harness stores, per configuration, what each query returned and how long
it took (:class:`RunData`); every number in a report is computed from that
by a function of this small registry, which also says whether higher or
lower is better (used by Pareto fronts and comparisons). A metric name may
carry a cut-off or a thread count after ``@``: ``recall@20``,
``retrieval_recall@100``, ``qps@2``.

Two recalls are kept apart (see ``shared/DESIGN.md``): ``recall@k`` /
``ndcg@k`` measure recommendation quality against held-out interactions;
``retrieval_recall@k`` measures an index against the exact top-k of the same
embeddings (tie-tolerant).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

from elsa_index.errors import ElsaIndexError
from elsa_index.metrics import hit_recall_at_k, ndcg_at_k, recall_at_k, retrieval_recall

__all__ = [
    "Metric",
    "RunData",
    "METRICS",
    "register_metric",
    "get_metric",
    "compute_metrics",
    "higher_is_better",
    "latency_percentiles",
    "pareto_front",
]


@dataclass
class RunData:
    """Raw results of one configuration (what the harness stores).

    Attributes
    ----------
    ids : int64 (n, k), returned items per query (-1 = padding).
    true_scores : float64 (n, k), exact inner products of the returned items
        (-inf for padding); scores of the same embeddings, not the backend's.
    exact_scores : float64 (n, K), the exact top-K scores per query, descending.
    latency_ns : int64 (n,), single-query wall time (one thread, after warm-up).
    targets : sparse (n, n_items) held-out items, or None (synthetic queries).
    touched_bytes : float64 (n,), bytes a query must read (lower-bound model), or None.
    bandwidth : bytes per second used for the lower bound, or None.
    scalars : run-level numbers: ``build_seconds``, ``bytes_on_disk``,
        ``peak_rss_bytes``, ``qps`` (dict thread count -> queries per second).
    """

    ids: np.ndarray
    true_scores: np.ndarray
    exact_scores: np.ndarray
    latency_ns: np.ndarray
    targets: sp.csr_matrix | None = None
    touched_bytes: np.ndarray | None = None
    bandwidth: float | None = None
    scalars: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes
    ----------
    name : base name (without ``@``).
    fn : ``fn(run, at) -> float``; ``at`` is the number after ``@`` or None.
    higher_is_better : direction, for fronts and comparisons.
    kind : ``quality``, ``retrieval``, ``latency``, ``throughput``, ``memory``, ``build`` or ``bound``.
    unit : for table headers.
    needs_at : whether ``@N`` is required.
    """

    name: str
    fn: Callable[[RunData, int | None], float]
    higher_is_better: bool
    kind: str
    unit: str = ""
    needs_at: bool = False


METRICS: dict[str, Metric] = {}


def register_metric(name: str, *, higher_is_better: bool, kind: str, unit: str = "", needs_at: bool = False):
    """Decorator: register ``fn(run, at) -> float`` under ``name``."""

    def deco(fn):
        METRICS[name] = Metric(name, fn, higher_is_better, kind, unit, needs_at)
        return fn

    return deco


def get_metric(name: str) -> tuple[Metric, int | None]:
    """The metric and its ``@`` argument for a name such as ``"recall@20"``.

    Raises
    ------
    ElsaIndexError
        Unknown name, or a missing / malformed ``@N``.
    """
    m = re.fullmatch(r"([a-z_0-9]+?)(?:@(\d+))?", str(name))
    if m is None or m.group(1) not in METRICS:
        raise ElsaIndexError(f"unknown metric {name!r}; expected one of {sorted(METRICS)} (with '@N' where needed)")
    metric = METRICS[m.group(1)]
    at = int(m.group(2)) if m.group(2) is not None else None
    if metric.needs_at and (at is None or at < 1):
        raise ElsaIndexError(f"metric {name!r} needs a positive cut-off, e.g. '{metric.name}@20'")
    if not metric.needs_at and at is not None:
        raise ElsaIndexError(f"metric {metric.name!r} takes no '@N', got {name!r}")
    return metric, at


def higher_is_better(name: str) -> bool:
    """Direction of a metric name (``"latency_p50"`` -> False)."""
    return get_metric(name)[0].higher_is_better


def compute_metrics(run: RunData, names) -> dict[str, float]:
    """Each named metric of ``run`` (NaN where it does not apply, e.g. quality without targets)."""
    out = {}
    for n in names:
        metric, at = get_metric(n)
        out[n] = float(metric.fn(run, at))
    return out


# ------------------------------------------------------------------ helpers


def latency_percentiles(latency_ns, qs=(50, 95, 99)) -> dict[str, float]:
    """Percentiles of per-query latencies, in milliseconds.

    Parameters
    ----------
    latency_ns : 1-D integer or float array of nanoseconds.
    qs : percentiles in [0, 100].

    Returns
    -------
    ``{"p50": ms, ...}`` with linear interpolation between order statistics
    (numpy's default, as ann-benchmarks); NaN for an empty array.
    """
    lat = np.asarray(latency_ns, dtype=np.float64).ravel()
    if lat.size == 0:
        return {f"p{q:g}": math.nan for q in qs}
    vals = np.percentile(lat, list(qs))
    return {f"p{q:g}": float(v) / 1e6 for q, v in zip(qs, vals)}


def pareto_front(points, *, x_higher_better: bool, y_higher_better: bool) -> list[int]:
    """Indices of the non-dominated points, sorted by x.

    Parameters
    ----------
    points : sequence of (x, y); NaN points are never on the front.
    x_higher_better, y_higher_better : directions (from the registry).
    """
    pts = [(i, float(x), float(y)) for i, (x, y) in enumerate(points) if np.isfinite(x) and np.isfinite(y)]
    sx = 1.0 if x_higher_better else -1.0
    sy = 1.0 if y_higher_better else -1.0
    front = []
    for i, x, y in pts:
        dominated = any(
            (sx * x2 >= sx * x and sy * y2 >= sy * y) and (sx * x2 > sx * x or sy * y2 > sy * y)
            for j, x2, y2 in pts if j != i
        )
        if not dominated:
            front.append((x, i))
    return [i for _, i in sorted(front)]


def _nanmean(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0 or np.isnan(a).all():
        return math.nan
    return float(np.nanmean(a))


# ---------------------------------------------------------------- the metrics


def _quality(score, doc: str):
    """A recommendation-quality metric: ``score(ids, targets, at)`` per query, mean over queries with targets."""

    def metric(run: RunData, at: int) -> float:
        if run.targets is None:
            return math.nan
        return _nanmean(score(run.ids, run.targets, at))

    metric.__doc__ = doc
    return metric


for _name, _score, _doc in (
    ("recall", recall_at_k, "Recall@k normalised by min(k, |held-out|), mean over queries with targets."),
    ("hit_recall", hit_recall_at_k, "Plain Recall@k (hits in the top k over |held-out|), mean over queries with targets."),
    ("ndcg", ndcg_at_k, "NDCG@k against the held-out items, mean over queries with targets."),
):
    register_metric(_name, higher_is_better=True, kind="quality", needs_at=True)(_quality(_score, _doc))


@register_metric("retrieval_recall", higher_is_better=True, kind="retrieval", needs_at=True)
def _retrieval_recall(run: RunData, at: int) -> float:
    """Tie-tolerant recall@k against the exact top-k of the same embeddings."""
    k = min(at, run.ids.shape[1], run.exact_scores.shape[1])
    if k < 1:
        return math.nan
    return _nanmean(retrieval_recall(run.true_scores, run.ids, run.exact_scores, k))


def _pct(q):
    def fn(run: RunData, at) -> float:
        return latency_percentiles(run.latency_ns, (q,))[f"p{q:g}"]

    return fn


for _q in (50, 95, 99):
    register_metric(f"latency_p{_q}", higher_is_better=False, kind="latency", unit="ms")(_pct(_q))


@register_metric("latency_mean", higher_is_better=False, kind="latency", unit="ms")
def _lat_mean(run: RunData, at) -> float:
    lat = np.asarray(run.latency_ns, dtype=np.float64)
    return float(lat.mean() / 1e6) if lat.size else math.nan


@register_metric("qps", higher_is_better=True, kind="throughput", unit="queries/s", needs_at=True)
def _qps(run: RunData, at: int) -> float:
    q = run.scalars.get("qps") or {}
    v = q.get(str(at), q.get(at))
    return math.nan if v is None else float(v)


def _scalar(key: str, doc: str):
    """A metric read from the run's record: ``scalars[key]`` as a float, NaN when missing."""

    def metric(run: RunData, at) -> float:
        v = run.scalars.get(key)
        return math.nan if v is None else float(v)

    metric.__doc__ = doc
    return metric


for _name, _key, _kind, _unit, _doc in (
    ("build_seconds", "build_seconds", "build", "s", "Seconds to build the index."),
    ("bytes_on_disk", "bytes_on_disk", "memory", "bytes", "Bytes of the index directory on disk."),
    ("peak_rss", "peak_rss_bytes", "memory", "bytes",
     "Peak RSS of a fresh serving process minus that of a process that only imports the package."),
    ("index_rss", "index_rss_bytes", "memory", "bytes",
     "Resident bytes of the opened index alone: RSS after opening minus RSS after importing its runtime."),
):
    register_metric(_name, higher_is_better=False, kind=_kind, unit=_unit)(_scalar(_key, _doc))


@register_metric("bound_p50", higher_is_better=False, kind="bound", unit="ms")
def _bound(run: RunData, at) -> float:
    """Median per-query physical lower bound: bytes the query must touch / memory bandwidth."""
    if run.touched_bytes is None or not run.bandwidth:
        return math.nan
    tb = np.asarray(run.touched_bytes, dtype=np.float64)
    if tb.size == 0 or not np.isfinite(tb).any():
        return math.nan
    return float(np.nanmedian(tb) / run.bandwidth * 1e3)


@register_metric("bound_ratio", higher_is_better=False, kind="bound", unit="x")
def _bound_ratio(run: RunData, at) -> float:
    """Measured p50 latency divided by the p50 lower bound (1 = at the memory-bandwidth limit)."""
    b = _bound(run, None)
    p = latency_percentiles(run.latency_ns, (50,))["p50"]
    return p / b if b and np.isfinite(b) and b > 0 else math.nan
