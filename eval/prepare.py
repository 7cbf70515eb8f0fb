"""Everything the measurements need, prepared once and cached on disk: data, checkpoints, query sets.

Per dataset entry of a config, :class:`Workspace` loads and splits the
interactions and trains (or loads, or reuses from ``OUT/checkpoints``) each
checkpoint; for a ``scale`` dataset it fits statistics from a trained
Compressed ELSA checkpoint and draws synthetic catalogues of each size with
dense counterparts (:mod:`elsa_index.eval.scale`). Per checkpoint it fixes
the queries once (held-out users' fold-in histories encoded as ``x·A``, or
the synthetic queries) and their exact top-K with the exact ``sparse``
backend (:class:`QuerySet`, stored under ``OUT/queries``).
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

import elsa_index.indexers as indexers
from elsa_index.checkpoint import Checkpoint
from elsa_index.errors import BenchError, ElsaIndexError
from elsa_index.workflow import align_to, load_split, make_model, train_checkpoint

from .config import BenchConfig, DatasetSpec
from .memprobe import save_queries, split_rows
from .plan import RunSpec, content_id, n_queries, queryset_key
from .scale import (
    CatalogueStats, fit_catalogue_stats, make_dense_counterpart, make_queries, make_sparse_catalogue, posting_bytes,
)
from .store import load_reference, save_reference, write_json

logger = logging.getLogger(__name__)

__all__ = ["Workspace", "QuerySet", "exact_reference", "true_scores"]

# Exact reference scoring: rows of a dense score block (bounds memory to ~128 MB).
_REF_BLOCK_ELEMENTS = 1 << 25


@dataclass
class QuerySet:
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


class Workspace:
    """Lazily prepared data, checkpoints and query sets of one run (cached in memory and on disk)."""

    def __init__(self, cfg: BenchConfig, out: Path, *, say):
        self.cfg, self.out, self.say = cfg, out, say
        self._splits: dict[str, Any] = {}
        self._ckpts: dict[tuple[str, str], Any] = {}
        self._stats: dict[str, Any] = {}
        self._synthetic: dict[tuple[str, int], dict] = {}
        self._qsets: dict[tuple[str, str], QuerySet] = {}

    # -- interaction data

    def split(self, d: DatasetSpec):
        if d.name not in self._splits:
            self.say(f"{d.name}: loading {d.data.source}")
            self._splits[d.name] = load_split(d.data)
        return self._splits[d.name]

    def checkpoint(self, d: DatasetSpec, name: str):
        key = (d.name, name)
        if key in self._ckpts:
            return self._ckpts[key]
        spec = d.checkpoint(name)
        if spec.path is not None:
            ck = Checkpoint.load(spec.path)
        else:
            path = self.out / "checkpoints" / d.name / name
            recipe_file = path.with_name(name + ".recipe.json")
            recipe = {"data": d.data_key(), "train": spec.train, "validation_users": spec.validation_users}
            ck = None
            if path.is_dir() and recipe_file.is_file():
                try:
                    if json.loads(recipe_file.read_text()) == json.loads(json.dumps(recipe)):
                        ck = Checkpoint.load(path)
                except (OSError, ValueError, ElsaIndexError) as exc:
                    logger.warning("retraining %s/%s: cached checkpoint unusable (%s)", d.name, name, exc)
            if ck is None:
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
        sc = d
        f = self.out / "synthetic" / d.name / "stats.json"
        key = content_id({"fit_dataset": self.cfg.dataset(sc.fit.dataset).key() if sc.fit.dataset else None,
                           "fit_checkpoint": (self.cfg.dataset(sc.fit.dataset).checkpoint(sc.fit.checkpoint).key()
                                              if sc.fit.dataset else None), "fit_path": sc.fit.path})
        if f.is_file():
            try:
                raw = json.loads(f.read_text())
                if raw.get("key") == key:
                    self._stats[d.name] = CatalogueStats.from_dict(raw["stats"])
                    return self._stats[d.name]
            except (OSError, ValueError, KeyError):
                pass
        if sc.fit.path is not None:
            ck = Checkpoint.load(sc.fit.path)
            if not ck.sparse:
                raise BenchError(f"dataset {d.name!r}: fit.path {sc.fit.path} is a dense checkpoint; expected Compressed ELSA")
            stats = fit_catalogue_stats(ck.embeddings, None, source={"path": sc.fit.path, "fingerprint": ck.fingerprint})
            rng = np.random.default_rng(self.cfg.seed)
            stats.history_lengths = np.maximum(1, np.rint(rng.lognormal(np.log(sc.history_mean) - 0.28, 0.75, 2000))).astype(np.int64)
        else:
            src = self.cfg.dataset(sc.fit.dataset)
            ck = self.checkpoint(src, sc.fit.checkpoint)
            split = self.split(src)
            fold = align_to(ck, split.fold_in, split.item_ids)
            stats = fit_catalogue_stats(ck.embeddings, fold, source={
                "dataset": src.name, "checkpoint": sc.fit.checkpoint, "fingerprint": ck.fingerprint})
        f.parent.mkdir(parents=True, exist_ok=True)
        write_json(f, {"key": key, "summary": stats.summary(), "stats": stats.to_dict()})
        self._stats[d.name] = stats
        return stats

    def synthetic(self, d: DatasetSpec, size: int) -> dict:
        key = (d.name, size)
        if key in self._synthetic:
            return self._synthetic[key]
        # Keep one size in memory at a time (1M items with a dense counterpart is ~1 GB).
        self._synthetic.clear()
        self._ckpts = {k: v for k, v in self._ckpts.items() if not k[0].startswith(d.name + "-")}
        self._qsets = {k: v for k, v in self._qsets.items() if not k[0].startswith(d.name + "-")}
        gc.collect()
        stats = self.stats(d)
        sc = d
        self.say(f"{d.name}: drawing a synthetic catalogue of {size:,} items")
        C = make_sparse_catalogue(stats, size, seed=self.cfg.seed, dims=sc.dims)
        n_q = n_queries(self.cfg, d)
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

    def queryset(self, spec: RunSpec) -> QuerySet:
        key = (spec.dataset, spec.checkpoint)
        if key in self._qsets:
            return self._qsets[key]
        d = self.cfg.dataset(spec.group)
        qdir = self.out / "queries" / spec.dataset / spec.checkpoint
        qkey = content_id(queryset_key(self.cfg, d, spec.checkpoint, spec.size))
        targets = None
        if d.kind == "scale":
            syn = self.synthetic(d, spec.size)
            if spec.checkpoint not in syn:
                raise BenchError(f"{spec.dataset}: no {spec.checkpoint!r} catalogue (dense_dims = 0?)")
            ck, Q = syn[spec.checkpoint]
            X = syn["X"]
            rows = np.arange(Q.shape[0])
        else:
            ck = self.checkpoint(d, spec.checkpoint)
            split = self.split(d)
            fold = align_to(ck, split.fold_in, split.item_ids)
            tgt = align_to(ck, split.targets, split.item_ids)
            eligible = np.flatnonzero((np.diff(fold.indptr) > 0) & (np.diff(tgt.indptr) > 0))
            if len(eligible) == 0:
                raise BenchError(f"{d.name}: no held-out user has both a fold-in history and targets")
            n_q = min(n_queries(self.cfg, d), len(eligible))
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
            ref = load_reference(qdir)
            exact_ids, exact_scores, meta = ref["exact_ids"], ref["exact_scores"], m
        else:
            self.say(f"{spec.dataset}: exact top-{self.cfg.k} of {Q.shape[0]} queries ({spec.checkpoint})")
            exact_ids, exact_scores = exact_reference(ck, Q, X, self.cfg.k)
            qdir.mkdir(parents=True, exist_ok=True)
            save_queries(qdir / "queries.npz", Q, X)
            posting = posting_bytes(ck.embeddings, Q) if ck.sparse and sp.issparse(Q) else None
            save_reference(qdir, exact_ids, exact_scores, rows, targets, posting)
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
        qs, xs = split_rows(Q, X)
        qset = QuerySet(ck, Q, X, qdir, meta, exact_ids, exact_scores, qs, xs)
        self._qsets[key] = qset
        return qset


def exact_reference(ck, Q, X, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-``k`` of the queries ``Q`` (excluding ``X``) by the exact ``sparse`` backend: (ids, float64 scores).

    The backend comes through the registry, so that importing this module does not import its runtime (numba).
    """
    ExactSparse = indexers.get_backend("sparse")
    batch = int(max(1, min(256, _REF_BLOCK_ELEMENTS // max(ck.n_items, 1))))
    ref = ExactSparse(batch_size=batch).build(ck)
    res = ref.search(Q, k, exclude=X)
    return res.ids, res.scores.astype(np.float64)


def true_scores(ck, Q, ids: np.ndarray, *, block: int = 200_000) -> np.ndarray:
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
