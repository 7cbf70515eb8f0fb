"""Markdown report of a benchmark output directory, with its PNG plots.

Every number is recomputed from the stored raw per-query results through the
metric registry (:mod:`elsa_index.eval.registry`), so a report can be
re-rendered (``elsa-index bench CONFIG --out DIR --report-only``) after a
metric is added, without measuring again. This module assembles the
document; the figures are drawn by :mod:`~elsa_index.eval.plots`, the
verdicts (who wins, targets met) are written by
:mod:`~elsa_index.eval.verdicts`, cells are formatted by
:mod:`~elsa_index.eval.tables`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from pathlib import Path

import numpy as np

from .plots import NO_PLOTS, fit_growth, plot_memory, plot_pareto, plot_scale, pyplot
from .registry import RunData, compute_metrics, get_metric
from .store import load_reference, load_run_data, read_json
from .tables import fmt_params, fmt_value, markdown_table
from .verdicts import comparisons, equal_recall, exact_on_sparse, extrapolated_verdicts, scale_verdicts, tuned

logger = logging.getLogger(__name__)

__all__ = ["write_report", "collect", "scale_section"]


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
        L += markdown_table(["backend", "scope", "reason"], [[lbl, "; ".join(dict.fromkeys(scopes)), why]
                                                      for (lbl, why), scopes in merged.items()])
        L.append("")
    L += _overhead_lines(overhead)
    if pyplot() is None:
        L += [f"*{NO_PLOTS}.*", ""]
    groups = list(dict.fromkeys(r.group for r in plan))
    kinds = {d.name: d.kind for d in cfg.datasets}
    for g in groups:
        grows = [r for r in rows if r["group"] == g]
        if kinds.get(g) == "scale":
            L += scale_section(out, cfg, g, grows, qmeta, retrieval, rmetric)
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
    lines.append(f"- CPU: {m.get('cpu')} ({m.get('cores')} cores available), memory {fmt_value(mem, 'bytes')}, "
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
        f"{cfg.index_warmup_seconds:g} s of warm-up queries once per opened index (JIT-compiled backends), then "
        f"{cfg.warmup} warm-up queries per configuration, `time.perf_counter_ns` around `search`, GC paused; p50/p95/p99 over "
        "all queries. Throughput: the whole query set as one batch (or split over a thread pool for backends "
        f"without a `threads` parameter) at {t} thread(s), median of {cfg.throughput_repeats} pass(es).",
        "- Retrieval recall@k: returned items whose exact score reaches the exact k-th score (ties count), over "
        "the exact top-k of the same embeddings. Recommendation quality (Recall@k normalised by min(k, |held-out|), "
        "NDCG@k): against the held-out items.",
        "- Memory: bytes of the index directory on disk; peak RSS (VmHWM) of a fresh process that opens the index "
        "and serves every query one at a time, minus that of a fresh process that only imports the package "
        f"(mode `{cfg.memory_probe}`; the JVM is inside the process for Lucene).",
        "- Load: the machine's 1-minute load average when the configuration was measured (the *Machine* section gives "
        "the load when the last measuring invocation started); a build's seconds ran under the load of its time.",
        "- Lower bound: bytes a query must read, from each backend's own cost model (an inverted index: the bytes per "
        "posting of its layout times the postings of the query's dimensions; Flat: every vector; IVF/HNSW: a model "
        "of the vectors visited) divided by the measured bandwidth; `x bound` is the measured p50 over the p50 bound.",
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
                 f"({fmt_params(o.get('search') or {})}).")
    lines.append("")
    rows = [["harness, stored with the run", fmt_value(o["harness_mean_ms"], "ms"), fmt_value(o["harness_p50_ms"], "ms")]]
    if "harness_now_p50_ms" in o:
        rows.append(["harness loop, re-run around the bare loop", fmt_value(o["harness_now_mean_ms"], "ms"),
                     fmt_value(o["harness_now_p50_ms"], "ms")])
    rows += [["bare loop, fresh process", fmt_value(o["standalone_mean_ms"], "ms"), fmt_value(o["standalone_p50_ms"], "ms")],
             ["harness (re-run) / bare loop", fmt_value(o.get("ratio_mean"), "ratio"), fmt_value(o.get("ratio_p50"), "ratio")]]
    if o.get("stored_ratio_p50") is not None:
        rows.append(["harness (stored) / bare loop", "", fmt_value(o["stored_ratio_p50"], "ratio")])
    lines += markdown_table(["", "mean ms", "p50 ms"], rows, "lrr")
    lines += ["", f"The harness's p50 agrees with the bare loop's within 10%: **{'yes' if ok else 'no'}**; "
              f"mean: {'yes' if ok_mean else 'no'} (the bare loop's mean is the best of three passes without "
              "per-query timers; a mean includes every outlier of a shared machine). The stored number was "
              "measured earlier in the run; its ratio shows how much the machine's load drifted since.", ""]
    return lines


def _results_table(rows: list[dict], cfg, quality, retrieval, *, with_size: bool = False) -> list[str]:
    header = (["items"] if with_size else []) + ["backend", "checkpoint", "build", "search"]
    header += quality + retrieval + ["p50 ms", "p95 ms", "p99 ms", "bound ms", "x bound"]
    header += [f"qps@{t}" for t in cfg.threads] + ["build s", "disk", "RSS", "load"]
    body = []
    for r in rows:
        m = r["m"]
        line = ([f"{r['size']:,}"] if with_size else []) + [r["label"], r["checkpoint"], fmt_params(r["build"]),
                                                              fmt_params(r["search"])]
        line += [fmt_value(m.get(q), "ratio") for q in quality + retrieval]
        line += [fmt_value(m.get("latency_p50"), "ms"), fmt_value(m.get("latency_p95"), "ms"), fmt_value(m.get("latency_p99"), "ms"),
                 fmt_value(m.get("bound_p50"), "ms"), fmt_value(m.get("bound_ratio"))]
        line += [fmt_value(m.get(f"qps@{t}"), "qps") for t in cfg.threads]
        line += [fmt_value(m.get("build_seconds"), "s"), fmt_value(m.get("bytes_on_disk"), "bytes"), fmt_value(m.get("peak_rss"), "bytes"),
                 f"{r['loadavg'][0]:.1f}" if r.get("loadavg") else "-"]
        body.append(line)
    align = ("r" if with_size else "") + "llll" + "r" * (len(header) - 4 - (1 if with_size else 0))
    return markdown_table(header, body, align)


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
            r["label"], r["checkpoint"], fmt_params(r["build"]), fmt_value(r["m"].get("bytes_on_disk"), "bytes"),
            fmt_value(r["m"].get("peak_rss"), "bytes"),
            fmt_value(None if mem.get("runtime_rss_bytes") is None else max(0, mem["runtime_rss_bytes"]), "bytes"),
            fmt_value(mem.get("loaded_rss_bytes"), "bytes"), fmt_value(r["m"].get("index_rss"), "bytes"),
            fmt_value(r["m"].get("build_seconds"), "s")])
    if not body:
        return []
    sized = any(r.get("size") for r in rows)
    header = (["items"] if sized else []) + ["backend", "checkpoint", "build", "disk", "peak RSS", "of which runtime",
                                             "after open", "index alone", "build s"]
    return (["Memory of a fresh serving process, minus a process that only imports the package: *runtime* is the "
             "backend's module and libraries imported (numba, faiss, the JVM), *after open* adds the index (*index "
             "alone* = after open - runtime); the peak adds serving every query (JIT compilation and search "
             "buffers included).", ""]
            + markdown_table(header, body, ("r" if sized else "") + "lllrrrrrr") + [""])


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
                         f"{m.get('nnz_mean', 0):.1f}", fmt_value(m.get("embedding_bytes"), "bytes"),
                         f"{m.get('query_terms_median', 0):g}",
                         *[fmt_value((m.get("exact") or {}).get(q), "ratio") for q in quality]])
        L += markdown_table(header, body, "llrrrrr" + "r" * len(quality)) + [""]
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
    L += equal_recall(cfg, rows, rmetric)
    L += comparisons(cfg, rows, cks, quality, rmetric)
    return L


def scale_section(out: Path, cfg, g: str, rows: list[dict], qmeta: dict, retrieval, rmetric) -> list[str]:
    """The report section of the scale dataset ``g``, as lines: fitted statistics, results by size, plots,
    memory, growth exponents with their extrapolation, and the verdicts (:func:`~elsa_index.eval.verdicts.scale_verdicts`).

    Parameters
    ----------
    out : the output directory (plots are written there).
    rows : the dataset's measured configurations (:func:`collect`); qmeta : query-set metadata (unused here).
    retrieval : the retrieval metrics of the config; rmetric : the one the recall target applies to.
    """
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
    if not rows:
        return L + ["No configuration measured.", ""]
    rows = sorted(rows, key=lambda r: (r.get("size") or 0))
    L += _results_table(rows, cfg, [], retrieval, with_size=True) + [""]
    # Per backend (label x checkpoint): the tuned configuration at each size.
    tuned_rows: dict[str, dict[int, tuple[dict, bool]]] = {}
    for r in rows:
        tuned_rows.setdefault(r["label"], {}).setdefault(r["size"], None)
    for lbl in tuned_rows:
        for n in tuned_rows[lbl]:
            tuned_rows[lbl][n] = tuned([r for r in rows if r["label"] == lbl and r["size"] == n], rmetric, cfg.recall_target)
    lat = {lbl: [(n, t[0]["m"]["latency_p50"]) for n, t in v.items() if t[0]] for lbl, v in tuned_rows.items()}
    exact = {lbl: exact_on_sparse(rows, lbl) for lbl in tuned_rows}
    bound = {f"{lbl} lower bound": [(n, t[0]["m"].get("bound_p50")) for n, t in v.items() if t[0]]
             for lbl, v in tuned_rows.items() if exact[lbl]}
    disk = {f"{lbl} disk": [(n, t[0]["m"].get("bytes_on_disk")) for n, t in v.items() if t[0]] for lbl, v in tuned_rows.items()}
    rss = {f"{lbl} RSS": [(n, t[0]["m"].get("peak_rss")) for n, t in v.items() if t[0]] for lbl, v in tuned_rows.items()}
    opened = {f"{lbl} opened": [(n, t[0]["m"].get("index_rss")) for n, t in v.items() if t[0]]
              for lbl, v in tuned_rows.items()}
    build = {f"{lbl} build": [(n, t[0]["m"].get("build_seconds")) for n, t in v.items() if t[0]]
             for lbl, v in tuned_rows.items()}
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
                               (opened, "opened index RSS", "bytes"), (build, "build s", "s")):
        for name, pts in series.items():
            pts = [(n, v) for n, v in pts if v is not None and math.isfinite(v) and v > 0]
            fit = fit_growth(*zip(*pts)) if len(pts) >= 2 else None
            if not fit:
                continue
            b, a = fit
            body.append([name.split(" ")[0], what, f"{b:.2f}"] + [fmt_value(math.exp(a) * n ** b, kind) for n in ext])
    if body:
        L += ["Growth fitted as `y = c N^b` (least squares on log-log); the last columns extrapolate it (an "
              "estimate, not a measurement).", ""]
        L += markdown_table(header, body, "llr" + "r" * len(ext)) + [""]
    L += equal_recall(cfg, rows, rmetric)
    L += scale_verdicts(cfg, rows, tuned_rows, exact, rmetric)
    L += extrapolated_verdicts(tuned_rows, rmetric)
    return L
