"""The PNG plots of a benchmark report (matplotlib, optional: without it the report says plots were skipped).

Recall against latency with the Pareto front per backend (:func:`plot_pareto`), index memory per build
(:func:`plot_memory`), and log-log growth against catalogue size with the fitted exponent
(:func:`plot_scale`, :func:`fit_growth`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .registry import pareto_front
from .tables import fmt_params

__all__ = ["NO_PLOTS", "pyplot", "plot_pareto", "plot_memory", "plot_scale", "fit_growth"]


NO_PLOTS = "plots skipped: matplotlib is not installed (pip install \"elsa-index[bench]\")"


def pyplot():
    """pyplot on the Agg backend, or None without matplotlib (the report then says plots were skipped)."""
    try:
        import matplotlib  # optional heavy dependency (the bench extra)
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series_key(r: dict) -> str:
    return f"{r['label']} · {r['checkpoint']}"


def plot_pareto(rows: list[dict], path: Path, y_metrics: list[str], title: str) -> Path | None:
    """Recall against p50 latency, one colour per backend x checkpoint, the Pareto front drawn as a line."""
    y_metrics = [m for m in y_metrics if m and any(math.isfinite(r["m"].get(m, math.nan)) for r in rows)]
    plt = pyplot()
    if not rows or not y_metrics or plt is None:
        return None
    fig, axes = plt.subplots(1, len(y_metrics), figsize=(6.5 * len(y_metrics) + 2.5, 4.8), squeeze=False)
    keys = list(dict.fromkeys(_series_key(r) for r in rows))
    cmap = plt.get_cmap("tab20" if len(keys) > 10 else "tab10")
    for ax, ym in zip(axes[0], y_metrics):
        for i, key in enumerate(keys):
            rs = [r for r in rows if _series_key(r) == key]
            pts = [(r["m"]["latency_p50"], r["m"].get(ym, math.nan)) for r in rs]
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=14, alpha=0.35, color=cmap(i % cmap.N))
            front = pareto_front(pts, x_higher_better=False, y_higher_better=True)
            if front:
                ax.plot([pts[j][0] for j in front], [pts[j][1] for j in front], "-o", ms=4, color=cmap(i % cmap.N),
                        label=key)
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency per query (ms, one thread, log)")
        ax.set_ylabel(ym)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{title}: {ym} vs latency")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory(rows: list[dict], path: Path, title: str) -> Path | None:
    """Bytes on disk and fresh-process peak RSS per backend x checkpoint x build (one bar pair each)."""
    seen, items = set(), []
    for r in rows:
        key = (r["label"], r["checkpoint"], json.dumps(r["build"], sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        items.append((f"{r['label']} · {r['checkpoint']}" + (f" ({fmt_params(r['build'])})" if r["build"] else ""),
                      r["m"].get("bytes_on_disk", math.nan), r["m"].get("peak_rss", math.nan)))
    plt = pyplot()
    if not items or plt is None:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(items) + 2.0))
    y = np.arange(len(items))
    disk = np.array([i[1] for i in items], dtype=float) / 1e6
    rss = np.array([i[2] for i in items], dtype=float) / 1e6
    ax.barh(y - 0.2, np.nan_to_num(disk), height=0.4, label="bytes on disk")
    ax.barh(y + 0.2, np.nan_to_num(np.maximum(rss, 0)), height=0.4, label="peak RSS - baseline (fresh process)")
    ax.set_yticks(y, [i[0] for i in items], fontsize=7)
    ax.set_xlabel("MB")
    if np.nanmax(np.r_[disk, rss, 0]) > 0:
        ax.set_xscale("symlog", linthresh=0.1)
    ax.invert_yaxis()
    ax.set_title(f"{title}: index memory")
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scale(series: dict[str, list[tuple[int, float]]], path: Path, ylabel: str, title: str,
               extra: dict[str, list[tuple[int, float]]] | None = None) -> Path | None:
    """log-log curves against catalogue size with the fitted growth exponent in the legend."""
    plt = pyplot()
    if not any(len(v) for v in series.values()) or plt is None:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.8))
    # Colour by backend (the first word of a series name), line style by quantity (the rest).
    backends = list(dict.fromkeys(n.split(" ")[0] for n in series))
    quantities = list(dict.fromkeys(n.partition(" ")[2] for n in series))
    styles = ["-", "--", ":", "-."]
    cmap = plt.get_cmap("tab10")
    for name, pts in series.items():
        pts = [(n, v) for n, v in pts if v is not None and math.isfinite(v) and v > 0]
        if not pts:
            continue
        xs, ys = zip(*sorted(pts))
        fit = fit_growth(xs, ys)
        label = f"{name} (b = {fit[0]:.2f})" if fit else name
        color = cmap(backends.index(name.split(" ")[0]) % 10)
        ls = styles[quantities.index(name.partition(" ")[2]) % len(styles)]
        ax.plot(xs, ys, ls, marker="o", ms=4, color=color, label=label)
    for name, pts in (extra or {}).items():
        pts = [(n, v) for n, v in pts if v is not None and math.isfinite(v) and v > 0]
        if pts:
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, "--", color="grey", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalogue size (items, log)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # every series may have been empty (no finite positive value)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fit_growth(sizes, values) -> tuple[float, float] | None:
    """Least-squares fit of ``log y = a + b log N``: returns ``(b, a)`` (exponent, intercept) or None."""
    x = np.asarray(sizes, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or len(np.unique(x[ok])) < 2:
        return None
    b, a = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
    return float(b), float(a)
