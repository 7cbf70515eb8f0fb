"""Measuring one configuration: build (or reuse) its index, time it, probe its memory, store the results.

Per built index: build time and bytes on disk, and the peak RSS of a fresh
process that opens it and serves the queries (:mod:`elsa_index.eval.memprobe`).
Per configuration: every query alone on one thread after a warm-up
(``time.perf_counter_ns``, GC paused), batched passes at each stated thread
count (throughput), the exact scores of what was returned, and the bytes each
query must read under the backend's own cost model
(``Backend.touched_bytes``); stored through :mod:`elsa_index.eval.store`.
The harness-overhead check compares the timing loop with a bare loop in a
fresh process.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import gc
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from elsa_index.checkpoint import Checkpoint
from elsa_index.errors import ElsaIndexError
from elsa_index.indexers.base import Backend

from .config import BenchConfig
from .machine import thread_limits
from .memprobe import load_queries, serve_rss, split_rows, standalone_latency
from .plan import RunSpec
from .prepare import QuerySet, true_scores
from .registry import latency_percentiles
from .store import index_paths, is_done, load_reference, run_paths, write_json, write_run

logger = logging.getLogger(__name__)

__all__ = ["warm_index", "latency_pass", "throughput", "build_index", "probe_memory", "measure_config", "search_params_of", "overhead_check",
           "harness_loop"]


def warm_index(be, qs, xs, k: int, seconds: float) -> int:
    """Single queries, the query set cycled, for ``seconds`` (0: none); returns how many were searched.

    Run once per opened index before its first configuration, so that no configuration is timed while the
    backend's code is still being compiled (a JVM's just-in-time compiler needs thousands of calls).
    """
    n, done = len(qs), 0
    if not n or seconds <= 0:
        return 0
    end = time.perf_counter() + seconds
    with thread_limits(1):
        while time.perf_counter() < end:
            be.search(qs[done % n], k, exclude=xs[done % n])
            done += 1
    return done


def latency_pass(be, qs, xs, k: int, warmup: int):
    """Single-query pass after a warm-up: (ids, scores, latency_ns), all queries in order."""
    n = len(qs)
    for i in range(min(warmup, n) if n else 0):
        be.search(qs[i], k, exclude=xs[i])
    ids = np.empty((n, k), np.int64)
    scores = np.empty((n, k), np.float32)
    lat = np.empty(n, np.int64)
    clock = time.perf_counter_ns
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        for i in range(n):
            t0 = clock()
            res = be.search(qs[i], k, exclude=xs[i])
            lat[i] = clock() - t0
            ids[i], scores[i] = res.ids[0], res.scores[0]
    finally:
        if was:
            gc.enable()
    return ids, scores, lat


def throughput(be, Q, X, k: int, threads: int, repeats: int) -> tuple[float, str, list[float]]:
    """Queries per second of batched searches with ``threads`` threads: (qps, how, seconds per pass)."""
    n = Q.shape[0]
    pool = None
    if "threads" in be.search_params:
        be.set_search_params(threads=threads)
        how = "backend threads"

        def once():
            be.search(Q, k, exclude=X)
    elif threads == 1:
        how = "one batch"

        def once():
            be.search(Q, k, exclude=X)
    else:
        how = "python thread pool"
        bounds = np.linspace(0, n, threads + 1).astype(int)
        chunks = [(Q[a:b], X[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        pool = cf.ThreadPoolExecutor(max_workers=threads)

        def once():
            list(pool.map(lambda c: be.search(c[0], k, exclude=c[1]), chunks))
    times = []
    try:
        with thread_limits(threads):
            once()  # warm-up
            for _ in range(repeats):
                t0 = time.perf_counter()
                once()
                times.append(time.perf_counter() - t0)
    finally:
        if pool is not None:
            pool.shutdown()
        if "threads" in be.search_params:
            be.set_search_params(threads=1)
    return n / float(np.median(times)), how, times


_WARMED: set = set()


def _warm_up_backend(cls, storage: str, tmp: Path) -> None:
    """Build and search a tiny index once per backend class, so that the first timed build does not
    pay for importing the backend's libraries (faiss, numba compilation, starting the JVM)."""
    key = (cls.name, storage)
    if key in _WARMED:
        return
    _WARMED.add(key)
    rng = np.random.default_rng(0)
    n, d = 64, 16
    emb = rng.standard_normal((n, d)).astype(np.float32)
    if storage == "sparse":
        emb[np.abs(emb) < 1.0] = 0.0
        emb[:, 0] = 1.0  # no empty row
        emb = sp.csr_matrix(emb)
    ck = Checkpoint(emb, [f"w{i}" for i in range(n)], np.zeros(n, np.int64), kind="imported")
    try:
        params = {"threads": 1} if "threads" in cls.search_params else {}
        be = cls(**params).build(ck)
        be.search(emb[:2], 5)
        be.save(tmp / f"warm-{cls.name}", overwrite=True)
    except Exception as exc:  # noqa: BLE001 - only a warm-up; the real build reports problems
        logger.debug("warm-up of %s failed: %s", cls.name, exc)
    finally:
        shutil.rmtree(tmp / f"warm-{cls.name}", ignore_errors=True)


def build_index(out: Path, spec: RunSpec, cls, qset: QuerySet, *, force: bool) -> dict:
    """Build (or reuse) the index of ``spec``'s build parameters; return its build record (build time, bytes
    on disk, ``info()``, directory)."""
    idx_dir, rec_file = index_paths(out, spec)
    if not force and rec_file.is_file() and idx_dir.is_dir():
        try:
            rec = json.loads(rec_file.read_text())
            if rec.get("fingerprint") == qset.meta["fingerprint"]:
                return rec
        except (OSError, ValueError):
            pass
    if idx_dir.exists():
        shutil.rmtree(idx_dir)
    _warm_up_backend(cls, qset.meta["storage"], out / "indexes")
    params = dict(spec.build)
    if "threads" in cls.search_params:
        params["threads"] = 1
    be = cls(**params, **spec.search)
    be.build(qset.checkpoint)
    be.save(idx_dir, overwrite=True)
    info = be.info()
    rec = {"build_id": spec.build_id, "backend": spec.backend.name, "label": spec.backend.label,
           "dataset": spec.dataset, "checkpoint": spec.checkpoint, "build_params": spec.build,
           "build_seconds": be.build_seconds_, "bytes_on_disk": info.get("bytes_on_disk"), "index_dir": str(idx_dir),
           "fingerprint": qset.meta["fingerprint"], "info": info, "memory": None,
           "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    del be
    gc.collect()
    write_json(rec_file, rec)
    return rec


def probe_memory(rec: dict, qset: QuerySet, k: int, search: dict, baseline: int, *, target: str | None = None) -> dict:
    """Peak RSS of a fresh process serving the queries from the index of ``rec``, minus ``baseline``.

    ``target`` is the backend's ``"module:Class"``, registered in the child process too.
    """
    r = serve_rss(rec["index_dir"], qset.dir / "queries.npz", k, search_params=search,
                  register={rec["backend"]: target} if target else None)
    return {"peak_rss_bytes": int(r["peak"] - baseline), "peak_rss_raw": int(r["peak"]), "baseline_rss": int(baseline),
            "runtime_rss_bytes": _minus(r.get("rss_after_import"), baseline),
            "loaded_rss_bytes": _minus(r.get("rss_after_load"), baseline), "load_seconds": r.get("load_seconds"),
            "serve_seconds": r.get("serve_seconds"), "search_params": search}


def search_params_of(be, search: dict) -> dict:
    """The full search parameters of one configuration: the backend's defaults updated with ``search``, one thread.

    The configurations of one build share the opened index, so every parameter is set each time: one that an
    earlier configuration set (a query-term cut, dynamic pruning) must not carry over to the next.
    """
    params = {**type(be).search_params, **search}
    if "threads" in params:
        params["threads"] = 1
    return params


def _minus(v, baseline) -> int | None:
    return None if v is None or v < 0 else int(v - baseline)


def measure_config(cfg: BenchConfig, out: Path, spec: RunSpec, be, rec: dict, qset: QuerySet, baseline) -> dict:
    """Time one configuration on the opened index ``be`` and store its raw results and record.

    Returns
    -------
    dict: the run record written to ``runs/<dataset>/<run id>.json``.
    """
    be.set_search_params(**search_params_of(be, spec.search))
    with thread_limits(1):
        ids, scores, lat = latency_pass(be, qset.qs, qset.xs, cfg.k, cfg.warmup)
    qps, how, times = {}, {}, {}
    for t in cfg.threads:
        q, h, ts = throughput(be, qset.Q, qset.X, cfg.k, t, cfg.throughput_repeats)
        qps[str(t)], how[str(t)], times[str(t)] = q, h, ts
    true = true_scores(qset.checkpoint, qset.Q, ids)
    memory = rec.get("memory")
    if cfg.memory_probe == "each":
        try:
            memory = probe_memory(rec, qset, cfg.k, spec.search, baseline, target=spec.target)
        except ElsaIndexError as exc:
            memory = {"error": str(exc)}
    ref = load_reference(qset.dir)
    storage = qset.meta["storage"]
    tb, model = type(be).touched_bytes({**rec["info"], "n_items": qset.meta["n_items"], "dims": qset.meta["dims"]},
                                       spec.search, cfg.k, ref["posting_bytes"] if storage == "sparse" else None,
                                       len(lat))
    tb = np.asarray(tb, np.float64)
    pct = latency_percentiles(lat)
    meta = {
        "status": "done", **spec.record(), "storage": storage, "k": cfg.k, "n_queries": int(len(lat)),
        "warmup": cfg.warmup, "index_warmup_seconds": cfg.index_warmup_seconds, "threads": cfg.threads, "throughput_how": how, "throughput_seconds": times,
        "qps": qps, "build_seconds": rec.get("build_seconds"), "bytes_on_disk": rec.get("bytes_on_disk"),
        "peak_rss_bytes": (memory or {}).get("peak_rss_bytes"), "memory": memory,
        "latency_p50_ms": pct["p50"], "latency_p95_ms": pct["p95"], "latency_p99_ms": pct["p99"],
        "touched_model": model, "touched_bytes_p50": float(np.nanmedian(tb)) if np.isfinite(tb).any() else None,
        "fingerprint": qset.meta["fingerprint"], "index_dir": rec["index_dir"], "backend_info": rec.get("info"),
        "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    write_run(out, spec, meta, ids, scores, true, lat, tb)
    return meta


def overhead_check(cfg: BenchConfig, out: Path, plan: list[RunSpec], *, force: bool, say) -> None:
    """A bare timing loop in a fresh process over one measured configuration, stored in ``overhead.json``."""
    want = cfg.overhead
    cand = [r for r in plan if r.backend.label == want.backend and want.dataset in (None, r.group, r.dataset)
            and is_done(out, r)]
    f = out / "overhead.json"
    if not cand:
        write_json(f, {"error": f"no measured configuration of backend {want.backend!r} to check"})
        return
    spec = cand[0]
    if f.is_file() and not force:
        try:
            old = json.loads(f.read_text())
            if old.get("run_id") == spec.run_id and "standalone_mean_ms" in old:
                return
        except (OSError, ValueError):
            pass
    js, pqp = run_paths(out, spec)
    run = json.loads(js.read_text())
    lat = pq.read_table(pqp, columns=["latency_ns"]).column("latency_ns").to_numpy()
    n = int(min(want.queries, len(lat)))
    say(f"harness overhead check on {spec.dataset}/{spec.checkpoint} {spec.backend.label}")
    # The stored numbers were measured earlier, under whatever else the machine was doing then; the
    # harness's own loop is also re-run right now, on either side of the bare loop, so that the
    # comparison of methods is made under the same conditions.
    again = harness_loop(cfg, run, out / "queries" / spec.dataset / spec.checkpoint / "queries.npz", spec.search, n)
    try:
        sa = standalone_latency(run["index_dir"], out / "queries" / spec.dataset / spec.checkpoint / "queries.npz",
                                cfg.k, search_params=spec.search, n=n, warmup=cfg.warmup,
                                register={spec.backend.name: spec.target} if spec.target else None)
    except ElsaIndexError as exc:
        write_json(f, {"run_id": spec.run_id, "error": str(exc)})
        return
    again = np.concatenate([again, harness_loop(cfg, run, out / "queries" / spec.dataset / spec.checkpoint
                                                 / "queries.npz", spec.search, n)])
    h_mean = float(lat[:n].mean() / 1e6)
    h_p50 = float(np.median(lat[:n]) / 1e6)
    a_mean = float(again.mean() / 1e6)
    a_p50 = float(np.median(again) / 1e6)
    write_json(f, {
        "run_id": spec.run_id, "dataset": spec.dataset, "checkpoint": spec.checkpoint, "label": spec.backend.label,
        "build": spec.build, "search": spec.search, "n": n, "harness_mean_ms": h_mean, "harness_p50_ms": h_p50,
        "harness_now_mean_ms": a_mean, "harness_now_p50_ms": a_p50,
        "standalone_mean_ms": sa["mean_ms"], "standalone_p50_ms": sa["p50_ms"],
        "ratio_mean": a_mean / sa["mean_ms"] if sa["mean_ms"] else None,
        "ratio_p50": a_p50 / sa["p50_ms"] if sa["p50_ms"] else None,
        "stored_ratio_p50": h_p50 / sa["p50_ms"] if sa["p50_ms"] else None,
    })


def harness_loop(cfg: BenchConfig, run: dict, queries_file: Path, search: dict, n: int) -> np.ndarray:
    """The harness's latency pass over the first ``n`` queries of a stored configuration (ns per query)."""
    be = Backend.load(run["index_dir"])
    be.set_search_params(**search_params_of(be, search))
    Q, X = load_queries(queries_file)
    qs, xs = split_rows(Q[:n], None if X is None else X[:n])
    with thread_limits(1):
        _, _, lat = latency_pass(be, qs, xs, cfg.k, cfg.warmup)
    return lat
