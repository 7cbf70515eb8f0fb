"""Search configurations of one backend timed query by query against the exact backend, in one process.

The harness measures each configuration in its own pass, so a change of machine load between passes moves
one configuration's latency and not another's. This study interleaves them instead: every query goes through
the exact ``sparse`` backend and then through each configuration of ``--backend`` (in alternating order from
one query to the next), so load affects all alike and the p50 *ratios* hold on a busy machine. Both backends
are built from the checkpoint (its first ``--items`` rows if given). Queries: a ``scipy.sparse.save_npz``
matrix, or a harness query set (``OUT/queries/DATASET/CHECKPOINT/queries.npz``, whose exclusions are applied).
Prints one JSON object: per configuration p50/p95 in ms, retrieval recall@``--at`` (tie-tolerant, against the
exact top-k of the same embeddings) and the p50 ratios to the exact backend and to the first configuration.

    python -m elsa_index.eval.studies.interleaved CKPT_DIR QUERIES.npz --backend lucene \\
        --config '{"query_mass": 1.0, "depth": 200}' --config '{}' --k 100 --at 20
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

from ..memprobe import load_queries


def _queries(path: str, n_queries: int | None):
    """(queries CSR float32, exclusions CSR or None), the first ``n_queries`` rows."""
    with np.load(path, allow_pickle=False) as z:
        harness = "q_indptr" in z.files
    Q, X = load_queries(path) if harness else (sp.load_npz(path), None)
    Q = sp.csr_matrix(Q[:n_queries], dtype=np.float32)
    return Q, (None if X is None else sp.csr_matrix(X[:n_queries]))


def run(ckpt_dir: str, queries: str, backend: str, configs: list[dict], *, build: dict | None = None,
        items: int | None = None, n_queries: int | None = None, k: int = 100, at: int = 20, warmup: int = 0) -> dict:
    """Measure ``configs`` (search parameters of ``backend``); see the module documentation."""
    full = Checkpoint.load(ckpt_dir, mmap=True)
    if not full.sparse:
        raise SystemExit(f"{ckpt_dir} is not a sparse checkpoint")
    if not 1 <= at <= k:
        raise SystemExit(f"--at must be in [1, --k={k}], got {at}")
    E = sp.csr_matrix(full.embeddings)[:items]
    ck = full if items is None else Checkpoint(E, full.item_ids.ids[:items], full.popularity[:items],
                                               kind=full.kind)
    Q, X = _queries(queries, n_queries)
    if Q.shape[1] != E.shape[1]:
        raise SystemExit(f"{queries} has {Q.shape[1]} columns; the checkpoint has {E.shape[1]} dims")
    if X is not None and X.shape[1] != E.shape[0]:
        raise SystemExit(f"{queries}: its exclusions cover {X.shape[1]} items, the catalogue has {E.shape[0]} "
                         f"(use the checkpoint the query set was made for, without --items)")
    return compare(ck, Q, X, backend, configs, build=build, k=k, at=at, warmup=warmup)


def compare(ck: Checkpoint, Q: sp.csr_matrix, X: sp.csr_matrix | None, backend: str, configs: list[dict], *,
            build: dict | None = None, k: int = 100, at: int = 20, warmup: int = 0) -> dict:
    """Time ``configs`` of ``backend`` against the exact backend on checkpoint ``ck``, query by query.

    ``Q`` are float32 CSR queries of ``ck``'s dims, ``X`` their exclusions (CSR over ``ck``'s items) or None.
    ``warmup`` queries (the first ones, repeated if there are fewer) go through every configuration untimed first:
    a JVM compiles its hot code after some thousands of calls, and the first configuration timed should not pay
    for it.
    Returns the JSON object the module documentation describes.
    """
    E = sp.csr_matrix(ck.embeddings)
    k = min(k, E.shape[0])
    at = min(at, k)
    exact = get_backend("sparse")().build(ck)
    t0 = time.perf_counter()
    be = get_backend(backend)(**(build or {})).build(ck)
    out = {"backend": backend, "build": build or {}, "items": E.shape[0], "queries": Q.shape[0], "k": k,
           "median_query_terms": float(np.median(np.diff(Q.indptr))),
           "build_seconds": round(time.perf_counter() - t0, 2)}
    defaults = dict(be.search_params)
    n = Q.shape[0]
    lat = np.zeros((len(configs) + 1, n))
    ids = np.full((len(configs), n, k), -1, np.int64)
    ref = np.full((n, k), -np.inf, np.float32)
    order = list(range(len(configs)))
    for w in range(warmup if n else 0):
        q, x = Q[w % n:w % n + 1], None if X is None else X[w % n:w % n + 1]
        exact.search(q, k, exclude=x)
        for c in configs:
            be.set_search_params(**{**defaults, **c})
            be.search(q, k, exclude=x)
    out["warmup"] = warmup
    for r in range(n):
        q = Q[r:r + 1]
        x = None if X is None else X[r:r + 1]
        t = time.perf_counter_ns()
        ref[r] = exact.search(q, k, exclude=x).scores[0]
        lat[-1, r] = time.perf_counter_ns() - t
        for i in (order if r % 2 == 0 else order[::-1]):
            be.set_search_params(**{**defaults, **configs[i]})  # parameters a configuration does not name: defaults
            t = time.perf_counter_ns()
            res = be.search(q, k, exclude=x)
            lat[i, r] = time.perf_counter_ns() - t
            ids[i, r] = res.ids[0]
    be.close()
    exact.close()
    out["exact_p50_ms"] = round(float(np.median(lat[-1])) / 1e6, 3)
    first = float(np.median(lat[0])) / 1e6 if configs else np.nan
    out["configs"] = []
    for i, c in enumerate(configs):
        true = np.full(ids[i].shape, -np.inf, np.float32)
        for r in range(n):  # exact scores of the returned items
            got = ids[i, r] >= 0
            true[r, got] = (E[ids[i, r, got]] @ Q[r].T).toarray().ravel()
        p50 = float(np.median(lat[i])) / 1e6
        out["configs"].append({"search": c, "p50_ms": round(p50, 3),
                               "p95_ms": round(float(np.percentile(lat[i], 95)) / 1e6, 3),
                               f"retrieval_recall@{at}": round(float(retrieval_recall(true, ids[i], ref, at).mean()), 4),
                               "p50_ratio_to_exact": round(p50 / out["exact_p50_ms"], 3),
                               "p50_ratio_to_first": round(p50 / first, 3)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m elsa_index.eval.studies.interleaved",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a sparse checkpoint directory")
    ap.add_argument("queries", help="query vectors: a scipy.sparse .npz with the checkpoint's dims, or a harness "
                                    "query set (queries.npz)")
    ap.add_argument("--backend", required=True, help="the backend whose search configurations are compared")
    ap.add_argument("--build", type=json.loads, default=None, help="its build parameters as JSON (default: none)")
    ap.add_argument("--config", action="append", type=json.loads, default=None,
                    help="search parameters as JSON, repeatable (default: {}, the backend's defaults)")
    ap.add_argument("--items", type=int, default=None, help="index only the first rows of the catalogue")
    ap.add_argument("--queries", dest="n_queries", type=int, default=None, help="queries timed (default: all)")
    ap.add_argument("--k", type=int, default=100, help="results per query (default 100)")
    ap.add_argument("--at", type=int, default=20, help="retrieval recall cut-off (default 20)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="untimed queries through every configuration first (default 0; a JVM backend needs "
                         "a few thousand calls to compile its hot code)")
    args = ap.parse_args(argv)
    if args.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {args.warmup}")
    res = run(args.checkpoint, args.queries, args.backend, args.config or [{}], build=args.build, items=args.items,
              n_queries=args.n_queries, k=args.k, at=args.at, warmup=args.warmup)
    sys.stdout.write(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
