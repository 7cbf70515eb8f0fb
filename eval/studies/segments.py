"""Segments report on ML-1M: counts, sizes, genre coherence, and a segment-level (homepage row) hit rate.

Usage::

    python -m elsa_index.eval.studies.segments --data-dir DIR [--checkpoint CKPT | --save-checkpoint CKPT]
        [--merge-to 50 20] [--random-seeds 5] [--out eval/results]

``DIR`` (default ``$ELSA_INDEX_DATA``) holds ``ml-1m.parquet`` and the item
metadata ``ml-1m.items.parquet`` (``item_id``, ``title``, ``genres``). The
script trains one Compressed ELSA checkpoint with a fixed recipe (or loads
``--checkpoint``), discovers segments at each merge level, and writes
``OUT/segments.json`` and ``OUT/segments.md``.

Protocol
--------
Data: the accuracy benchmark's ML-1M protocol (ratings >= 4 are positives,
users with >= 5 positives, 1,000 held-out users, seed 42, 80/20 fold-in /
target split; the same settings as the accuracy study).

Model: ``make_model("compressed", dims=1024, nnz=16, epochs=10, lr=0.03,
warmup_epochs=0, finetune_epochs=5, prune_steps=100)`` trained on the
training users (no epoch selection).

Segments: :func:`elsa_index.segments.discover_segments` with the default
parameters (dominant signed dimension; greedy cosine merging) and no
merging, then ``merge_to`` 50 and 20 (``--merge-to``). Labels come from the
genres of each segment's 10 most central items.

Genre coherence. Each item carries a *set* of genres G(i) (ML-1M lists 1-6
per movie). Only segmented items with metadata count (N of them).

* purity: for a segment s, the share of its members that carry its most
  common genre, ``max_g |{i in s : g in G(i)}| / |s|``; reported as the
  size-weighted mean over segments (``sum_s max_g count / N``, "purity") and
  as the plain mean over segments ("mean purity", not dominated by the
  largest segment). Because a
  multi-genre item counts for each of its genres, frequent genres (Drama,
  Comedy) give every segment a high floor: compare with the random column.
* NMI (fractional multi-label): each item spreads one unit of mass evenly
  over its genres, giving the joint distribution
  ``P(s, g) = sum_{i in s, g in G(i)} 1 / (N |G(i)|)``; NMI is the mutual
  information of that joint distribution divided by the arithmetic mean of
  the entropies of its two marginals (the segment sizes and the genre
  shares), as scikit-learn's default ``normalized_mutual_info_score``.
* random: the same items dealt into segments of exactly the same sizes
  uniformly at random; mean and standard deviation over ``--random-seeds``
  draws. The lift is the model's value over the random mean.

Segment-level hit rate. For every held-out user with a non-empty fold-in
history and at least one target (both restricted to the checkpoint's items),
the homepage's top 5 segment rows (``recommend_segments(..., rows=5, k=10,
top_row=False)``: at most 50 items, none from the history, none repeated) is
a *hit* when it contains at least one target item. Also reported: the share
of targets shown over ``min(50, |targets|)`` (a recall over the page), the
share of rows holding a target, and the mean number of items shown.
Baselines on the same budget:

* popular segments: the 5 segments with the largest total training
  popularity of their items (the same for every user), each row holding its
  10 most popular items not in the history;
* plain top-50: the model's ordinary top-50 list (history excluded);
* popularity top-50: the 50 most popular items not in the history.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from elsa_index.checkpoint import Checkpoint
from elsa_index.data.tables import item_tokens
from elsa_index.eval.machine import cpu_name
from elsa_index.search import build_index
from elsa_index.segments import discover_segments, recommend_segments
from elsa_index.workflow import DataSpec, align_to, load_split, make_model, train_checkpoint

RECIPE = dict(dims=1024, nnz=16, epochs=10, lr=0.03, warmup_epochs=0, finetune_epochs=5, prune_steps=100)
ROWS, K = 5, 10
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
COMMAND = "python -m elsa_index.eval.studies.segments"


def data_spec(data_dir: Path, heldout_users: int = 1000) -> DataSpec:
    """ML-1M as the accuracy study reads it: ratings >= 4, users with >= 5 positives, held-out users, seed 42."""
    return DataSpec(source=str(data_dir / "ml-1m.parquet"), rating_col="rating", min_rating=4.0,
                    min_user_support=5, n_heldout_users=heldout_users, seed=42)


# ------------------------------------------------------------------ measures


def size_stats(sizes: np.ndarray) -> dict:
    """min / quantiles / max / mean of segment sizes, and how many are singletons."""
    s = np.asarray(sizes, dtype=np.float64)
    out = {"min": int(s.min()), "max": int(s.max()), "mean": float(s.mean()), "singletons": int((s == 1).sum()),
           "largest_share": float(s.max() / s.sum())}
    for q in QUANTILES:
        out[f"p{int(q * 100)}"] = float(np.quantile(s, q))
    return out


def genre_matrix(tokens: list, items: np.ndarray) -> tuple[sp.csr_matrix, list[str]]:
    """Binary CSR (len(items), n_genres) of the genre sets of ``items``, and the genre names."""
    names = sorted({g for i in items for g in tokens[i]})
    col = {g: c for c, g in enumerate(names)}
    rows, cols = [], []
    for r, i in enumerate(items):
        for g in tokens[i]:
            rows.append(r), cols.append(col[g])
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(items), len(names)))
    return m, names


def coherence(labels: np.ndarray, G: sp.csr_matrix) -> dict:
    """Size-weighted multi-label purity and fractional multi-label NMI of a segmentation vs. genres.

    Parameters
    ----------
    labels : int (n,), segment of each item (values need not be contiguous).
    G : binary CSR (n, n_genres), each row non-empty.
    """
    _, seg = np.unique(labels, return_inverse=True)
    n, m = G.shape[0], seg.max() + 1
    S = sp.csr_matrix((np.ones(n), (seg, np.arange(n))), shape=(m, n))
    counts = np.asarray((S @ G).todense())  # members of s carrying g
    top = counts.max(axis=1)
    purity = float(top.sum() / n)
    mean_purity = float(np.mean(top / np.bincount(seg, minlength=m)))
    per_item = np.asarray(G.sum(axis=1)).ravel()
    frac = sp.diags(1.0 / per_item) @ G  # one unit of mass per item, spread over its genres
    P = np.asarray((S @ frac).todense()) / n
    ps, pg = P.sum(axis=1), P.sum(axis=0)
    nz = P > 0
    mi = float((P[nz] * np.log(P[nz] / np.outer(ps, pg)[nz])).sum())

    def entropy(p):
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    denom = (entropy(ps) + entropy(pg)) / 2
    return {"purity": purity, "mean_purity": mean_purity, "nmi": mi / denom if denom > 0 else 0.0}


def random_coherence(labels: np.ndarray, G: sp.csr_matrix, seeds: int) -> dict:
    """Coherence of random segmentations with exactly the sizes of ``labels``; mean and std over seeds."""
    vals = [coherence(np.random.default_rng(s).permutation(labels), G) for s in range(seeds)]
    out = {}
    for key in ("purity", "mean_purity", "nmi"):
        x = np.array([v[key] for v in vals])
        out[f"{key}_mean"], out[f"{key}_std"] = float(x.mean()), float(x.std())
    return out


def page_stats(pages: list[list[np.ndarray]], targets: list[set]) -> dict:
    """Hit rate, page recall, row hit share and items shown over users' pages (lists of rows of item indices)."""
    hits, recall, row_hits, n_rows, shown = [], [], 0, 0, []
    for rows, tgt in zip(pages, targets):
        items = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        found = len(tgt & set(items.tolist()))
        hits.append(found > 0)
        recall.append(found / min(ROWS * K, len(tgt)))
        row_hits += sum(bool(tgt & set(r.tolist())) for r in rows)
        n_rows += len(rows)
        shown.append(len(items))
    return {"hit_rate": float(np.mean(hits)), "page_recall": float(np.mean(recall)),
            "row_hit_share": row_hits / max(n_rows, 1), "items_shown": float(np.mean(shown)),
            "rows": n_rows / max(len(pages), 1)}


def popular_segment_pages(ckpt, seg, histories: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Rows of the 5 most popular segments (total item popularity), each with its 10 most popular unseen items."""
    pop = ckpt.popularity
    a = seg.assignment
    seg_pop = np.bincount(a[a >= 0], weights=pop[a >= 0], minlength=seg.n_segments)
    seg_order = np.lexsort((np.arange(seg.n_segments), -seg_pop))
    ranked = {}
    pages = []
    for hist in histories:
        seen = set(hist.tolist())
        rows = []
        for s in seg_order:
            if len(rows) == ROWS:
                break
            if s not in ranked:
                mem = seg.members(int(s))
                ranked[s] = mem[np.lexsort((mem, -pop[mem]))]
            row = [i for i in ranked[s] if i not in seen][:K]
            if row:
                rows.append(np.asarray(row, np.int64))
        pages.append(rows)
    return pages


def top_lists(scores: np.ndarray, fold: sp.csr_matrix, n: int) -> list[np.ndarray]:
    """Top-n item indices per row of ``scores`` (n_users, n_items), history excluded; ties: lower index."""
    out = []
    for u in range(scores.shape[0]):
        s = scores[u].astype(np.float64).copy()
        s[fold[u].indices] = -np.inf
        cand = np.argpartition(-s, n)[: n + 1] if n < len(s) else np.arange(len(s))
        cand = cand[np.isfinite(s[cand])]
        out.append(cand[np.lexsort((cand, -s[cand]))][:n])
    return out


# ------------------------------------------------------------------ main


def machine() -> dict:
    cpu = cpu_name()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def get_checkpoint(args, split, spec):
    if args.checkpoint:
        print(f"loading checkpoint {args.checkpoint}", flush=True)
        return Checkpoint.load(args.checkpoint)
    model = make_model("compressed", progress=False, **RECIPE)
    print(f"training Compressed ELSA {RECIPE} ...", flush=True)
    ckpt = train_checkpoint(model, split, data={"spec": spec.to_dict()})
    print(f"trained in {ckpt.config['train_seconds']:.0f}s: " + "  ".join(f"{k} {v:.4f}" for k, v in ckpt.metrics.items()), flush=True)
    if args.save_checkpoint:
        ckpt.save(args.save_checkpoint, overwrite=True)
    return ckpt


def run(args) -> dict:
    data_dir = Path(args.data_dir)
    meta_path = data_dir / "ml-1m.items.parquet"
    if not meta_path.is_file():
        raise SystemExit(f"item metadata not found: {meta_path}")
    spec = data_spec(data_dir, args.heldout_users)
    print(f"loading {spec.source}", flush=True)
    split = load_split(spec)
    ckpt = get_checkpoint(args, split, spec)
    train_secs = ckpt.config.get("train_seconds")
    if not ckpt.sparse:
        raise SystemExit("the checkpoint is dense; segments need a Compressed ELSA (sparse) checkpoint")
    tokens = item_tokens(meta_path, ckpt.item_ids, id_col="item_id", label_cols=("genres",))
    index = build_index(ckpt, "sparse")  # the exact backend serves the homepage rows

    # Held-out users, restricted to the checkpoint's items.
    fold = align_to(ckpt, split.fold_in, split.item_ids)
    tgt = align_to(ckpt, split.targets, split.item_ids)
    keep = np.flatnonzero((np.diff(fold.indptr) > 0) & (np.diff(tgt.indptr) > 0))
    fold, tgt = fold[keep], tgt[keep]
    histories = [fold[u].indices.astype(np.int64) for u in range(fold.shape[0])]
    hist_ids = [ckpt.item_ids.ids[h].tolist() for h in histories]
    targets = [set(tgt[u].indices.tolist()) for u in range(tgt.shape[0])]
    print(f"{len(keep)} of {split.fold_in.shape[0]} held-out users have a history and a target", flush=True)

    results: dict = {
        "machine": machine(),
        "protocol": {"rows": ROWS, "k": K, "random_seeds": args.random_seeds, "merge_to": args.merge_to},
        "data": {"train_users": split.train.n_users, "items": ckpt.n_items, "train_interactions": split.train.nnz,
                 "heldout_users": int(split.fold_in.shape[0]), "evaluated_users": int(len(keep)),
                 "items_with_genres": int(sum(t is not None and len(t) > 0 for t in tokens))},
        "checkpoint": {"fingerprint": ckpt.fingerprint, "path": args.checkpoint, "recipe": RECIPE,
                       "metrics": ckpt.metrics, "nnz_per_item": float(ckpt.nnz_per_row().mean()),
                       "train_seconds": train_secs},
        "levels": {},
    }

    # Item-level baselines (independent of the segments).
    t0 = time.perf_counter()
    scores = np.vstack([ckpt.score(fold[i : i + 500]) for i in range(0, fold.shape[0], 500)])
    plain = top_lists(scores, fold, ROWS * K)
    pop_scores = np.broadcast_to(ckpt.popularity.astype(np.float64), (fold.shape[0], ckpt.n_items))
    popular = top_lists(pop_scores, fold, ROWS * K)
    results["baselines"] = {"plain top-50": page_stats([[p] for p in plain], targets),
                            "popularity top-50": page_stats([[p] for p in popular], targets)}
    print(f"baselines in {time.perf_counter() - t0:.1f}s", flush=True)

    levels = [("no merging", None)] + [(f"merge to {m}", m) for m in args.merge_to]
    for name, merge_to in levels:
        t0 = time.perf_counter()
        seg = discover_segments(ckpt, merge_to=merge_to, metadata=meta_path)
        disc = time.perf_counter() - t0
        a = seg.assignment
        items = np.flatnonzero((a >= 0) & np.array([t is not None and len(t) > 0 for t in tokens]))
        G, _ = genre_matrix(tokens, items)
        coh = coherence(a[items], G)
        rnd = random_coherence(a[items], G, args.random_seeds)
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no user here falls back; unknown ids cannot occur
            pages = [[r.indices for r in recommend_segments(index, seg, h, rows=ROWS, k=K, top_row=False)]
                     for h in hist_ids]
        rec_secs = time.perf_counter() - t1
        level = {
            "merge_to": merge_to, "n_initial_segments": seg.info["n_initial_segments"],
            "n_segments": seg.n_segments, "n_merges": seg.info["n_merges"],
            "n_unsegmented": int((a < 0).sum()), "sizes": size_stats(seg.sizes),
            "coherence": {**coh, "random": rnd, "items": int(len(items))},
            "hit": {"segment rows": page_stats(pages, targets),
                    "popular segments": page_stats(popular_segment_pages(ckpt, seg, histories), targets)},
            "seconds": {"discover": round(disc, 2), "recommend_per_user_ms": round(1000 * rec_secs / len(pages), 3)},
        }
        if seg.n_segments <= 60:
            level["segments"] = [
                {"segment": d["segment"], "size": d["size"], "label": d["label"], "n_keys": len(d["keys"]),
                 "central": d["central"][:3]} for d in seg.describe()
            ]
        results["levels"][name] = level
        h = level["hit"]
        print(f"{name:12s} {seg.n_segments:5d} segments  purity {coh['purity']:.3f} (random {rnd['purity_mean']:.3f})  "
              f"NMI {coh['nmi']:.3f} (random {rnd['nmi_mean']:.3f})  hit rate {h['segment rows']['hit_rate']:.3f} "
              f"(popular segments {h['popular segments']['hit_rate']:.3f})  [{disc:.1f}s]", flush=True)
    return results


# ------------------------------------------------------------------ report


def render(r: dict) -> str:
    d, c = r["data"], r["checkpoint"]
    met = "  ".join(f"{k} {v:.4f}" for k, v in (c.get("metrics") or {}).items())
    lines = [
        "# Segments on ML-1M", "",
        f"Generated by `{COMMAND} --data-dir DIR` (definitions in the script's docstring).", "",
        f"Machine: {r['machine']['cpu']} ({r['machine']['cores']} cores), Python {r['machine']['python']}.", "",
        f"Data: {d['train_users']} training users x {d['items']} items ({d['train_interactions']} interactions); "
        f"{d['evaluated_users']} of {d['heldout_users']} held-out users evaluated; {d['items_with_genres']} items "
        "with genres.", "",
        f"Checkpoint: Compressed ELSA `{json.dumps(c['recipe'])}`, {c['nnz_per_item']:.1f} nnz/item, fingerprint "
        f"`{c['fingerprint']}`" + (f", trained in {c['train_seconds']:.0f}s" if c.get("train_seconds") else "")
        + (f"; held-out {met}" if met else "") + ".", "",
        "## Segments and sizes", "",
        "| level | segments | merges | unsegmented items | min | p10 | p25 | median | p75 | p90 | max | largest share "
        "| singletons | discover s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, lv in r["levels"].items():
        s = lv["sizes"]
        lines.append(f"| {name} | {lv['n_segments']} | {lv['n_merges']} | {lv['n_unsegmented']} | {s['min']} | "
                     f"{s['p10']:g} | {s['p25']:g} | {s['p50']:g} | {s['p75']:g} | {s['p90']:g} | {s['max']} | "
                     f"{s['largest_share']:.1%} | "
                     f"{s['singletons']} | {lv['seconds']['discover']:.1f} |")
    first = next(iter(r["levels"].values()))
    lines += ["", f"Before merging: {first['n_initial_segments']} dominant-dimension segments.", "",
              "## Coherence with genres", "",
              f"Random: the same sizes, items dealt at random, mean ± std over {r['protocol']['random_seeds']} seeds.", "",
              "| level | purity | random purity | lift | mean purity | random mean purity | NMI | random NMI | lift |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, lv in r["levels"].items():
        co, rn = lv["coherence"], lv["coherence"]["random"]
        lines.append(f"| {name} | {co['purity']:.3f} | {rn['purity_mean']:.3f} ± {rn['purity_std']:.3f} | "
                     f"{co['purity'] / rn['purity_mean']:.2f} | {co['mean_purity']:.3f} | {rn['mean_purity_mean']:.3f} ± "
                     f"{rn['mean_purity_std']:.3f} | {co['nmi']:.3f} | {rn['nmi_mean']:.3f} ± "
                     f"{rn['nmi_std']:.3f} | {co['nmi'] / max(rn['nmi_mean'], 1e-12):.2f} |")
    lines += ["", f"## Segment-level hit rate ({ROWS} rows x {K} items)", "",
              "| method | hit rate | page recall | rows with a target | rows | items shown |",
              "|---|---:|---:|---:|---:|---:|"]

    def row(label, h):
        return (f"| {label} | {h['hit_rate']:.3f} | {h['page_recall']:.3f} | {h['row_hit_share']:.3f} | "
                f"{h['rows']:.2f} | {h['items_shown']:.1f} |")

    for name, lv in r["levels"].items():
        lines.append(row(f"segment rows, {name}", lv["hit"]["segment rows"]))
        lines.append(row(f"popular segments, {name}", lv["hit"]["popular segments"]))
    for name, h in r["baselines"].items():
        lines.append(row(name, h))
    for name, lv in r["levels"].items():
        if "segments" not in lv:
            continue
        lines += ["", f"## The segments, {name}", "", "| id | size | keys | label | central items |",
                  "|---:|---:|---:|---|---|"]
        for s in lv["segments"]:
            cen = "; ".join(x.replace("|", "/") for x in s["central"])
            lines.append(f"| {s['segment']} | {s['size']} | {s['n_keys']} | {s['label']} | {cen} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("ELSA_INDEX_DATA"),
                    help="folder with ml-1m.parquet and ml-1m.items.parquet (default: $ELSA_INDEX_DATA)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="load this Compressed ELSA checkpoint instead of training")
    g.add_argument("--save-checkpoint", help="save the trained checkpoint here (replaced if it exists)")
    ap.add_argument("--merge-to", type=int, nargs="+", default=[50, 20], help="merge levels (default: 50 20)")
    ap.add_argument("--random-seeds", type=int, default=5, help="random segmentations averaged (default: 5)")
    ap.add_argument("--heldout-users", type=int, default=1000, help="held-out users (default: 1000)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "results"),
                    help="folder for segments.md and segments.json (default: eval/results)")
    args = ap.parse_args(argv)
    if not args.data_dir:
        ap.error("--data-dir is required (or set ELSA_INDEX_DATA)")
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "segments.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, out / "segments.json")
    text = render(results)
    tmp = out / "segments.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "segments.md")
    print()
    print(text)
    print(f"wrote {out / 'segments.md'} and {out / 'segments.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
