"""The approximate sparse backend against the exact one on a synthetic catalogue fitted from a checkpoint.

Draws ``--items`` items and ``--queries`` queries (with the histories they exclude) from the statistics of a
sparse checkpoint and its users' query set (:mod:`elsa_index.eval.scale`: values per item, dimension shares,
value and query-length distributions), so that catalogues of any size keep the checkpoint's row length and
its users' query length. Builds the exact ``sparse`` backend and ``sparse-approx`` (``exact_below=0``: the
approximate search itself) and times each ``--heap-factor`` (``None``: the per-query default) against the
exact kernel, query by query in one process, with :func:`.interleaved.compare` (k = 100, histories
excluded). Prints one JSON object: the catalogue, the exact p50, and per heap factor (``search``) the p50,
its ratios and retrieval recall@20 (tie-tolerant).

    python -m elsa_index.eval.studies.synthetic_catalogue eval/results/ml-1m/checkpoints/ml-1m/celsa-32 \\
        eval/results/ml-1m/queries/ml-1m/celsa-32/queries.npz --items 1000000 --heap-factor None 0.4 0.35
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import scipy.sparse as sp

from elsa_index.checkpoint import Checkpoint

from ..memprobe import load_queries
from ..scale import fit_catalogue_stats, make_queries, make_sparse_catalogue
from .interleaved import compare


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
    configs = [{"exact_below": 0, "heap_factor": None if h is None else float(h)} for h in heap_factors]
    out = compare(cat, Q, X, "sparse-approx", configs, k=k, at=at)
    return {"checkpoint": ckpt_dir, "values_per_item": round(E.nnz / items, 2), "dims": E.shape[1], **out}


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
