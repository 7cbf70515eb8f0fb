"""The approximate sparse backend against the exact one on a synthetic catalogue fitted from a checkpoint.

Draws ``--items`` items and ``--queries`` queries (with the histories they exclude) from the statistics of a
sparse checkpoint and its users' query set (:mod:`elsa_index.eval.scale`: values per item, dimension shares,
value and query-length distributions), so that catalogues of any size keep the checkpoint's row length and
its users' query length. Builds the exact ``sparse`` backend and ``sparse-approx`` (``exact_below=0``: the
approximate search itself) and times each ``--heap-factor`` (``None``: the per-query default) against the
exact kernel, query by query in one process (k = 100, histories excluded). Prints one JSON object: the exact
p50, and per heap factor the p50, its ratio to exact and retrieval recall@20 (tie-tolerant).

    python -m elsa_index.eval.studies.synthetic_catalogue eval/results/ml-1m/checkpoints/ml-1m/celsa-32 \\
        eval/results/ml-1m/queries/ml-1m/celsa-32/queries.npz --items 1000000 --heap-factor None 0.4 0.35
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import scipy.sparse as sp

from elsa_index.checkpoint import Checkpoint
from elsa_index.indexers import get_backend
from elsa_index.metrics import retrieval_recall
from elsa_index.scoring import score_rows

from ..memprobe import load_queries
from ..scale import fit_catalogue_stats, make_queries, make_sparse_catalogue


def run(ckpt_dir: str, queries: str, *, items: int, n_queries: int = 150, heap_factors=(None,), k: int = 100,
        at: int = 20, seed: int = 0) -> dict:
    ck = Checkpoint.load(ckpt_dir, mmap=True)
    if not ck.sparse:
        raise SystemExit(f"{ckpt_dir} is not a sparse checkpoint")
    stats = fit_catalogue_stats(ck.embeddings, load_queries(queries)[1])
    E = make_sparse_catalogue(stats, items, seed=seed)
    Q, X = make_queries(stats, E, n_queries, seed=seed + 1)
    Q = sp.csr_matrix(Q, dtype=np.float32)
    Q.sort_indices()
    X = sp.csr_matrix(X)
    cat = Checkpoint(E, np.array([f"i{i}" for i in range(items)]), np.ones(items), kind="compressed_elsa")
    exact = get_backend("sparse")().build(cat)
    approx = get_backend("sparse-approx")(exact_below=0).build(cat)
    k = min(k, items)
    rows = [(Q[r : r + 1], X[r : r + 1]) for r in range(Q.shape[0])]
    ref = exact.search(Q, k, exclude=X)
    configs = [None if h is None else float(h) for h in heap_factors]
    lat = {i: [] for i in range(len(configs) + 1)}  # 0: exact
    ids = {i: np.empty((len(rows), k), np.int64) for i in range(1, len(configs) + 1)}
    for r, (q, x) in enumerate(rows):  # every query through every configuration, in alternating order
        order = list(range(len(configs) + 1))
        if r % 2:
            order.reverse()
        for i in order:
            if i:
                approx.set_search_params(heap_factor=configs[i - 1], exact_below=0)
            be = approx if i else exact
            t0 = time.perf_counter()
            res = be.search(q, k, exclude=x)
            lat[i].append(time.perf_counter() - t0)
            if i:
                ids[i][r] = res.ids[0]
    p50_exact = float(np.median(lat[0]) * 1e3)
    out = []
    for i, h in enumerate(configs, start=1):
        true = score_rows(E, Q, ids[i])
        p50 = float(np.median(lat[i]) * 1e3)
        out.append({"heap_factor": h, "p50_ms": round(p50, 3), "p50_ratio_to_exact": round(p50 / p50_exact, 3),
                    f"retrieval_recall@{at}": round(float(retrieval_recall(true, ids[i], ref.scores, at).mean()), 4)})
    return {"checkpoint": ckpt_dir, "items": items, "values_per_item": round(E.nnz / items, 2), "dims": E.shape[1],
            "median_query_terms": float(np.median(np.diff(Q.indptr))), "queries": len(rows), "k": k,
            "exact_p50_ms": round(p50_exact, 3), "configs": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a sparse checkpoint directory (its statistics are fitted)")
    ap.add_argument("queries", help="a harness query set of that checkpoint (its histories give query lengths)")
    ap.add_argument("--items", type=int, required=True, help="items of the synthetic catalogue")
    ap.add_argument("--queries", dest="n_queries", type=int, default=150, help="queries drawn (default 150)")
    ap.add_argument("--heap-factor", nargs="+", default=["None"], help="heap factors to time; None: the default")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.items < 1 or args.n_queries < 1:
        raise SystemExit("--items and --queries must be positive")
    try:
        hfs = [None if h == "None" else float(h) for h in args.heap_factor]
    except ValueError:
        raise SystemExit(f"--heap-factor takes numbers in (0, 1] or None, got {args.heap_factor}") from None
    for h in hfs:
        if h is not None and not 0 < h <= 1:
            raise SystemExit(f"--heap-factor values must be in (0, 1] or None, got {h}")
    print(json.dumps(run(args.checkpoint, args.queries, items=args.items, n_queries=args.n_queries,
                         heap_factors=hfs, seed=args.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
