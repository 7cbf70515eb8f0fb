"""Who wins, in words: the verdicts and comparisons of a benchmark report.

Each backend is represented by its tuned configuration (:func:`tuned`: the fastest reaching the recall
target); exact backends are checked against the config's latency target and goal, approximate ones are
described at their tuned point, and sparse checkpoints are compared with dense ones at equal byte budget and
at equal quality (:func:`comparisons`, :func:`scale_verdicts`). Whether a backend is exact comes from its
class in the registry of :mod:`elsa_index.indexers`.
"""

from __future__ import annotations

import math

import numpy as np

from elsa_index.errors import ElsaIndexError
from elsa_index.indexers import get_backend

from .plots import fit_growth
from .tables import fmt_params, fmt_value, markdown_table

__all__ = ["tuned", "exact_on_sparse", "comparisons", "scale_verdicts", "equal_recall", "extrapolated_verdicts"]


def _backend_class(name: str):
    """The registered class of a backend name, or None (unknown here, or not importable)."""
    try:
        return get_backend(name)
    except ElsaIndexError:
        return None


def exact_on_sparse(rows: list[dict], label: str) -> bool | None:
    """True/False: whether ``label``'s backend is exact (its class says so), for labels measured on sparse
    checkpoints; None for other labels or unknown backends."""
    rs = [r for r in rows if r["label"] == label]
    if not rs or not any(r.get("storage") == "sparse" for r in rs):
        return None
    cls = _backend_class(rs[0]["backend"])
    return None if cls is None else bool(cls.exact)


def _title(label: str) -> str:
    return label[:1].upper() + label[1:]


def tuned(rows: list[dict], metric: str | None, target: float) -> tuple[dict | None, bool]:
    """The lowest-p50 row reaching ``metric >= target`` (True), else the highest-``metric`` row (False)."""
    if not rows:
        return None, False
    if metric is None:
        return min(rows, key=lambda r: r["m"]["latency_p50"]), True
    ok = [r for r in rows if r["m"].get(metric, math.nan) >= target - 1e-12]
    if ok:
        return min(ok, key=lambda r: r["m"]["latency_p50"]), True
    return max(rows, key=lambda r: (np.nan_to_num(r["m"].get(metric, math.nan), nan=-1.0), -r["m"]["latency_p50"])), False


def _memory(r: dict) -> tuple[float, str]:
    v = r["m"].get("peak_rss", math.nan)
    if math.isfinite(v):
        return v, "peak RSS"
    return r["m"].get("bytes_on_disk", math.nan), "bytes on disk"


def _compare(a: dict, b: dict, an: str, bn: str, quality: str | None) -> str:
    """One plain sentence: where ``a`` wins or loses against ``b``."""
    parts = []

    def rel(x, y, what, unit, lower_better=True, kind=""):
        if not (math.isfinite(x) and math.isfinite(y)) or x <= 0 or y <= 0:
            return
        if abs(x - y) / max(x, y) < 0.05:
            verdict = "about equal"
        else:
            win = an if (x < y) == lower_better else bn
            ratio = max(x, y) / min(x, y)
            verdict = f"**{win}** {ratio:.1f}x {'better' if not lower_better else 'lower'}"
        parts.append(f"{what} {fmt_value(x, kind)} vs {fmt_value(y, kind)}{unit} ({verdict})")

    rel(a["m"]["latency_p50"], b["m"]["latency_p50"], "p50 latency", " ms", kind="ms")
    ma, wa = _memory(a)
    mb, _ = _memory(b)
    rel(ma, mb, wa, "", kind="bytes")
    rel(a["m"].get("build_seconds", math.nan), b["m"].get("build_seconds", math.nan), "build", " s", kind="s")
    if quality:
        x, y = a["m"].get(quality, math.nan), b["m"].get(quality, math.nan)
        if math.isfinite(x) and math.isfinite(y):
            if abs(x - y) < 0.005:
                v = "about equal"
            else:
                v = f"**{an if x > y else bn}** higher"
            parts.append(f"{quality} {x:.4f} vs {y:.4f} ({v})")
    return "; ".join(parts)


def comparisons(cfg, rows: list[dict], cks: list[tuple[str, dict]], quality, rmetric) -> list[str]:
    """Sparse checkpoints against dense ones at equal quality and at equal byte budget (dense width = 2 x nnz)."""
    q = quality[0] if quality else None
    sparse = [(n, m) for n, m in cks if m.get("storage") == "sparse"]
    dense = [(n, m) for n, m in cks if m.get("storage") == "dense"]
    if not sparse or not dense:
        return []
    L = ["### Sparse index vs dense ANN", "",
         f"Each backend at its fastest configuration reaching {rmetric} >= {cfg.recall_target} "
         "(marked * when none does: its most accurate one). Equal budget: dense width = 2 x nnz (the same bytes per "
         f"item as float32 values + int32 indices). Equal quality: the narrowest dense model whose exact {q} is at "
         "least the sparse model's.", ""]
    body, sentences = [], []

    def best(label_rows):
        by = {}
        for r in label_rows:
            by.setdefault(r["label"], []).append(r)
        return {lbl: tuned(rs, rmetric, cfg.recall_target) for lbl, rs in by.items()}

    for sname, sm in sparse:
        nnz = sm.get("nnz_mean", 0)
        sq = (sm.get("exact") or {}).get(q, math.nan) if q else math.nan
        budget = min(dense, key=lambda d: abs(d[1].get("dims", 0) - 2 * nnz))
        ok = [d for d in dense if (d[1].get("exact") or {}).get(q, -1) >= sq - 1e-9] if q else []
        equal_q = min(ok, key=lambda d: d[1].get("dims", 0)) if ok else (
            max(dense, key=lambda d: (d[1].get("exact") or {}).get(q, -1)) if q else None)
        s_best = best([r for r in rows if r["checkpoint"] == sname])
        for how, partner in (("equal budget", budget), ("equal quality", equal_q)):
            if partner is None:
                continue
            d_best = best([r for r in rows if r["checkpoint"] == partner[0]])
            for slbl, (sr, sok) in s_best.items():
                for dlbl, (dr, dok) in d_best.items():
                    if sr is None or dr is None:
                        continue
                    body.append([f"{sname} ({nnz:.0f} nnz)", how, f"{partner[0]} ({partner[1].get('dims')} d)",
                                 f"{slbl}{'' if sok else '*'} vs {dlbl}{'' if dok else '*'}",
                                 f"{fmt_value(sr['m']['latency_p50'], 'ms')} / {fmt_value(dr['m']['latency_p50'], 'ms')}",
                                 f"{fmt_value(_memory(sr)[0], 'bytes')} / {fmt_value(_memory(dr)[0], 'bytes')}",
                                 f"{fmt_value(sr['m'].get('build_seconds'), 's')} / {fmt_value(dr['m'].get('build_seconds'), 's')}",
                                 f"{fmt_value(sr['m'].get(q), 'ratio')} / {fmt_value(dr['m'].get(q), 'ratio')}" if q else "-"])
                    sentences.append(f"- {sname} ({slbl}) vs {partner[0]} ({dlbl}), {how}: "
                                     + _compare(sr, dr, f"{slbl}/{sname}", f"{dlbl}/{partner[0]}", q))
    if body:
        L += markdown_table(["sparse", "pairing", "dense", "backends", "p50 ms", "memory", "build s", f"{q or 'quality'}"],
                    body, "lllrrrrr") + [""]
        L += ["Where each side wins (from the numbers above):", ""] + sentences + [""]
    return L


def scale_verdicts(cfg, rows: list[dict], tuned_rows: dict[str, dict[int, tuple[dict | None, bool]]],
                   exact: dict[str, bool | None], rmetric: str | None) -> list[str]:
    """Verdicts of a scale dataset, as report lines: each exact backend against the config's latency target and
    goal at the largest size, each approximate one at its fastest configuration reaching the recall target
    (and without each optional search parameter), and sparse against dense backends at every size.

    Parameters
    ----------
    rows : the measured configurations of the dataset (with their metrics under ``m``).
    tuned_rows : label -> size -> :func:`tuned` of that label's configurations at that size.
    exact : label -> :func:`exact_on_sparse`.
    rmetric : the retrieval metric the recall target applies to.
    """
    L: list[str] = []
    largest = max(n for v in tuned_rows.values() for n in v)
    target, goal = cfg.report.latency_target_ms, cfg.report.latency_goal_ms
    for lbl in (lbl for lbl in tuned_rows if exact[lbl]):
        best = tuned_rows[lbl].get(largest)
        if best and best[0]:
            p50 = best[0]["m"]["latency_p50"]
            L.append(f"- Exact {lbl} backend at {largest:,} items: p50 {p50:.2f} ms "
                     f"(target <= {target:g} ms: {'met' if p50 <= target else 'missed'}; goal {goal:g} ms: "
                     f"{'met' if p50 <= goal else 'missed'}), lower bound {fmt_value(best[0]['m'].get('bound_p50'), 'ms')} ms.")
    for lbl in (lbl for lbl in tuned_rows if exact[lbl] is False):
        best = tuned_rows[lbl].get(largest)
        if not (best and best[0]):
            continue
        L.append(f"- {_title(lbl)} at {largest:,} items, fastest configuration with {rmetric} >= {cfg.recall_target}: "
                 f"{fmt_params(best[0]['search']) if best[1] else 'none reaches it; most accurate: ' + fmt_params(best[0]['search'])}"
                 f", p50 {best[0]['m']['latency_p50']:.2f} ms, {rmetric} {best[0]['m'].get(rmetric, math.nan):.4f}.")
        # A search parameter set in some configurations only (e.g. a query-pruning cut): the best without it.
        at_size = [r for r in rows if r["label"] == lbl and r["size"] == largest]
        optional = [p for p in dict.fromkeys(p for r in at_size for p in r["search"])
                    if any(r["search"].get(p) is None for r in at_size)]
        for p in optional:
            full = tuned([r for r in at_size if r["search"].get(p) is None], rmetric, cfg.recall_target)
            if full[0] and full[1] and full[0] is not best[0]:
                L.append(f"- {_title(lbl)} at {largest:,} items without `{p}`: {fmt_params(full[0]['search'])}, "
                         f"p50 {full[0]['m']['latency_p50']:.2f} ms, {rmetric} {full[0]['m'].get(rmetric, math.nan):.4f}.")
    L.append("")
    sparse_lbls = [lbl for lbl, v in tuned_rows.items() if any(t[0] and t[0]["storage"] == "sparse" for t in v.values())]
    dense_lbls = [lbl for lbl, v in tuned_rows.items() if any(t[0] and t[0]["storage"] == "dense" for t in v.values())]
    if sparse_lbls and dense_lbls:
        L += [f"Where the sparse inverted index wins or loses against the dense backends (each at its fastest configuration with "
              f"{rmetric} >= {cfg.recall_target}, * if none reaches it):", ""]
        for n in sorted({n for v in tuned_rows.values() for n in v}):
            for slbl in sparse_lbls:
                for dlbl in dense_lbls:
                    a, b = tuned_rows[slbl].get(n), tuned_rows[dlbl].get(n)
                    if not a or not b or not a[0] or not b[0]:
                        continue
                    L.append(f"- {n:,} items, {slbl}{'' if a[1] else '*'} vs {dlbl}{'' if b[1] else '*'}: "
                             + _compare(a[0], b[0], slbl, dlbl, rmetric))
        L.append("")
    return L



def equal_recall(cfg, rows: list[dict], rmetric: str | None) -> list[str]:
    """Latency at equal recall, as report lines: for each catalogue size and each recall level
    (``report.recall_levels``, else ``recall_target``), every backend's fastest configuration reaching it,
    fastest first, with its p50 as a multiple of the fastest one's.

    A backend that reaches no level is listed once per level with its most accurate configuration,
    marked "not reached", so that a missing row never reads as a win.
    """
    if rmetric is None or not rows:
        return []
    levels = sorted(set(cfg.report.recall_levels or [cfg.recall_target]))
    sized = any(r.get("size") for r in rows)
    body = []
    for n in sorted({r.get("size") or 0 for r in rows}):
        at = [r for r in rows if (r.get("size") or 0) == n]
        labels = list(dict.fromkeys((r["label"], r["checkpoint"]) for r in at))
        for level in levels:
            reached, missed = [], []
            for lbl, ck in labels:
                best, ok = tuned([r for r in at if r["label"] == lbl and r["checkpoint"] == ck], rmetric, level)
                if best is not None:
                    (reached if ok else missed).append(best)
            reached.sort(key=lambda r: r["m"]["latency_p50"])
            fastest = reached[0]["m"]["latency_p50"] if reached else math.nan
            for r, ok in [(r, True) for r in reached] + [(r, False) for r in missed]:
                m = r["m"]
                ratio = fmt_value(m["latency_p50"] / fastest, "ratio") + "x" if ok and fastest > 0 else "not reached"
                body.append(([f"{n:,}"] if sized else []) + [
                    f"{level:g}", r["label"], r["checkpoint"], fmt_params(r["search"]),
                    fmt_value(m.get(rmetric), "ratio"), fmt_value(m["latency_p50"], "ms"), fmt_value(m.get("latency_p99"), "ms"),
                    ratio, fmt_value(m.get("bytes_on_disk"), "bytes"), fmt_value(m.get("build_seconds"), "s")])
    if not body:
        return []
    header = (["items"] if sized else []) + [f"{rmetric} >=", "backend", "checkpoint", "search", rmetric, "p50 ms",
                                             "p99 ms", "p50 / fastest", "disk", "build s"]
    return (["### Latency at equal recall", "",
             f"Each backend's fastest configuration whose {rmetric} reaches the level (exact backends reach every "
             "level); *p50 / fastest* divides its p50 by the fastest backend's at the same level and size. "
             "*not reached*: the backend's most accurate configuration, which stays under the level.", ""]
            + markdown_table(header, body, ("r" if sized else "") + "rlll" + "r" * 6) + [""])


def extrapolated_verdicts(tuned_rows: dict[str, dict[int, tuple[dict | None, bool]]], rmetric: str | None) -> list[str]:
    """Sizes measured for some backends only (e.g. a 10M catalogue built for the sparse backends alone): each
    backend measured there against the others' growth fits from the sizes they were measured at.

    Quantities: p50 latency, bytes on disk, build seconds; a fit needs two sizes or more. The extrapolated
    side is an estimate (``y = c N^b`` on log-log), and the lines say so.
    """
    sizes = sorted({n for v in tuned_rows.values() for n, t in v.items() if t and t[0]})
    L: list[str] = []
    for n in sizes:
        here = [lbl for lbl, v in tuned_rows.items() if (v.get(n) or (None,))[0] is not None]
        absent = [lbl for lbl in tuned_rows if lbl not in here]
        for other in absent:
            pts = {q: [(m, t[0]["m"].get(q)) for m, t in tuned_rows[other].items() if t and t[0] and m < n]
                   for q in ("latency_p50", "bytes_on_disk", "build_seconds")}
            est = {}
            for q, p in pts.items():
                p = [(m, v) for m, v in p if v is not None and math.isfinite(v) and v > 0]
                fit = fit_growth(*zip(*p)) if len(p) >= 2 else None
                if fit:
                    est[q] = (math.exp(fit[1]) * n ** fit[0], fit[0], min(m for m, _ in p), max(m for m, _ in p))
            if "latency_p50" not in est:
                continue
            lo, hi = est["latency_p50"][2], est["latency_p50"][3]
            # * when some size of the fit did not reach the recall target (its most accurate configuration)
            reached = all(t[1] for m, t in tuned_rows[other].items() if t and t[0] and m < n)
            for lbl in here:
                r, ok = tuned_rows[lbl][n]
                parts = []
                for q, what, kind, unit in (("latency_p50", "p50", "ms", " ms"), ("bytes_on_disk", "disk", "bytes", ""),
                                            ("build_seconds", "build", "s", " s")):
                    x = r["m"].get(q, math.nan)
                    if q in est and math.isfinite(x) and x > 0:
                        y = est[q][0]
                        win = lbl if x < y else f"{other} (extrapolated)"
                        parts.append(f"{what} {fmt_value(x, kind)}{unit} measured vs {fmt_value(y, kind)}{unit} extrapolated "
                                     f"(**{win}** {max(x, y) / min(x, y):.1f}x lower)")
                L.append(f"- {n:,} items, {lbl}{'' if ok else '*'} ({rmetric} {r['m'].get(rmetric, math.nan):.4f}) vs "
                         f"{other}{'' if reached else '*'} extrapolated from {lo:,}-{hi:,} items at the recall target: " + "; ".join(parts) + ".")
    if L:
        L = ["Sizes measured for some backends only, against the others' growth (an estimate from their tuned "
             "configurations at smaller sizes, not a measurement; an approximate index's recall at the target "
             "may need more work at larger sizes than the fit assumes):", ""] + L + [""]
    return L
