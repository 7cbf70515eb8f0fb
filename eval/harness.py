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
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import gc
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from elsa_index._io import write_json
from elsa_index.errors import ElsaIndexError, BenchError

from .config import KNOWN_BACKENDS, BackendSpec, BenchConfig, ConfigError, DatasetSpec, load_config
from .machine import machine_info, measure_bandwidth, thread_limits
from .registry import RunData

logger = logging.getLogger(__name__)

__all__ = ["run_bench", "plan_runs", "RunSpec", "load_run_data", "BenchError", "size_label"]

_INSTALL_HINTS = {
    "lucene": 'pip install "elsa-index[lucene]" (pyserini + a Java 21 runtime)',
    "faiss-flat": 'pip install "elsa-index[faiss]"',
    "faiss-hnsw": 'pip install "elsa-index[faiss]"',
    "faiss-ivf": 'pip install "elsa-index[faiss]"',
}
# Exact reference scoring: rows of a dense score block (bounds memory to ~128 MB).
_REF_BLOCK_ELEMENTS = 1 << 25


# ---------------------------------------------------------------------- plan


@dataclass
class RunSpec:
    """One configuration to measure.

    Attributes
    ----------
    dataset : the measured dataset (for scale datasets, one per size, e.g. ``scale-100k``).
    group : the config's dataset entry it comes from.
    checkpoint : checkpoint name within the dataset.
    backend : the backend entry (name, label, grids).
    build, search : parameter sets.
    run_id, build_id : content hashes (resume keys).
    size : catalogue size for scale datasets, else None.
    """

    dataset: str
    group: str
    checkpoint: str
    backend: BackendSpec
    build: dict
    search: dict
    run_id: str = ""
    build_id: str = ""
    size: int | None = None

    def record(self) -> dict:
        return {"run_id": self.run_id, "build_id": self.build_id, "dataset": self.dataset, "group": self.group,
                "checkpoint": self.checkpoint, "backend": self.backend.name, "label": self.backend.label,
                "build": self.build, "search": self.search, "size": self.size}


def size_label(n: int) -> str:
    """``10000`` -> ``"10k"``, ``1000000`` -> ``"1M"``."""
    for div, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{suffix}"
    return str(n)


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _subdatasets(d: DatasetSpec) -> list[tuple[str, int | None]]:
    if d.kind == "scale":
        return [(f"{d.name}-{size_label(n)}", n) for n in d.scale.sizes]
    return [(d.name, None)]


def _n_queries(cfg: BenchConfig, d: DatasetSpec) -> int:
    return d.queries if d.queries is not None else cfg.queries


def _queryset_key(cfg: BenchConfig, d: DatasetSpec, ckpt: str, size: int | None) -> dict:
    return {"dataset": d.key(), "size": size, "checkpoint": d.checkpoint(ckpt).key(), "queries": _n_queries(cfg, d),
            "k": _k_ref(cfg), "seed": cfg.seed}


def _k_ref(cfg: BenchConfig) -> int:
    return cfg.k


def resolve_backends(cfg: BenchConfig) -> tuple[dict[str, type | None], dict[str, str]]:
    """Backend classes by label, and the reasons for those that are unavailable.

    Raises
    ------
    ConfigError
        A name that is neither registered nor one of the project's backends,
        or parameters the backend does not know.
    """
    from elsa_index.indexers import get_backend

    classes: dict[str, type | None] = {}
    reasons: dict[str, str] = {}
    for i, b in enumerate(cfg.backends):
        try:
            cls = get_backend(b.name)
        except ElsaIndexError as exc:
            if b.name not in KNOWN_BACKENDS:
                raise ConfigError(f"backends[{i}].name: {exc}") from None
            classes[b.label] = None
            reasons[b.label] = f"backend {b.name!r} is not available in this environment; install it with {_INSTALL_HINTS.get(b.name, 'its extra')}"
            continue
        except ImportError as exc:
            classes[b.label] = None
            reasons[b.label] = f"backend {b.name!r} cannot be imported ({exc}); install it with {_INSTALL_HINTS.get(b.name, 'its extra')}"
            continue
        for bp in b.build_grid:
            for spar in b.search_grid:
                try:
                    cls(**bp, **spar)
                except ImportError as exc:
                    reasons[b.label] = f"backend {b.name!r} needs a missing dependency ({exc}); install {_INSTALL_HINTS.get(b.name, 'its extra')}"
                except ElsaIndexError as exc:
                    raise ConfigError(f"backends[{i}] ({b.label}): {exc}") from None
        classes[b.label] = None if b.label in reasons else cls
    return classes, reasons


def plan_runs(cfg: BenchConfig, classes: dict[str, type | None] | None = None) -> list[RunSpec]:
    """Every configuration of ``cfg``, in run order (dataset, checkpoint, backend, build, search)."""
    if classes is None:
        classes, _ = resolve_backends(cfg)
    runs: list[RunSpec] = []
    common = {"k": cfg.k, "warmup": cfg.warmup, "threads": cfg.threads, "repeats": cfg.throughput_repeats,
              "memory": cfg.memory_probe}
    for d in cfg.datasets:
        if not d.measure:
            continue
        for sub, size in _subdatasets(d):
            for c in d.checkpoints:
                qkey = _queryset_key(cfg, d, c.name, size)
                for b in cfg.backends:
                    cls = classes.get(b.label)
                    accepts = getattr(cls, "accepts", None)
                    if not b.applies_to(sub, c.name, c.storage, accepts):
                        continue
                    if cls is not None and accepts not in (None, "any") and accepts != c.storage:
                        continue  # a pattern matched a checkpoint the backend cannot index
                    for bp in b.build_grid:
                        build_id = _hash({"q": qkey, "backend": b.name, "build": bp})
                        for spar in b.search_grid:
                            rid = _hash({"q": qkey, "backend": b.name, "build": bp, "search": spar, **common})
                            runs.append(RunSpec(sub, d.name, c.name, b, bp, spar, rid, build_id, size))
    return runs


# ------------------------------------------------------------------ storage


def _run_paths(out: Path, spec: RunSpec) -> tuple[Path, Path]:
    base = out / "runs" / spec.dataset / spec.run_id
    return base.with_suffix(".json"), base.with_suffix(".parquet")


def _is_done(out: Path, spec: RunSpec) -> bool:
    js, pq = _run_paths(out, spec)
    if not (js.is_file() and pq.is_file()):
        return False
    try:
        return json.loads(js.read_text()).get("status") == "done"
    except (OSError, ValueError):
        return False


def _write_run(out: Path, spec: RunSpec, meta: dict, ids, scores, true_scores, latency_ns) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    js, pqp = _run_paths(out, spec)
    js.parent.mkdir(parents=True, exist_ok=True)
    n, k = ids.shape

    def fixed(a, typ):
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).ravel(), type=typ), k)

    table = pa.table({
        "query": pa.array(np.arange(n, dtype=np.int32)),
        "latency_ns": pa.array(np.asarray(latency_ns, np.int64)),
        "ids": fixed(ids.astype(np.int64), pa.int64()),
        "scores": fixed(scores.astype(np.float32), pa.float32()),
        "true_scores": fixed(true_scores.astype(np.float64), pa.float64()),
    })
    tmp = pqp.with_name(pqp.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, pqp)
    tmpj = js.with_name(js.name + ".tmp")
    write_json(tmpj, meta)
    os.replace(tmpj, js)


def _read_matrix(table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    k = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, k)


def load_run_data(out: str | os.PathLike, run: dict, *, bandwidth: float | None = None) -> RunData:
    """The raw results of a stored run (its JSON record), ready for the metric registry."""
    import pyarrow.parquet as pq

    out = Path(out)
    table = pq.read_table(out / "runs" / run["dataset"] / f"{run['run_id']}.parquet")
    ref = _load_reference(out / "queries" / run["dataset"] / run["checkpoint"])
    touched = run.get("touched_bytes_p50")
    touched_arr = None
    if str(run.get("touched_model", "")).startswith("postings") and ref.get("posting_bytes") is not None:
        touched_arr = ref["posting_bytes"]
    elif touched is not None:
        touched_arr = np.full(table.num_rows, float(touched))
    return RunData(
        ids=_read_matrix(table, "ids"), true_scores=_read_matrix(table, "true_scores"),
        exact_scores=ref["exact_scores"], latency_ns=table.column("latency_ns").to_numpy(),
        targets=ref.get("targets"), touched_bytes=touched_arr, bandwidth=bandwidth,
        scalars={**{k: run.get(k) for k in ("build_seconds", "bytes_on_disk", "peak_rss_bytes", "qps")},
                 "index_rss_bytes": _index_rss(run.get("memory"))},
    )


def _save_reference(qdir: Path, ids, scores, rows, targets, posting) -> None:
    arrays = {"exact_ids": ids, "exact_scores": scores, "rows": np.asarray(rows, np.int64)}
    if targets is not None:
        t = sp.csr_matrix(targets)
        arrays.update(t_indices=t.indices.astype(np.int64), t_indptr=t.indptr.astype(np.int64),
                      t_shape=np.asarray(t.shape, np.int64))
    if posting is not None:
        arrays["posting_bytes"] = np.asarray(posting, np.float64)
    np.savez(qdir / "reference.npz", **arrays)


def _load_reference(qdir: Path) -> dict:
    with np.load(qdir / "reference.npz", allow_pickle=False) as z:
        out = {"exact_ids": z["exact_ids"], "exact_scores": z["exact_scores"], "rows": z["rows"],
               "posting_bytes": z["posting_bytes"] if "posting_bytes" in z.files else None, "targets": None}
        if "t_indptr" in z.files:
            idx = z["t_indices"]
            out["targets"] = sp.csr_matrix((np.ones(len(idx), np.float32), idx, z["t_indptr"]), shape=tuple(z["t_shape"]))
    return out


# ----------------------------------------------------------------- workspace


@dataclass
class _QuerySet:
    """Queries of one checkpoint of one (sub-)dataset, with its exact reference."""

    checkpoint: Any
    Q: Any
    X: sp.csr_matrix
    dir: Path
    meta: dict
    exact_ids: np.ndarray
    exact_scores: np.ndarray
    qs: list = field(default_factory=list)
    xs: list = field(default_factory=list)


class _Workspace:
    """Lazily prepared data, checkpoints and query sets of one run (cached in memory and on disk)."""

    def __init__(self, cfg: BenchConfig, out: Path, *, say):
        self.cfg, self.out, self.say = cfg, out, say
        self._splits: dict[str, Any] = {}
        self._ckpts: dict[tuple[str, str], Any] = {}
        self._stats: dict[str, Any] = {}
        self._synthetic: dict[tuple[str, int], dict] = {}
        self._qsets: dict[tuple[str, str], _QuerySet] = {}

    # -- interaction data

    def split(self, d: DatasetSpec):
        if d.name not in self._splits:
            from elsa_index.workflow import load_split

            self.say(f"{d.name}: loading {d.data.source}")
            self._splits[d.name] = load_split(d.data)
        return self._splits[d.name]

    def checkpoint(self, d: DatasetSpec, name: str):
        key = (d.name, name)
        if key in self._ckpts:
            return self._ckpts[key]
        from elsa_index.checkpoint import Checkpoint

        spec = d.checkpoint(name)
        if spec.path is not None:
            ck = Checkpoint.load(spec.path)
        else:
            path = self.out / "checkpoints" / d.name / name
            recipe_file = path.with_name(name + ".recipe.json")
            recipe = {"data": d.data.to_dict(), "train": spec.train, "validation_users": spec.validation_users}
            ck = None
            if path.is_dir() and recipe_file.is_file():
                try:
                    if json.loads(recipe_file.read_text()) == json.loads(json.dumps(recipe)):
                        ck = Checkpoint.load(path)
                except (OSError, ValueError, ElsaIndexError) as exc:
                    logger.warning("retraining %s/%s: cached checkpoint unusable (%s)", d.name, name, exc)
            if ck is None:
                from elsa_index.workflow import make_model, train_checkpoint

                params = {k: v for k, v in spec.train.items() if k != "kind"}
                params.setdefault("progress", False)
                split = self.split(d)
                self.say(f"{d.name}: training checkpoint {name} ({spec.train})")
                model = make_model(spec.train["kind"], **params)
                ck = train_checkpoint(model, split, data={"spec": d.data.to_dict()},
                                      validation_users=spec.validation_users)
                ck.save(path, overwrite=True)
                write_json(recipe_file, recipe)
        self._ckpts[key] = ck
        return ck

    # -- scale data

    def stats(self, d: DatasetSpec):
        if d.name in self._stats:
            return self._stats[d.name]
        from .scale import CatalogueStats, fit_catalogue_stats

        sc = d.scale
        f = self.out / "synthetic" / d.name / "stats.json"
        key = _hash({"fit_dataset": self.cfg.dataset(sc.fit_dataset).key() if sc.fit_dataset else None,
                     "fit_checkpoint": (self.cfg.dataset(sc.fit_dataset).checkpoint(sc.fit_checkpoint).key()
                                        if sc.fit_dataset else None), "fit_path": sc.fit_path})
        if f.is_file():
            try:
                raw = json.loads(f.read_text())
                if raw.get("key") == key:
                    self._stats[d.name] = CatalogueStats.from_dict(raw["stats"])
                    return self._stats[d.name]
            except (OSError, ValueError, KeyError):
                pass
        if sc.fit_path is not None:
            from elsa_index.checkpoint import Checkpoint

            ck = Checkpoint.load(sc.fit_path)
            if not ck.sparse:
                raise BenchError(f"dataset {d.name!r}: fit.path {sc.fit_path} is a dense checkpoint; expected Compressed ELSA")
            stats = fit_catalogue_stats(ck.embeddings, None, source={"path": sc.fit_path, "fingerprint": ck.fingerprint})
            rng = np.random.default_rng(self.cfg.seed)
            stats.history_lengths = np.maximum(1, np.rint(rng.lognormal(np.log(sc.history_mean) - 0.28, 0.75, 2000))).astype(np.int64)
        else:
            from elsa_index.workflow import align_to

            src = self.cfg.dataset(sc.fit_dataset)
            ck = self.checkpoint(src, sc.fit_checkpoint)
            split = self.split(src)
            fold = align_to(ck, split.fold_in, split.item_ids)
            stats = fit_catalogue_stats(ck.embeddings, fold, source={
                "dataset": src.name, "checkpoint": sc.fit_checkpoint, "fingerprint": ck.fingerprint})
        f.parent.mkdir(parents=True, exist_ok=True)
        write_json(f, {"key": key, "summary": stats.summary(), "stats": stats.to_dict()})
        self._stats[d.name] = stats
        return stats

    def synthetic(self, d: DatasetSpec, size: int) -> dict:
        key = (d.name, size)
        if key in self._synthetic:
            return self._synthetic[key]
        from elsa_index.checkpoint import Checkpoint

        from .scale import make_dense_counterpart, make_queries, make_sparse_catalogue

        # Keep one size in memory at a time (1M items with a dense counterpart is ~1 GB).
        self._synthetic.clear()
        self._ckpts = {k: v for k, v in self._ckpts.items() if not k[0].startswith(d.name + "-")}
        self._qsets = {k: v for k, v in self._qsets.items() if not k[0].startswith(d.name + "-")}
        gc.collect()
        stats = self.stats(d)
        sc = d.scale
        self.say(f"{d.name}: drawing a synthetic catalogue of {size:,} items")
        C = make_sparse_catalogue(stats, size, seed=self.cfg.seed, dims=sc.dims)
        n_q = _n_queries(self.cfg, d)
        Q, H = make_queries(stats, C, n_q, query_terms=sc.query_terms, seed=self.cfg.seed)
        ids = np.char.add("i", np.arange(size).astype(str))
        zeros = np.zeros(size, np.int64)
        info = {"synthetic": {"size": size, "fitted": stats.source}}
        res = {"sparse": (Checkpoint(C, ids, zeros, kind="imported", data=info), Q), "X": H}
        width = sc.dense_dims
        if width is None:
            width = int(round(2 * float(np.dot(stats.nnz_values, stats.nnz_probs))))
        if width:
            D, Qd = make_dense_counterpart(C, Q, width, seed=self.cfg.seed)
            res["dense"] = (Checkpoint(D, ids, zeros, kind="imported", data=info), Qd)
        self._synthetic[key] = res
        return res

    # -- query sets

    def queryset(self, spec: RunSpec) -> _QuerySet:
        key = (spec.dataset, spec.checkpoint)
        if key in self._qsets:
            return self._qsets[key]
        d = self.cfg.dataset(spec.group)
        qdir = self.out / "queries" / spec.dataset / spec.checkpoint
        qkey = _hash(_queryset_key(self.cfg, d, spec.checkpoint, spec.size))
        targets = None
        if d.kind == "scale":
            syn = self.synthetic(d, spec.size)
            if spec.checkpoint not in syn:
                raise BenchError(f"{spec.dataset}: no {spec.checkpoint!r} catalogue (dense_dims = 0?)")
            ck, Q = syn[spec.checkpoint]
            X = syn["X"]
            rows = np.arange(Q.shape[0])
        else:
            from elsa_index.workflow import align_to

            ck = self.checkpoint(d, spec.checkpoint)
            split = self.split(d)
            fold = align_to(ck, split.fold_in, split.item_ids)
            tgt = align_to(ck, split.targets, split.item_ids)
            eligible = np.flatnonzero((np.diff(fold.indptr) > 0) & (np.diff(tgt.indptr) > 0))
            if len(eligible) == 0:
                raise BenchError(f"{d.name}: no held-out user has both a fold-in history and targets")
            n_q = min(_n_queries(self.cfg, d), len(eligible))
            rng = np.random.default_rng(self.cfg.seed)
            rows = np.sort(rng.choice(eligible, n_q, replace=False))
            X = sp.csr_matrix(fold[rows], dtype=np.float32)
            targets = tgt[rows]
            U = X @ ck.embeddings
            Q = sp.csr_matrix(U, dtype=np.float32) if sp.issparse(U) else np.asarray(U, np.float32)
            if sp.issparse(Q):
                Q.eliminate_zeros()
        X = sp.csr_matrix(X)
        meta_file = qdir / "meta.json"
        cached = False
        if meta_file.is_file() and (qdir / "reference.npz").is_file():
            try:
                m = json.loads(meta_file.read_text())
                cached = m.get("key") == qkey and m.get("fingerprint") == ck.fingerprint
            except (OSError, ValueError):
                cached = False
        if cached:
            ref = _load_reference(qdir)
            exact_ids, exact_scores, meta = ref["exact_ids"], ref["exact_scores"], m
        else:
            from .memprobe import save_queries
            from .scale import posting_bytes

            self.say(f"{spec.dataset}: exact top-{_k_ref(self.cfg)} of {Q.shape[0]} queries ({spec.checkpoint})")
            exact_ids, exact_scores = _exact_reference(ck, Q, X, _k_ref(self.cfg))
            qdir.mkdir(parents=True, exist_ok=True)
            save_queries(qdir / "queries.npz", Q, X)
            posting = posting_bytes(ck.embeddings, Q) if ck.sparse and sp.issparse(Q) else None
            _save_reference(qdir, exact_ids, exact_scores, rows, targets, posting)
            terms = np.diff(Q.indptr) if sp.issparse(Q) else np.full(Q.shape[0], Q.shape[1])
            nnz = ck.nnz_per_row()
            meta = {
                "key": qkey, "dataset": spec.dataset, "group": spec.group, "checkpoint": spec.checkpoint,
                "size": spec.size, "storage": "sparse" if ck.sparse else "dense", "kind": ck.kind,
                "n_items": ck.n_items, "dims": ck.dims, "nnz_mean": float(nnz.mean()), "embedding_bytes": ck.nbytes(),
                "fingerprint": ck.fingerprint, "n_queries": int(Q.shape[0]),
                "query_terms_median": float(np.median(terms)) if len(terms) else 0.0,
                "history_median": float(np.median(np.diff(X.indptr))) if X.shape[0] else 0.0,
                "checkpoint_metrics": dict(ck.metrics), "train": (ck.config or {}).get("model"),
                "train_seconds": (ck.config or {}).get("train_seconds"),
            }
            write_json(meta_file, meta)
        from .memprobe import split_rows

        qs, xs = split_rows(Q, X)
        qset = _QuerySet(ck, Q, X, qdir, meta, exact_ids, exact_scores, qs, xs)
        self._qsets[key] = qset
        return qset


def _exact_reference(ck, Q, X, k: int) -> tuple[np.ndarray, np.ndarray]:
    from elsa_index.indexers.sparse import ExactSparse

    batch = int(max(1, min(256, _REF_BLOCK_ELEMENTS // max(ck.n_items, 1))))
    ref = ExactSparse(batch_size=batch).build(ck)
    res = ref.search(Q, k, exclude=X)
    return res.ids, res.scores.astype(np.float64)


def _true_scores(ck, Q, ids: np.ndarray, *, block: int = 200_000) -> np.ndarray:
    """Exact inner products of each query with its returned items (float64; -inf for padding)."""
    n, k = ids.shape
    E = ck.embeddings
    out = np.full((n, k), -np.inf)
    flat_rows = np.repeat(np.arange(n), k)
    flat_ids = ids.ravel()
    valid = np.flatnonzero(flat_ids >= 0)
    Qs = sp.csr_matrix(Q, dtype=np.float64) if sp.issparse(Q) else np.asarray(Q, np.float64)
    for start in range(0, len(valid), block):
        sel = valid[start : start + block]
        items = flat_ids[sel]
        users = flat_rows[sel]
        if sp.issparse(E):
            A = sp.csr_matrix(E[items], dtype=np.float64)
            B = Qs[users] if sp.issparse(Qs) else sp.csr_matrix(Qs[users])
            vals = np.asarray(A.multiply(B).sum(axis=1)).ravel()
        else:
            A = np.asarray(E[items], np.float64)
            B = Qs[users].toarray() if sp.issparse(Qs) else Qs[users]
            vals = np.einsum("ij,ij->i", A, B)
        out.flat[sel] = vals
    return out


# ------------------------------------------------------------------ measuring


def _latency_pass(be, qs, xs, k: int, warmup: int):
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


def _throughput(be, Q, X, k: int, threads: int, repeats: int) -> tuple[float, str, list[float]]:
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


def _index_paths(out: Path, spec: RunSpec) -> tuple[Path, Path]:
    base = out / "indexes" / spec.dataset / spec.checkpoint / f"{spec.backend.label}-{spec.build_id[:10]}"
    return base, base.with_name(base.name + ".json")


_WARMED: set = set()


def _warm_up_backend(cls, storage: str, tmp: Path) -> None:
    """Build and search a tiny index once per backend class, so that the first timed build does not
    pay for importing the backend's libraries (faiss, numba compilation, starting the JVM)."""
    key = (cls.name, storage)
    if key in _WARMED:
        return
    _WARMED.add(key)
    from elsa_index.checkpoint import Checkpoint

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


def _build(out: Path, spec: RunSpec, cls, qset: _QuerySet, *, force: bool) -> dict:
    """Build (or reuse) the index of ``spec``'s build parameters; return its build record."""
    idx_dir, rec_file = _index_paths(out, spec)
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


def _memory(out: Path, rec: dict, qset: _QuerySet, k: int, search: dict, baseline: int) -> dict:
    from .memprobe import serve_rss

    r = serve_rss(rec["index_dir"], qset.dir / "queries.npz", k, search_params=search)
    return {"peak_rss_bytes": int(r["peak"] - baseline), "peak_rss_raw": int(r["peak"]), "baseline_rss": int(baseline),
            "runtime_rss_bytes": _minus(r.get("rss_after_import"), baseline),
            "loaded_rss_bytes": _minus(r.get("rss_after_load"), baseline), "load_seconds": r.get("load_seconds"),
            "serve_seconds": r.get("serve_seconds"), "search_params": search}


def _index_rss(mem: dict | None) -> int | None:
    """Resident bytes the opened index adds on top of its runtime (after open - after import)."""
    if not mem or mem.get("loaded_rss_bytes") is None or mem.get("runtime_rss_bytes") is None:
        return None
    return int(mem["loaded_rss_bytes"] - mem["runtime_rss_bytes"])


def _minus(v, baseline) -> int | None:
    return None if v is None or v < 0 else int(v - baseline)


# ---------------------------------------------------------------------- run


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
    if not prepare_only:  # machine.json describes the machine the numbers come from
        machine = machine_info()
        machine["bandwidth"] = measure_bandwidth()
        machine["measured"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        write_json(out / "machine.json", machine)
    skips: list[dict] = [{"label": lbl, "backend": next(b.name for b in cfg.backends if b.label == lbl),
                          "reason": why, "scope": "all datasets"} for lbl, why in reasons.items()]
    ws = _Workspace(cfg, out, say=say)
    counts = {"measured": 0, "reused": 0, "skipped": 0, "prepared": 0}
    baseline = None
    from tqdm.auto import tqdm

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
            todo = [r for r in runs if force or not _is_done(out, r)]
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
            bar.set_postfix_str(f"{dataset} {ckpt} {label} build {first.build or ''}"[:60], refresh=True)
            try:
                rec = _build(out, first, cls, qset, force=force)
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
                from .memprobe import baseline_rss

                baseline = baseline_rss()
            if cfg.memory_probe == "build" and rec.get("memory") is None:
                try:
                    rec["memory"] = _memory(out, rec, qset, cfg.k, first.search, baseline)
                except ElsaIndexError as exc:
                    logger.warning("memory probe failed for %s: %s", label, exc)
                    rec["memory"] = {"error": str(exc)}
                write_json(_index_paths(out, first)[1], rec)
            from elsa_index.indexers.base import Backend

            be = Backend.load(rec["index_dir"])
            for r in todo:
                bar.set_postfix_str(f"{dataset} {ckpt} {label} {r.search or ''}"[:60], refresh=True)
                try:
                    meta = _measure(cfg, out, r, be, rec, qset, baseline)
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
        write_json(out / "skipped.json", skips)
        if cfg.overhead is not None:
            _overhead_check(cfg, out, plan, force=force, say=say_bar)
    finally:
        bar.close()
    result = {**counts, "skips": skips, "report": None, "out": str(out)}
    if report:
        from .report import write_report

        result["report"] = str(write_report(out, cfg, plan))
    return result


def _measure(cfg: BenchConfig, out: Path, spec: RunSpec, be, rec: dict, qset: _QuerySet, baseline) -> dict:
    from .machine import touched_bytes
    from .registry import latency_percentiles

    params = dict(spec.search)
    if "threads" in be.search_params:
        params["threads"] = 1
    be.set_search_params(**params)
    with thread_limits(1):
        ids, scores, lat = _latency_pass(be, qset.qs, qset.xs, cfg.k, cfg.warmup)
    qps, how, times = {}, {}, {}
    for t in cfg.threads:
        q, h, ts = _throughput(be, qset.Q, qset.X, cfg.k, t, cfg.throughput_repeats)
        qps[str(t)], how[str(t)], times[str(t)] = q, h, ts
    true = _true_scores(qset.checkpoint, qset.Q, ids)
    memory = rec.get("memory")
    if cfg.memory_probe == "each":
        try:
            memory = _memory(out, rec, qset, cfg.k, spec.search, baseline)
        except ElsaIndexError as exc:
            memory = {"error": str(exc)}
    ref = _load_reference(qset.dir)
    storage = qset.meta["storage"]
    tb, model = touched_bytes(spec.backend.name, {**rec["info"], "n_items": qset.meta["n_items"],
                                                  "dims": qset.meta["dims"]}, spec.search, cfg.k,
                              ref["posting_bytes"] if storage == "sparse" else None, len(lat))
    pct = latency_percentiles(lat)
    meta = {
        "status": "done", **spec.record(), "storage": storage, "k": cfg.k, "n_queries": int(len(lat)),
        "warmup": cfg.warmup, "threads": cfg.threads, "throughput_how": how, "throughput_seconds": times,
        "qps": qps, "build_seconds": rec.get("build_seconds"), "bytes_on_disk": rec.get("bytes_on_disk"),
        "peak_rss_bytes": (memory or {}).get("peak_rss_bytes"), "memory": memory,
        "latency_p50_ms": pct["p50"], "latency_p95_ms": pct["p95"], "latency_p99_ms": pct["p99"],
        "touched_model": model, "touched_bytes_p50": float(np.nanmedian(tb)) if np.isfinite(tb).any() else None,
        "fingerprint": qset.meta["fingerprint"], "index_dir": rec["index_dir"], "backend_info": rec.get("info"),
        "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    _write_run(out, spec, meta, ids, scores, true, lat)
    return meta


def _overhead_check(cfg: BenchConfig, out: Path, plan: list[RunSpec], *, force: bool, say) -> None:
    """A bare timing loop in a fresh process over one measured configuration, stored in ``overhead.json``."""
    import pyarrow.parquet as pq

    from .memprobe import standalone_latency

    want = cfg.overhead
    cand = [r for r in plan if r.backend.label == want["backend"] and (want.get("dataset") in (None, r.group, r.dataset))
            and _is_done(out, r)]
    f = out / "overhead.json"
    if not cand:
        write_json(f, {"error": f"no measured configuration of backend {want['backend']!r} to check"})
        return
    spec = cand[0]
    if f.is_file() and not force:
        try:
            old = json.loads(f.read_text())
            if old.get("run_id") == spec.run_id and "standalone_mean_ms" in old:
                return
        except (OSError, ValueError):
            pass
    js, pqp = _run_paths(out, spec)
    run = json.loads(js.read_text())
    lat = pq.read_table(pqp, columns=["latency_ns"]).column("latency_ns").to_numpy()
    n = int(min(want.get("queries", 200), len(lat)))
    say(f"harness overhead check on {spec.dataset}/{spec.checkpoint} {spec.backend.label}")
    # The stored numbers were measured earlier, under whatever else the machine was doing then; the
    # harness's own loop is also re-run right now, on either side of the bare loop, so that the
    # comparison of methods is made under the same conditions.
    again = _harness_loop(cfg, run, out / "queries" / spec.dataset / spec.checkpoint / "queries.npz", spec.search, n)
    try:
        sa = standalone_latency(run["index_dir"], out / "queries" / spec.dataset / spec.checkpoint / "queries.npz",
                                cfg.k, search_params=spec.search, n=n, warmup=cfg.warmup)
    except ElsaIndexError as exc:
        write_json(f, {"run_id": spec.run_id, "error": str(exc)})
        return
    again = np.concatenate([again, _harness_loop(cfg, run, out / "queries" / spec.dataset / spec.checkpoint
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


def _harness_loop(cfg: BenchConfig, run: dict, queries_file: Path, search: dict, n: int) -> np.ndarray:
    """The harness's latency pass over the first ``n`` queries of a stored configuration (ns per query)."""
    from elsa_index.indexers.base import Backend

    from .memprobe import load_queries, split_rows

    be = Backend.load(run["index_dir"])
    params = dict(search)
    if "threads" in be.search_params:
        params["threads"] = 1
    if params:
        be.set_search_params(**params)
    Q, X = load_queries(queries_file)
    qs, xs = split_rows(Q[:n], None if X is None else X[:n])
    with thread_limits(1):
        _, _, lat = _latency_pass(be, qs, xs, cfg.k, cfg.warmup)
    return lat
