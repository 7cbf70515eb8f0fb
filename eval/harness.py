"""The benchmark harness: every backend, the same queries, stored raw results, a report.

``elsa-index bench CONFIG --out DIR`` (or :func:`run_bench`) reads a
configuration (:mod:`elsa_index.eval.config`) and, per dataset:

1. prepares the data: loads and splits the interactions and trains (or
   loads) each checkpoint; for a ``scale`` dataset, fits statistics from a
   trained Compressed ELSA checkpoint and draws synthetic catalogues of each
   size, with dense counterparts (:mod:`elsa_index.eval.scale`);
2. fixes the queries once per checkpoint: the held-out users' fold-in
   histories encoded as ``x·A`` (history excluded from the results), or the
   synthetic queries and their histories; computes the exact top-K of the
   same embeddings with the exact ``sparse`` backend;
3. builds each index once per build-parameter set (build time, bytes on
   disk), probes the peak RSS of a fresh process that opens it and serves the
   queries (:mod:`elsa_index.eval.memprobe`), and sweeps the search
   parameters; per configuration it times every query alone on one thread
   after a warm-up (``time.perf_counter_ns``) and runs batched passes at each
   stated thread count (throughput);
4. stores raw per-query results (ids, scores, exact scores of the returned
   ids, latency) as Parquet and the run's numbers as JSON under ``OUT/runs``;
   metrics are computed from them afterwards by the registry
   (:mod:`elsa_index.eval.registry`);
5. checks the harness's own overhead against a bare timing loop in a fresh
   process, and renders ``OUT/report.md`` with PNG plots
   (:mod:`elsa_index.eval.report`).

A configuration already measured (same dataset, checkpoint recipe, backend,
parameters, k, query count, ...) is skipped on the next invocation unless
``force``; built indexes and trained checkpoints are reused too (``force``
rebuilds indexes; delete ``OUT/checkpoints`` to retrain).

Layout of ``OUT``::

    config.json  machine.json  plan.json  skipped.json  overhead.json  report.md  *.png
    checkpoints/<dataset>/<name>/            trained checkpoints (+ <name>.recipe.json)
    synthetic/<dataset>/stats.json           fitted statistics of a scale dataset
    queries/<dataset>/<checkpoint>/          queries.npz, reference.npz, meta.json
    indexes/<dataset>/<checkpoint>/<label>-<build id>/        backend directory
    indexes/<dataset>/<checkpoint>/<label>-<build id>.json    build record
    runs/<dataset>/<run id>.json / .parquet  one configuration: numbers / per-query results

The jobs are split over modules: :mod:`~elsa_index.eval.plan` (what to
measure, ids), :mod:`~elsa_index.eval.prepare` (data, checkpoints, query
sets), :mod:`~elsa_index.eval.measure` (one configuration),
:mod:`~elsa_index.eval.store` (files), :mod:`~elsa_index.eval.report`; this
module only orchestrates them (:func:`run_bench`).
"""

from __future__ import annotations

import datetime as _dt
import functools
import gc
import logging
import os
from pathlib import Path

from tqdm.auto import tqdm

from elsa_index.errors import BenchError, ElsaIndexError
from elsa_index.indexers.base import Backend

from .config import BenchConfig, load_config
from .machine import machine_info, measure_bandwidth
from .measure import build_index, measure_config, overhead_check, probe_memory, search_params_of, warm_index
from .memprobe import baseline_rss
from .plan import RunSpec, plan_runs, resolve_backends, size_label
from .prepare import Workspace
from .report import write_report
from .store import index_paths, is_done, load_run_data, write_json

logger = logging.getLogger(__name__)

__all__ = ["run_bench", "plan_runs", "resolve_backends", "RunSpec", "load_run_data", "BenchError", "size_label",
           "load_config"]


def _collects_young_only(fn):
    """Let ``fn``'s garbage collections scan only the objects it creates.

    The harness collects garbage before each timing pass and after each index. The objects alive before the
    run (imported modules, torch's and matplotlib's alone are a few hundred thousand; a calling test
    session's) are not the run's garbage, yet every full collection scanned them all again, a few tenths of
    a second each, dozens of times per run. :func:`gc.freeze` moves them to the permanent generation for the
    duration of the call and :func:`gc.unfreeze` hands them back; a caller that froze objects itself is left
    as it is.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if gc.get_freeze_count():
            return fn(*args, **kwargs)
        gc.freeze()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.unfreeze()

    return wrapper


@_collects_young_only
def run_bench(config: BenchConfig | str | os.PathLike, out: str | os.PathLike, *, quick: bool = False,
              force: bool = False, progress: bool = True, report: bool = True, prepare_only: bool = False,
              say=None) -> dict:
    """Run (or resume) a benchmark and render its report.

    Parameters
    ----------
    config : a :class:`BenchConfig` or the path of a TOML config.
    out : output directory (created; reused to resume).
    quick : apply the config's ``[quick]`` overrides (when ``config`` is a path).
    force : re-measure configurations already measured and rebuild indexes.
    progress : show a progress bar (tqdm).
    report : render ``OUT/report.md`` and the plots at the end.
    prepare_only : only train the checkpoints and prepare the query sets
        (with their exact references) that the measurements need; build no
        index, measure nothing, render no report. Lets the training run where
        it is fast (e.g. a CUDA machine) and the measurements, resumed with the
        same ``out``, on the machine under test.
    say : callable for one-line status messages (default: the logger).

    Returns
    -------
    dict with ``measured``, ``reused``, ``skipped``, ``prepared`` (counts),
    ``skips`` (reasons), ``report`` (path or None), ``out``.
    """
    cfg = config if isinstance(config, BenchConfig) else load_config(config, quick=quick)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create the output directory {out}: {exc}") from None
    say = say or (lambda msg: logger.info("%s", msg))
    classes, reasons = resolve_backends(cfg)
    plan = plan_runs(cfg, classes)
    write_json(out / "config.json", {"path": cfg.path, "quick": cfg.quick, "config": cfg.raw})
    write_json(out / "plan.json", [r.record() for r in plan])
    skips: list[dict] = [{"label": lbl, "backend": next(b.name for b in cfg.backends if b.label == lbl),
                          "reason": why, "scope": "all datasets"} for lbl, why in reasons.items()]
    ws = Workspace(cfg, out, say=say)
    counts = {"measured": 0, "reused": 0, "skipped": 0, "prepared": 0}
    baseline = None
    machine_recorded = False
    bar = tqdm(total=len(plan), disable=not progress, desc="bench", unit="cfg", dynamic_ncols=True)
    bar_say = say

    def say_bar(msg):
        bar.set_postfix_str(msg[:60], refresh=True)
        bar_say(msg)

    ws.say = say_bar
    try:
        groups: dict[tuple, list[RunSpec]] = {}
        for r in plan:
            groups.setdefault((r.dataset, r.checkpoint, r.backend.label, r.build_id), []).append(r)
        for (dataset, ckpt, label, _), runs in groups.items():
            cls = classes.get(label)
            todo = [r for r in runs if force or not is_done(out, r)]
            counts["reused"] += len(runs) - len(todo)
            if cls is None:
                counts["skipped"] += len(todo)
                bar.update(len(runs))
                continue
            bar.update(len(runs) - len(todo))
            if not todo:
                continue
            first = todo[0]
            qset = ws.queryset(first)
            if prepare_only:
                counts["prepared"] += len(todo)
                bar.update(len(todo))
                continue
            if not machine_recorded:
                _record_machine(out, cfg)
                machine_recorded = True
            bar.set_postfix_str(f"{dataset} {ckpt} {label} build {first.build or ''}"[:60], refresh=True)
            try:
                rec = build_index(out, first, cls, qset, force=force)
            except (ImportError, ElsaIndexError) as exc:
                reason = f"build failed: {exc}"
                logger.warning("%s on %s/%s %s: %s", label, dataset, ckpt, first.build, reason)
                skips.append({"label": label, "backend": first.backend.name, "scope": f"{dataset}/{ckpt} {first.build}",
                              "reason": reason})
                counts["skipped"] += len(todo)
                bar.update(len(todo))
                continue
            if force:
                rec["memory"] = None
            if cfg.memory_probe != "off" and baseline is None:
                baseline = baseline_rss()
            if cfg.memory_probe == "build" and rec.get("memory") is None:
                try:
                    rec["memory"] = probe_memory(rec, qset, cfg.k, first.search, baseline, target=first.target)
                except ElsaIndexError as exc:
                    logger.warning("memory probe failed for %s: %s", label, exc)
                    rec["memory"] = {"error": str(exc)}
                write_json(index_paths(out, first)[1], rec)
            be = Backend.load(rec["index_dir"])
            try:
                be.set_search_params(**search_params_of(be, first.search))
                warm_index(be, qset.qs, qset.xs, cfg.k, cfg.index_warmup_seconds)
            except ElsaIndexError as exc:  # the configuration's own measurement below reports it
                logger.warning("warm-up of %s on %s/%s failed: %s", label, dataset, ckpt, exc)
            for r in todo:
                bar.set_postfix_str(f"{dataset} {ckpt} {label} {r.search or ''}"[:60], refresh=True)
                try:
                    meta = measure_config(cfg, out, r, be, rec, qset, baseline)
                except ElsaIndexError as exc:
                    logger.warning("%s %s on %s/%s failed: %s", label, r.search, dataset, ckpt, exc)
                    skips.append({"label": label, "backend": r.backend.name, "reason": f"search failed: {exc}",
                                  "scope": f"{dataset}/{ckpt} {r.build} {r.search}"})
                    counts["skipped"] += 1
                    bar.update(1)
                    continue
                counts["measured"] += 1
                bar.update(1)
                logger.info("%s %s %s %s: p50 %.3f ms", dataset, ckpt, label, r.search, meta["latency_p50_ms"])
            del be
            gc.collect()
        if prepare_only:
            return {**counts, "skips": skips, "report": None, "out": str(out)}
        if not machine_recorded and not (out / "machine.json").is_file():
            _record_machine(out, cfg)
        write_json(out / "skipped.json", skips)
        if cfg.overhead is not None:
            overhead_check(cfg, out, plan, force=force, say=say_bar)
    finally:
        bar.close()
    result = {**counts, "skips": skips, "report": None, "out": str(out)}
    if report:
        result["report"] = str(write_report(out, cfg, plan))
    return result


def _record_machine(out: Path, cfg: BenchConfig) -> None:
    """Write ``machine.json``: the machine the numbers come from, measured just before this invocation's first
    measurement (a resume that measures nothing keeps the record of the invocation that did)."""
    machine = machine_info()
    machine["bandwidth"] = measure_bandwidth(cfg.bandwidth_mb << 20)
    machine["measured"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json(out / "machine.json", machine)
