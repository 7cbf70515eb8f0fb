"""Where a model's hits fall: Recall@20 and the top-20 hits split by the target items' training counts.

Usage::

    python -m elsa_index.eval.studies.popularity_hits --dataset book-crossing [--data-dir DIR]
        --models ease:300 puresvd:256 puresvd:512 elsa:256:2 [--k 20] [--json OUT.json]

The data and its protocol are the accuracy benchmark's (``--dataset`` ml-1m,
amazon-book or book-crossing; ``DIR`` defaults to ``$ELSA_INDEX_DATA``).
Models: ``ease:L2`` (EASE), ``ridge:L2`` (EASE without its zero-diagonal
constraint: ``x (XᵀX + l2 I)⁻¹ XᵀX``), ``puresvd:RANK`` (scores ``x V Vᵀ`` with ``V``
the top right singular vectors of the training matrix, exact when users or
items number at most 25,000, else a randomized SVD: the best low-rank
reconstruction, as a reference for what a rank limit costs; ``puresvd:0``
keeps every non-zero singular value), ``elsa:DIMS:EPOCHS`` (dense ELSA at lr 0.01, batch 512, seed 0, all
training users, no validation). For each model it prints Recall@k
(normalised by min(k, |targets|)) and how many of its top-k hits are items
with 0, 1, 2-3, 4-10, 11-50 and more than 50 training interactions, beside
how many targets fall in each bucket: it tells whether a model loses on the
long tail or on the items every model can learn.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

#: bucket lower bounds of the training count: [0], [1], [2-3], [4-10], [11-50], [51-]
EDGES = (0, 1, 2, 4, 11, 51)
LABELS = ("0", "1", "2-3", "4-10", "11-50", ">50")


def buckets(counts: np.ndarray) -> np.ndarray:
    return np.searchsorted(EDGES, counts, side="right") - 1


def hits_by_bucket(score, fold_in, targets, counts: np.ndarray, k: int = 20, batch: int = 256):
    """(Recall@k normalised by min(k, |targets|), top-k hits per training-count bucket) of ``score``.

    The ranking (fold-in excluded, ties to the lower item id) and the recall are the library's
    (:func:`elsa_index.topk.topk`, :func:`elsa_index.metrics.recall_at_k`), as in ``evaluate``.
    """
    from elsa_index.metrics import hits_at_k, recall_at_k
    from elsa_index.topk import topk

    hits = np.zeros(len(EDGES), dtype=np.int64)
    recalls = []
    for s in range(0, fold_in.shape[0], batch):
        f, t = fold_in[s:s + batch], targets[s:s + batch]
        ids, _ = topk(np.asarray(score(f), dtype=np.float32), k, exclude=f)
        np.add.at(hits, buckets(counts[ids[hits_at_k(ids, t)]]), 1)
        recalls.append(recall_at_k(ids, t, k))
    return float(np.nanmean(np.concatenate(recalls))), hits


#: PureSVD is exact (an eigendecomposition of the smaller Gram matrix, ``X Xᵀ`` or ``Xᵀ X``) up to this side
EXACT_MAX = 25_000
_GRAMS: dict = {}  # one eigendecomposition per training matrix, shared by every rank


def _gram(X) -> np.ndarray:
    """The smaller Gram matrix of ``X``, dense: ``X Xᵀ`` with at most as many users as items, else ``Xᵀ X``."""
    return (X @ X.T if X.shape[0] <= X.shape[1] else X.T @ X).toarray()


def _cross(X, train, dtype) -> np.ndarray:
    """``X trainᵀ``, dense: the histories' co-occurrences with every training user."""
    return np.asarray((X @ train.T).todense() if hasattr(X, "tocsr") else X @ train.T, dtype=dtype)


class PureSVD:
    """Scores ``x V Vᵀ`` with ``V`` the top ``rank`` right singular vectors of the training matrix.

    Exact when the smaller side of the matrix is at most ``EXACT_MAX`` (one
    eigendecomposition of its Gram matrix serves every rank; with fewer users
    than items, ``x V Vᵀ = (x Xᵀ) U S⁻² Uᵀ X`` never forms ``V``); else a
    randomized SVD.
    """

    def __init__(self, rank: int, seed: int = 0):
        self.rank, self.seed = rank, seed

    def fit(self, X):
        self.X = X.tocsr().astype(np.float32)
        n_users, n_items = X.shape
        if min(X.shape) <= EXACT_MAX:
            key = (id(X), X.shape, X.nnz)
            if key not in _GRAMS:
                _GRAMS.clear()
                G = _gram(self.X)
                w, U = np.linalg.eigh(G.astype(np.float64))
                del G
                keep = w > w[-1] * 1e-10  # numerically non-zero singular values, largest first
                _GRAMS[key] = (w[keep][::-1].astype(np.float32), np.ascontiguousarray(U[:, keep][:, ::-1],
                                                                                     dtype=np.float32))
            w, U = _GRAMS[key]
            r = len(w) if self.rank == 0 else min(self.rank, len(w))
            if n_users <= n_items:
                self.U, self.inv = U[:, :r], 1.0 / w[:r]
                self.V = None
            else:
                self.V = U[:, :r]
            return self
        if self.rank == 0:
            raise SystemExit(f"puresvd:0 (every singular value) needs users or items <= {EXACT_MAX:,}, got {X.shape}")
        import torch

        torch.manual_seed(self.seed)
        coo = self.X.tocoo()
        A = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data, coo.shape, check_invariants=True)
        _, _, V = torch.svd_lowrank(A, q=min(self.rank, min(X.shape)), niter=3)
        self.V = V.numpy().astype(np.float32)
        return self

    def score(self, X):
        if self.V is not None:
            return (X @ self.V) @ self.V.T
        a = _cross(X, self.X, np.float32)
        return np.asarray(self.X.T @ (((a @ self.U) * self.inv) @ self.U.T).T).T


class Ridge:
    """Scores ``x (XᵀX + l2 I)⁻¹ XᵀX``: EASE without its zero-diagonal constraint (ridge regression of each item on
    all items), solved in the smaller of the item x item and the user x user systems
    (``= (x Xᵀ) (X Xᵀ + l2 I)⁻¹ X``). Off the diagonal EASE's weights are these divided column-wise by
    ``1 - h_j``, so the two rank the items outside a history alike up to that per-item factor."""

    def __init__(self, l2: float):
        self.l2 = l2

    def fit(self, X):
        from scipy.linalg import cho_factor, cho_solve

        self.X = X.tocsr().astype(np.float64)
        G = _gram(self.X)
        dual = X.shape[0] <= X.shape[1]
        XtX = None if dual else G.copy()  # the primal's right-hand side is the Gram matrix itself
        G[np.diag_indices_from(G)] += self.l2
        c = cho_factor(G, overwrite_a=True)
        self.K, self.B = (c, None) if dual else (None, cho_solve(c, XtX).astype(np.float32))
        return self

    def score(self, X):
        from scipy.linalg import cho_solve

        if self.B is not None:
            return np.asarray(X @ self.B)
        a = _cross(X, self.X, np.float64)
        return np.asarray(self.X.T @ cho_solve(self.K, a.T)).T.astype(np.float32)


def make(spec: str):
    """A fitted-on-demand model from ``ease:L2``, ``ridge:L2``, ``puresvd:RANK`` or ``elsa:DIMS:EPOCHS``."""
    from elsa_index.models.baselines import EASE
    from elsa_index.workflow import make_model

    kind, *args = spec.split(":")
    try:
        if kind == "ease" and len(args) == 1:
            return f"EASE l2={float(args[0]):g}", EASE(l2=float(args[0]))
        if kind == "ridge" and len(args) == 1:
            return f"ridge l2={float(args[0]):g}", Ridge(float(args[0]))
        if kind == "puresvd" and len(args) == 1:
            r = int(args[0])
            if r >= 0:
                return f"PureSVD rank {r}" if r else "PureSVD full rank", PureSVD(r)
        if kind == "elsa" and len(args) == 2:
            d, e = int(args[0]), int(args[1])
            return f"ELSA {d}d {e} epochs", make_model("elsa", dims=d, epochs=e, lr=0.01, batch_size=512,
                                                         progress=False)
    except ValueError:
        pass
    raise SystemExit(f"bad model {spec!r}; expected ease:L2, ridge:L2, puresvd:RANK or elsa:DIMS:EPOCHS")


def main(argv=None) -> int:
    from elsa_index.eval.studies.accuracy import data_spec
    from elsa_index.workflow import load_split

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, help="ml-1m, amazon-book or book-crossing (the accuracy protocols)")
    ap.add_argument("--data-dir", default=os.environ.get("ELSA_INDEX_DATA"), help="default: $ELSA_INDEX_DATA")
    ap.add_argument("--models", nargs="+", required=True, help="ease:L2, ridge:L2, puresvd:RANK, elsa:DIMS:EPOCHS")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    if not args.data_dir:
        ap.error("--data-dir is required (or set ELSA_INDEX_DATA)")
    if args.k < 1:
        ap.error(f"--k must be >= 1, got {args.k}")
    models = [make(m) for m in args.models]  # refuse a bad spec before loading data
    split = load_split(data_spec(args.dataset, Path(args.data_dir)))
    X = split.train.matrix.tocsr()
    counts = np.asarray(X.sum(axis=0)).ravel()
    F, T = split.fold_in.tocsr(), split.targets.tocsr()
    per_target = np.bincount(buckets(counts[T.indices]), minlength=len(EDGES))
    print(f"{args.dataset}: {X.shape[0]} training users x {X.shape[1]} items; {F.shape[0]} test users, "
          f"{T.nnz} targets")
    print(f"{'training count':28s}" + "".join(f"{b:>8s}" for b in LABELS))
    print(f"{'targets':28s}" + "".join(f"{n:8d}" for n in per_target), flush=True)
    out = {"dataset": args.dataset, "k": args.k, "buckets": list(LABELS), "targets": per_target.tolist(),
           "models": {}}
    for name, model in models:
        t0 = time.perf_counter()
        model.fit(X)
        secs = time.perf_counter() - t0
        recall, hits = hits_by_bucket(model.score, F, T, counts, args.k)
        print(f"{name:28s}" + "".join(f"{n:8d}" for n in hits) + f"   Recall@{args.k} {recall:.4f} "
              f"(fit {secs:.0f}s)", flush=True)
        out["models"][name] = {"recall": recall, "hits": hits.tolist(), "fit_seconds": round(secs, 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
