"""Milvus Lite on a slice of a sparse catalogue: per-query latency and retrieval recall@k after the exact re-rank.

The first ``--items`` rows of a sparse checkpoint are indexed with the ``milvus`` backend (Milvus Lite, the
default) and with the exact ``sparse`` backend; the first ``--queries`` rows of a query matrix
(``scipy.sparse.save_npz``) are searched one at a time, each query through every configuration and the exact
backend in turn (interleaved, so machine load affects all alike; :mod:`.interleaved` does this for any
backend). Prints one JSON object: per configuration p50/p95 in ms, retrieval recall@k against the exact top-k
of the same embeddings, and the p50 ratio to the exact backend's.

    python -m elsa_index.eval.studies.milvus_lite CKPT_DIR QUERIES.npz --items 100000 --queries 100 \\
        --config '{"depth": 200}' --config '{"depth": 1000}'

Milvus Lite searches by brute force: its latency is not a Milvus server's (see the README, *Milvus*).
"""

from __future__ import annotations

import argparse
import json
import sys

from .interleaved import run as run_interleaved


def run(ckpt_dir: str, queries: str, items: int, n_queries: int, configs: list[dict], k: int = 20) -> dict:
    """Measure ``configs`` (search parameters of the ``milvus`` backend); see the module documentation."""
    return run_interleaved(ckpt_dir, queries, "milvus", configs, items=items, n_queries=n_queries, k=k, at=k)


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
