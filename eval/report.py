"""Markdown report and PNG plots of a benchmark output directory.

Every number is recomputed from the stored raw per-query results through the
metric registry (:mod:`elsa_index.eval.registry`), so a report can be
re-rendered (``elsa-index bench CONFIG --out DIR --report-only``) after a
metric is added, without measuring again.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from pathlib import Path

import numpy as np

from elsa_index.errors import ElsaIndexError

from .registry import RunData, compute_metrics, get_metric, pareto_front
from .store import load_reference, load_run_data, read_json
from .tables import markdown_table

logger = logging.getLogger(__name__)

__all__ = ["write_report", "collect", "fit_growth"]


# ------------------------------------------------------------------ collect


_read = read_json


def _metric_names(cfg) -> list[str]:
    names = list(cfg.metrics)
    names += ["latency_p50", "latency_p95", "latency_p99", "latency_mean"]
    names += [f"qps@{t}" for t in cfg.threads]
    names += ["bound_p50", "bound_ratio", "build_seconds", "bytes_on_disk", "peak_rss", "index_rss"]
    return list(dict.fromkeys(names))


def collect(out: Path, cfg, plan) -> tuple[list[dict], dict]:
    """Stored runs of ``plan`` with their metrics, and query-set metadata by (dataset, checkpoint).

    Returns
    -------
    rows : one dict per measured configuration: the run record plus ``m`` (metric -> value).
    qmeta : query-set metadata (checkpoint kind, dims, nnz, exact quality of the checkpoint).
    """
    out = Path(out)
    machine = _read(out / "machine.json", {}) or {}
    bw = (machine.get("bandwidth") or {}).get("bound")
    names = _metric_names(cfg)
    rows = []
    qmeta: dict[tuple[str, str], dict] = {}
    for spec in plan:
        run = _read(out / "runs" / spec.dataset / f"{spec.run_id}.json")
        if not run or run.get("status") != "done":
            continue
        try:
            data = load_run_data(out, run, bandwidth=bw)
        except (OSError, KeyError, ValueError) as exc:
            logger.warning("skipping run %s in the report: %s", spec.run_id, exc)
            continue
        rows.append({**run, "m": compute_metrics(data, names)})
        key = (spec.dataset, spec.checkpoint)
        if key not in qmeta:
            qdir = out / "queries" / spec.dataset / spec.checkpoint
            meta = _read(qdir / "meta.json", {}) or {}
            ref = load_reference(qdir)
            exact = RunData(ids=ref["exact_ids"], true_scores=ref["exact_scores"], exact_scores=ref["exact_scores"],
                            latency_ns=np.zeros(0), targets=ref["targets"])
            quality = [m for m in cfg.metrics if get_metric(m)[0].kind == "quality"]
            meta["exact"] = compute_metrics(exact, quality) if ref["targets"] is not None else {}
            qmeta[key] = meta
    return rows, qmeta


# ------------------------------------------------------------------ helpers


def _fmt(v, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if kind == "bytes":
        v = float(v)
        for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if abs(v) >= div:
                return f"{v / div:.3g} {unit}"
        return f"{v:.0f} B"
    if kind == "ms":
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    if kind == "ratio":
        return f"{v:.3f}"
    if kind == "qps":
        return f"{v:,.0f}"
    if kind == "s":
        return f"{v:.4f}" if v < 0.01 else f"{v:.3g}" if v < 100 else f"{v:.0f}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items()) or "-"


_table = markdown_table


def _backend_class(name: str):
    """The registered class of a backend name, or None (unknown here, or not importable)."""
    from elsa_index.indexers import get_backend

    try:
        return get_backend(name)
    except ElsaIndexError:
        return None


def _exact_on_sparse(rows: list[dict], label: str) -> bool | None:
    """True/False: whether ``label``'s backend is exact (its class says so), for labels measured on sparse
    checkpoints; None for other labels or unknown backends."""
    rs = [r for r in rows if r["label"] == label]
    if not rs or not any(r.get("storage") == "sparse" for r in rs):
        return None
    cls = _backend_class(rs[0]["backend"])
    return None if cls is None else bool(cls.exact)


def _title(label: str) -> str:
    return label[:1].upper() + label[1:]


def fit_growth(sizes, values) -> tuple[float, float] | None:
    """Least-squares fit of ``log y = a + b log N``: returns ``(b, a)`` (exponent, intercept) or None."""
    x = np.asarray(sizes, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or len(np.unique(x[ok])) < 2:
        return None
    b, a = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
    return float(b), float(a)


def _tuned(rows: list[dict], metric: str | None, target: float) -> tuple[dict | None, bool]:
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
        parts.append(f"{what} {_fmt(x, kind)} vs {_fmt(y, kind)}{unit} ({verdict})")

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


def _name(r: dict) -> str:
    return f"{r['label']} on {r['checkpoint']}"


# ------------------------------------------------------------------- plots


_NO_PLOTS = "plots skipped: matplotlib is not installed (pip install \"elsa-index[bench]\")"


def _plt():
    """pyplot on the Agg backend, or None without matplotlib (the report then says plots were skipped)."""
    try:
        import matplotlib
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
    plt = _plt()
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
        items.append((f"{r['label']} · {r['checkpoint']}" + (f" ({_params(r['build'])})" if r["build"] else ""),
                      r["m"].get("bytes_on_disk", math.nan), r["m"].get("peak_rss", math.nan)))
    plt = _plt()
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
    plt = _plt()
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
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------- report


def write_report(out, cfg, plan) -> Path:
    """Render ``OUT/report.md`` and its PNG plots from the stored runs of ``plan``; returns the report path."""
    out = Path(out)
    rows, qmeta = collect(out, cfg, plan)
    machine = _read(out / "machine.json", {}) or {}
    skips = _read(out / "skipped.json", []) or []
    overhead = _read(out / "overhead.json")
    quality = [m for m in cfg.metrics if get_metric(m)[0].kind == "quality"]
    retrieval = [m for m in cfg.metrics if get_metric(m)[0].kind == "retrieval"]
    rmetric = cfg.retrieval_metric
    L: list[str] = [f"# {cfg.title}", ""]
    cmd = f"elsa-index bench {cfg.path or 'CONFIG'} --out {out}" + (" --quick" if cfg.quick else "")
    L += [f"Regenerate with `{cmd}` (add `--force` to re-measure; `--report-only` re-renders from the stored "
          f"raw results). Rendered {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}.", ""]
    L += _machine_lines(machine)
    L += _protocol_lines(cfg, machine)
    if skips:
        L += ["## Skipped", ""]
        merged: dict[tuple, list] = {}
        for sk in skips:
            merged.setdefault((sk.get("label", "?"), sk.get("reason", "")), []).append(sk.get("scope", ""))
        L += _table(["backend", "scope", "reason"], [[lbl, "; ".join(dict.fromkeys(scopes)), why]
                                                      for (lbl, why), scopes in merged.items()])
        L.append("")
    L += _overhead_lines(overhead)
    if _plt() is None:
        L += [f"*{_NO_PLOTS}.*", ""]
    groups = list(dict.fromkeys(r.group for r in plan))
    kinds = {d.name: d.kind for d in cfg.datasets}
    for g in groups:
        grows = [r for r in rows if r["group"] == g]
        if kinds.get(g) == "scale":
            L += _scale_section(out, cfg, g, grows, qmeta, retrieval, rmetric)
        else:
            L += _dataset_section(out, cfg, g, grows, qmeta, quality, retrieval, rmetric)
    path = out / "report.md"
    path.write_text("\n".join(L).rstrip() + "\n")
    return path


def _machine_lines(m: dict) -> list[str]:
    if not m:
        return []
    bw = m.get("bandwidth") or {}
    mem = m.get("memory_bytes")
    v = m.get("versions") or {}
    blas = m.get("blas") or []
    lines = ["## Machine", ""]
    lines.append(f"- CPU: {m.get('cpu')} ({m.get('cores')} cores available), memory {_fmt(mem, 'bytes')}, "
                 f"{m.get('os')}, Python {m.get('python')}")
    lines.append("- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    if blas:
        lines.append("- BLAS: " + ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} threads)"
                                            for b in blas))
    if bw:
        lines.append(f"- Memory bandwidth (one thread): copy {bw.get('copy', 0) / 1e9:.1f} GB/s (read + write), "
                     f"streaming read {bw.get('read', 0) / 1e9:.1f} GB/s; lower bounds use "
                     f"{bw.get('bound', 0) / 1e9:.1f} GB/s")
    if m.get("loadavg"):
        la = m["loadavg"]
        lines.append(f"- Load average when the run started: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} "
                     f"(other work on the machine inflates latencies)")
    lines.append("")
    return lines


def _protocol_lines(cfg, machine: dict) -> list[str]:
    t = ", ".join(str(x) for x in cfg.threads)
    return [
        "## Protocol", "",
        f"- Queries: up to {cfg.queries} per dataset; real data: held-out users' fold-in histories encoded as "
        "`x·A`, history excluded from the results; synthetic: fitted queries with the history they exclude. "
        f"Every configuration answers the same queries, k = {cfg.k}.",
        f"- Latency: one query at a time on one thread (BLAS/OpenMP pools limited to 1, backend `threads` = 1), "
        f"{cfg.warmup} warm-up queries first, `time.perf_counter_ns` around `search`, GC paused; p50/p95/p99 over "
        "all queries. Throughput: the whole query set as one batch (or split over a thread pool for backends "
        f"without a `threads` parameter) at {t} thread(s), median of {cfg.throughput_repeats} pass(es).",
        "- Retrieval recall@k: returned items whose exact score reaches the exact k-th score (ties count), over "
        "the exact top-k of the same embeddings. Recommendation quality (Recall@k normalised by min(k, |held-out|), "
        "NDCG@k): against the held-out items.",
        "- Memory: bytes of the index directory on disk; peak RSS (VmHWM) of a fresh process that opens the index "
        "and serves every query one at a time, minus that of a fresh process that only imports the package "
        f"(mode `{cfg.memory_probe}`; the JVM is inside the process for Lucene).",
        "- Lower bound: bytes a query must read (inverted index: 8 B per posting of its dimensions; Flat: every "
        "vector; IVF/HNSW: a model of the vectors visited) divided by the measured bandwidth; `x bound` is the "
        "measured p50 over the p50 bound.",
        "",
    ]


def _overhead_lines(o) -> list[str]:
    if not o:
        return []
    lines = ["## Harness overhead", ""]
    if "error" in o:
        return lines + [f"Not checked: {o['error']}", ""]
    ok = o.get("ratio_p50") is not None and abs(o["ratio_p50"] - 1) <= 0.10
    ok_mean = o.get("ratio_mean") is not None and abs(o["ratio_mean"] - 1) <= 0.10
    lines.append(f"A bare loop in a fresh process (`python -m elsa_index.eval.memprobe standalone`) timed the "
                 f"first {o['n']} queries of {o['label']} on {o['dataset']}/{o['checkpoint']} "
                 f"({_params(o.get('search') or {})}).")
    lines.append("")
    rows = [["harness, stored with the run", _fmt(o["harness_mean_ms"], "ms"), _fmt(o["harness_p50_ms"], "ms")]]
    if "harness_now_p50_ms" in o:
        rows.append(["harness loop, re-run around the bare loop", _fmt(o["harness_now_mean_ms"], "ms"),
                     _fmt(o["harness_now_p50_ms"], "ms")])
    rows += [["bare loop, fresh process", _fmt(o["standalone_mean_ms"], "ms"), _fmt(o["standalone_p50_ms"], "ms")],
             ["harness (re-run) / bare loop", _fmt(o.get("ratio_mean"), "ratio"), _fmt(o.get("ratio_p50"), "ratio")]]
    if o.get("stored_ratio_p50") is not None:
        rows.append(["harness (stored) / bare loop", "", _fmt(o["stored_ratio_p50"], "ratio")])
    lines += _table(["", "mean ms", "p50 ms"], rows, "lrr")
    lines += ["", f"The harness's p50 agrees with the bare loop's within 10%: **{'yes' if ok else 'no'}**; "
              f"mean: {'yes' if ok_mean else 'no'} (the bare loop's mean is the best of three passes without "
              "per-query timers; a mean includes every outlier of a shared machine). The stored number was "
              "measured earlier in the run; its ratio shows how much the machine's load drifted since.", ""]
    return lines


def _results_table(rows: list[dict], cfg, quality, retrieval, *, with_size: bool = False) -> list[str]:
    header = (["items"] if with_size else []) + ["backend", "checkpoint", "build", "search"]
    header += quality + retrieval + ["p50 ms", "p95 ms", "p99 ms", "bound ms", "x bound"]
    header += [f"qps@{t}" for t in cfg.threads] + ["build s", "disk", "RSS"]
    body = []
    for r in rows:
        m = r["m"]
        line = ([f"{r['size']:,}"] if with_size else []) + [r["label"], r["checkpoint"], _params(r["build"]),
                                                              _params(r["search"])]
        line += [_fmt(m.get(q), "ratio") for q in quality + retrieval]
        line += [_fmt(m.get("latency_p50"), "ms"), _fmt(m.get("latency_p95"), "ms"), _fmt(m.get("latency_p99"), "ms"),
                 _fmt(m.get("bound_p50"), "ms"), _fmt(m.get("bound_ratio"))]
        line += [_fmt(m.get(f"qps@{t}"), "qps") for t in cfg.threads]
        line += [_fmt(m.get("build_seconds"), "s"), _fmt(m.get("bytes_on_disk"), "bytes"), _fmt(m.get("peak_rss"), "bytes")]
        body.append(line)
    align = ("r" if with_size else "") + "llll" + "r" * (len(header) - 4 - (1 if with_size else 0))
    return _table(header, body, align)


def _memory_table(rows: list[dict]) -> list[str]:
    """One line per built index: disk, and the fresh serving process's memory split into runtime and index."""
    seen, body = set(), []
    for r in rows:
        key = (r.get("size"), r["label"], r["checkpoint"], json.dumps(r["build"], sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        mem = r.get("memory") or {}
        body.append(([f"{r['size']:,}"] if r.get("size") else []) + [
            r["label"], r["checkpoint"], _params(r["build"]), _fmt(r["m"].get("bytes_on_disk"), "bytes"),
            _fmt(r["m"].get("peak_rss"), "bytes"),
            _fmt(None if mem.get("runtime_rss_bytes") is None else max(0, mem["runtime_rss_bytes"]), "bytes"),
            _fmt(mem.get("loaded_rss_bytes"), "bytes"), _fmt(r["m"].get("index_rss"), "bytes"),
            _fmt(r["m"].get("build_seconds"), "s")])
    if not body:
        return []
    sized = any(r.get("size") for r in rows)
    header = (["items"] if sized else []) + ["backend", "checkpoint", "build", "disk", "peak RSS", "of which runtime",
                                             "after open", "index alone", "build s"]
    return (["Memory of a fresh serving process, minus a process that only imports the package: *runtime* is the "
             "backend's module and libraries imported (numba, faiss, the JVM), *after open* adds the index (*index "
             "alone* = after open - runtime); the peak adds serving every query (JIT compilation and search "
             "buffers included).", ""]
            + _table(header, body, ("r" if sized else "") + "lllrrrrrr") + [""])


def _dataset_section(out: Path, cfg, g: str, rows: list[dict], qmeta: dict, quality, retrieval, rmetric) -> list[str]:
    L = [f"## {g}", ""]
    cks = [(k[1], v) for k, v in qmeta.items() if k[0] == g]
    if cks:
        L += [f"{cks[0][1].get('n_queries')} queries (held-out users with a history and targets).", ""]
        header = ["checkpoint", "kind", "items", "dims", "nnz/item", "embedding bytes", "query terms (median)",
                  *[f"exact {q}" for q in quality]]
        body = []
        for name, m in cks:
            body.append([name, m.get("kind", "?"), f"{m.get('n_items', 0):,}", str(m.get("dims")),
                         f"{m.get('nnz_mean', 0):.1f}", _fmt(m.get("embedding_bytes"), "bytes"),
                         f"{m.get('query_terms_median', 0):g}",
                         *[_fmt((m.get("exact") or {}).get(q), "ratio") for q in quality]])
        L += _table(header, body, "llrrrrr" + "r" * len(quality)) + [""]
    if not rows:
        return L + ["No configuration measured.", ""]
    L += _results_table(rows, cfg, quality, retrieval) + [""]
    slug = g.replace("/", "_")
    p = plot_pareto(rows, out / f"pareto-{slug}.png", [rmetric] + quality[:1], g)
    if p:
        L += [f"![recall vs latency, {g}]({p.name})", ""]
    p = plot_memory(rows, out / f"memory-{slug}.png", g)
    if p:
        L += [f"![memory, {g}]({p.name})", ""]
    L += _memory_table(rows)
    L += _comparisons(cfg, rows, cks, quality, rmetric)
    return L


def _comparisons(cfg, rows: list[dict], cks: list[tuple[str, dict]], quality, rmetric) -> list[str]:
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
        return {lbl: _tuned(rs, rmetric, cfg.recall_target) for lbl, rs in by.items()}

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
                                 f"{_fmt(sr['m']['latency_p50'], 'ms')} / {_fmt(dr['m']['latency_p50'], 'ms')}",
                                 f"{_fmt(_memory(sr)[0], 'bytes')} / {_fmt(_memory(dr)[0], 'bytes')}",
                                 f"{_fmt(sr['m'].get('build_seconds'), 's')} / {_fmt(dr['m'].get('build_seconds'), 's')}",
                                 f"{_fmt(sr['m'].get(q), 'ratio')} / {_fmt(dr['m'].get(q), 'ratio')}" if q else "-"])
                    sentences.append(f"- {sname} ({slbl}) vs {partner[0]} ({dlbl}), {how}: "
                                     + _compare(sr, dr, f"{slbl}/{sname}", f"{dlbl}/{partner[0]}", q))
    if body:
        L += _table(["sparse", "pairing", "dense", "backends", "p50 ms", "memory", "build s", f"{q or 'quality'}"],
                    body, "lllrrrrr") + [""]
        L += ["Where each side wins (from the numbers above):", ""] + sentences + [""]
    return L


def _scale_section(out: Path, cfg, g: str, rows: list[dict], qmeta: dict, retrieval, rmetric) -> list[str]:
    d = cfg.dataset(g)
    L = [f"## {g}: synthetic catalogues", ""]
    st = _read(out / "synthetic" / g / "stats.json", {}) or {}
    s = st.get("summary") or {}
    if s:
        spread = f" (generated over {d.dims} dims, same skew)" if d.dims else ""
        L.append(f"Statistics fitted from {s.get('source_dataset', s.get('source_path', '?'))}/"
                 f"{s.get('source_checkpoint', '')} ({s.get('source_n_items', '?')} items): {s.get('dims')} dims{spread}, "
                 f"{s.get('nnz_mean', 0):.1f} nnz/item, the top 1% of dims hold {100 * s.get('top1pct_dims_share', 0):.1f}% "
                 f"of the postings, {100 * s.get('negative_fraction', 0):.0f}% negative values, median history "
                 f"{s.get('history_median', '-')}, median query terms {s.get('query_terms_median', '-')} "
                 f"(generated: {d.query_terms or 'as fitted'}).")
        L.append("")
    sizes = {k[0]: v.get("size") for k, v in qmeta.items() if k[0].startswith(g + "-")}
    if not rows:
        return L + ["No configuration measured.", ""]
    rows = sorted(rows, key=lambda r: (r.get("size") or 0))
    L += _results_table(rows, cfg, [], retrieval, with_size=True) + [""]
    # Per backend (label x checkpoint): the tuned configuration at each size.
    tuned: dict[str, dict[int, tuple[dict, bool]]] = {}
    for r in rows:
        tuned.setdefault(r["label"], {}).setdefault(r["size"], None)
    for lbl in tuned:
        for n in tuned[lbl]:
            tuned[lbl][n] = _tuned([r for r in rows if r["label"] == lbl and r["size"] == n], rmetric, cfg.recall_target)
    lat = {lbl: [(n, t[0]["m"]["latency_p50"]) for n, t in v.items() if t[0]] for lbl, v in tuned.items()}
    exact = {lbl: _exact_on_sparse(rows, lbl) for lbl in tuned}
    bound = {f"{lbl} lower bound": [(n, t[0]["m"].get("bound_p50")) for n, t in v.items() if t[0]]
             for lbl, v in tuned.items() if exact[lbl]}
    disk = {f"{lbl} disk": [(n, t[0]["m"].get("bytes_on_disk")) for n, t in v.items() if t[0]] for lbl, v in tuned.items()}
    rss = {f"{lbl} RSS": [(n, t[0]["m"].get("peak_rss")) for n, t in v.items() if t[0]] for lbl, v in tuned.items()}
    opened = {f"{lbl} opened": [(n, t[0]["m"].get("index_rss")) for n, t in v.items() if t[0]]
              for lbl, v in tuned.items()}
    for n in sorted({r["size"] for r in rows}):
        p = plot_pareto([r for r in rows if r["size"] == n], out / f"pareto-{g}-{n}.png", [rmetric], f"{g} {n:,} items")
        if p:
            L += [f"![recall vs latency, {n:,} items]({p.name})", ""]
    p = plot_scale(lat, out / f"scale-latency-{g}.png", "p50 latency (ms, log)", f"{g}: latency vs catalogue size",
                   extra=bound)
    if p:
        L += [f"![latency vs size]({p.name})", ""]
    p = plot_scale({**disk, **rss, **opened}, out / f"scale-memory-{g}.png", "bytes (log)",
                   f"{g}: memory vs catalogue size")
    if p:
        L += [f"![memory vs size]({p.name})", ""]
    L += _memory_table(rows)
    # Growth exponents and the extrapolation.
    ext = list(d.extrapolate)
    header = ["backend", "quantity", "exponent b"] + [f"at {n:,}" for n in ext]
    body = []
    for series, what, kind in ((lat, "p50 ms", "ms"), (disk, "disk", "bytes"), (rss, "peak RSS", "bytes"),
                               (opened, "opened index RSS", "bytes")):
        for name, pts in series.items():
            pts = [(n, v) for n, v in pts if v is not None and math.isfinite(v) and v > 0]
            fit = fit_growth(*zip(*pts)) if len(pts) >= 2 else None
            if not fit:
                continue
            b, a = fit
            body.append([name.split(" ")[0], what, f"{b:.2f}"] + [_fmt(math.exp(a) * n ** b, kind) for n in ext])
    if body:
        L += ["Growth fitted as `y = c N^b` (least squares on log-log); the last columns extrapolate it (an "
              "estimate, not a measurement).", ""]
        L += _table(header, body, "llr" + "r" * len(ext)) + [""]
    # Targets and verdicts per size.
    largest = max(n for v in tuned.values() for n in v)
    target, goal = cfg.report.latency_target_ms, cfg.report.latency_goal_ms
    for lbl in (lbl for lbl in tuned if exact[lbl]):
        best = tuned[lbl].get(largest)
        if best and best[0]:
            p50 = best[0]["m"]["latency_p50"]
            L.append(f"- Exact {lbl} backend at {largest:,} items: p50 {p50:.2f} ms "
                     f"(target <= {target:g} ms: {'met' if p50 <= target else 'missed'}; goal {goal:g} ms: "
                     f"{'met' if p50 <= goal else 'missed'}), lower bound {_fmt(best[0]['m'].get('bound_p50'), 'ms')} ms.")
    for lbl in (lbl for lbl in tuned if exact[lbl] is False):
        best = tuned[lbl].get(largest)
        if not (best and best[0]):
            continue
        L.append(f"- {_title(lbl)} at {largest:,} items, fastest configuration with {rmetric} >= {cfg.recall_target}: "
                 f"{_params(best[0]['search']) if best[1] else 'none reaches it; most accurate: ' + _params(best[0]['search'])}"
                 f", p50 {best[0]['m']['latency_p50']:.2f} ms, {rmetric} {best[0]['m'].get(rmetric, math.nan):.4f}.")
        # A search parameter set in some configurations only (e.g. a query-pruning cut): the best without it.
        at_size = [r for r in rows if r["label"] == lbl and r["size"] == largest]
        optional = [p for p in dict.fromkeys(p for r in at_size for p in r["search"])
                    if any(r["search"].get(p) is None for r in at_size)]
        for p in optional:
            full = _tuned([r for r in at_size if r["search"].get(p) is None], rmetric, cfg.recall_target)
            if full[0] and full[1] and full[0] is not best[0]:
                L.append(f"- {_title(lbl)} at {largest:,} items without `{p}`: {_params(full[0]['search'])}, "
                         f"p50 {full[0]['m']['latency_p50']:.2f} ms, {rmetric} {full[0]['m'].get(rmetric, math.nan):.4f}.")
    L.append("")
    sparse_lbls = [lbl for lbl, v in tuned.items() if any(t[0] and t[0]["storage"] == "sparse" for t in v.values())]
    dense_lbls = [lbl for lbl, v in tuned.items() if any(t[0] and t[0]["storage"] == "dense" for t in v.values())]
    if sparse_lbls and dense_lbls:
        L += [f"Where the sparse inverted index wins or loses against the dense backends (each at its fastest configuration with "
              f"{rmetric} >= {cfg.recall_target}, * if none reaches it):", ""]
        for n in sorted({n for v in tuned.values() for n in v}):
            for slbl in sparse_lbls:
                for dlbl in dense_lbls:
                    a, b = tuned[slbl].get(n), tuned[dlbl].get(n)
                    if not a or not b or not a[0] or not b[0]:
                        continue
                    L.append(f"- {n:,} items, {slbl}{'' if a[1] else '*'} vs {dlbl}{'' if b[1] else '*'}: "
                             + _compare(a[0], b[0], slbl, dlbl, rmetric))
        L.append("")
    return L
