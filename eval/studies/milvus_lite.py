"""Milvus Lite on a slice of a sparse catalogue: per-query latency and retrieval recall@k after the exact re-rank.

The first ``--items`` rows of a sparse checkpoint are indexed with the ``milvus`` backend (Milvus Lite, the
default) and with the exact ``sparse`` backend; the first ``--queries`` rows of a query matrix
(``scipy.sparse.save_npz``) are searched one at a time, each query through every configuration and the exact
backend in turn (interleaved, so machine load affects all alike). Prints one JSON object: per configuration
p50/p95 in ms, retrieval recall@k against the exact top-k of the same embeddings, and the p50 ratio to the
exact backend's.

    python -m elsa_index.eval.studies.milvus_lite CKPT_DIR QUERIES.npz --items 100000 --queries 100 \\
        --config '{"depth": 200}' --config '{"depth": 1000}'

Milvus Lite searches by brute force: its latency is not a Milvus server's (see the README, *Milvus*).
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


def run(ckpt_dir: str, queries: str, items: int, n_queries: int, configs: list[dict], k: int = 20) -> dict:
    """Measure ``configs`` (search parameters of the ``milvus`` backend); see the module documentation."""
    full = Checkpoint.load(ckpt_dir, mmap=True)
    if not full.sparse:
        raise SystemExit(f"{ckpt_dir} is not a sparse checkpoint")
    E = sp.csr_matrix(full.embeddings)[:items]
    ck = Checkpoint(E, full.item_ids.ids[:items], full.popularity[:items], kind=full.kind)
    Q = sp.csr_matrix(sp.load_npz(queries)[:n_queries], dtype=np.float32)
    exact = get_backend("sparse")().build(ck)
    ref = exact.search(Q, k).scores
    t0 = time.perf_counter()
    be = get_backend("milvus")().build(ck)
    out = {"items": E.shape[0], "queries": Q.shape[0], "k": k,
           "median_query_terms": float(np.median(np.diff(Q.indptr))),
           "build_seconds": round(time.perf_counter() - t0, 1)}
    defaults = dict(be.search_params)
    lat = np.zeros((len(configs) + 1, Q.shape[0]))
    ids = np.full((len(configs), Q.shape[0], k), -1, np.int64)
    for r in range(Q.shape[0]):
        q = Q[r:r + 1]
        t = time.perf_counter_ns()
        exact.search(q, k)
        lat[-1, r] = time.perf_counter_ns() - t
        for i, c in enumerate(configs):
            be.set_search_params(**{**defaults, **c})  # every parameter a configuration does not name at its default
            t = time.perf_counter_ns()
            res = be.search(q, k)
            lat[i, r] = time.perf_counter_ns() - t
            ids[i, r] = res.ids[0]
    be.close()
    S = (Q @ E.T).toarray()
    out["exact_p50_ms"] = round(float(np.median(lat[-1])) / 1e6, 3)
    out["configs"] = []
    for i, c in enumerate(configs):
        true = np.where(ids[i] >= 0, np.take_along_axis(S, np.clip(ids[i], 0, None), 1), -np.inf)
        p50 = float(np.median(lat[i])) / 1e6
        out["configs"].append({"search": c, "p50_ms": round(p50, 1),
                               "p95_ms": round(float(np.percentile(lat[i], 95)) / 1e6, 1),
                               f"retrieval_recall@{k}": round(float(retrieval_recall(true, ids[i], ref, k).mean()), 4),
                               "p50_ratio_to_exact": round(p50 / (out["exact_p50_ms"] or np.nan), 1)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m elsa_index.eval.studies.milvus_lite",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a sparse checkpoint directory")
    ap.add_argument("queries", help="query vectors, a scipy.sparse .npz with the checkpoint's dims")
    ap.add_argument("--items", type=int, default=100_000, help="first rows of the catalogue indexed (default 100000)")
    ap.add_argument("--queries", dest="n_queries", type=int, default=100, help="queries timed (default 100)")
    ap.add_argument("--k", type=int, default=20, help="results per query (default 20)")
    ap.add_argument("--config", action="append", type=json.loads, default=None,
                    help='search parameters as JSON, repeatable (default: {"depth": 200})')
    args = ap.parse_args(argv)
    res = run(args.checkpoint, args.queries, args.items, args.n_queries, args.config or [{"depth": 200}], args.k)
    sys.stdout.write(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
