"""Command-line interface: ``elsa-index <command> ...`` (also ``python -m elsa_index``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from . import __version__
from .errors import ElsaIndexError

__all__ = ["main", "build_parser"]


# ------------------------------------------------------------------ arguments


def _add_data_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, metavar="SOURCE",
                   help="interaction log (.parquet/.csv), a dataset name (ml-100k, ml-1m, ml-20m, "
                        "goodbooks-10k, netflix) or 'synthetic'")
    g.add_argument("--user-col", default="user_id", help="user id column (default: user_id)")
    g.add_argument("--item-col", default="item_id", help="item id column (default: item_id)")
    g.add_argument("--rating-col", default=None, help="rating column, needed for --min-rating")
    g.add_argument("--timestamp-col", default=None, help="timestamp column (optional)")
    g.add_argument("--split-col", default=None,
                   help="column with train/test values: use the file's own split instead of held-out users")
    g.add_argument("--min-rating", type=float, default=None,
                   help="keep rows with rating >= this as positives (default: every row is a positive)")
    g.add_argument("--min-user-support", type=int, default=5, help="drop users with fewer positives (default: 5)")
    g.add_argument("--min-item-support", type=int, default=1, help="drop items with fewer positives (default: 1)")
    g.add_argument("--heldout-users", type=int, default=1000, help="users held out for evaluation (default: 1000)")
    g.add_argument("--split-seed", type=int, default=42, help="seed of the held-out user draw (default: 42)")


def _data_spec(args):
    from .workflow import DataSpec

    return DataSpec(
        source=args.data, user_col=args.user_col, item_col=args.item_col, rating_col=args.rating_col,
        timestamp_col=args.timestamp_col, split_col=args.split_col, min_rating=args.min_rating,
        min_user_support=args.min_user_support, min_item_support=args.min_item_support,
        n_heldout_users=args.heldout_users, seed=args.split_seed,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elsa-index",
        description="Train ELSA / Compressed ELSA item embeddings and serve recommendations from them.",
    )
    parser.add_argument("--version", action="version", version=f"elsa-index {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # train
    p = sub.add_parser("train", help="train a model and save a checkpoint",
                       description="Train dense ELSA or Compressed ELSA on an interaction log and save a checkpoint.")
    _add_data_args(p, required=True)
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=["elsa", "compressed"], default="compressed",
                   help="dense ELSA or Compressed ELSA (default: compressed)")
    g.add_argument("--dims", type=int, default=None,
                   help="embedding width; for compressed, the dense start width (default: 256 elsa, 1024 compressed)")
    g.add_argument("--nnz", type=int, default=16, help="compressed: active dims per item at the end (default: 16)")
    g.add_argument("--schedule", choices=["constant", "step", "linear", "exponential"], default="exponential",
                   help="compressed: pruning schedule (default: exponential)")
    g.add_argument("--restart", action="store_true", help="compressed: reset surviving weights after each pruning event")
    g.add_argument("--prune-steps", type=int, default=10, help="compressed: pruning events of linear/exponential")
    g.add_argument("--warmup-epochs", type=int, default=1, help="compressed: dense epochs before pruning")
    g.add_argument("--finetune-epochs", type=int, default=2, help="compressed: epochs at the target nnz")
    g.add_argument("--epochs", type=int, default=None, help="training epochs (default: 20 elsa, 8 compressed)")
    g.add_argument("--batch-size", type=int, default=512, help="users per step (default: 512)")
    g.add_argument("--lr", type=float, default=0.01, help="Nadam learning rate (default: 0.01)")
    g.add_argument("--negatives", type=int, default=None,
                   help="sampled outputs: score batch positives plus this many random items (default: all items)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    g.add_argument("--seed", type=int, default=0, help="model seed (default: 0)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint directory")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation on held-out users")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    # evaluate
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on held-out users",
                       description="Recall@k (normalised by min(k, |targets|)) and NDCG@k of a checkpoint. "
                                   "Without --data, the data settings recorded in the checkpoint are used.")
    p.add_argument("checkpoint", help="checkpoint directory")
    _add_data_args(p, required=False)
    p.add_argument("--metrics", nargs="+", default=["recall@20", "recall@50", "ndcg@100"],
                   help="metric names, e.g. recall@20 hit_recall@20 ndcg@100")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    # import-npz
    p = sub.add_parser("import-npz", help="make a checkpoint from a scipy .npz sparse matrix (or a .npy array)",
                       description="Import item embeddings produced by another tool: a scipy.sparse.save_npz "
                                   "matrix (CSR/CSC/COO) or a dense .npy array, one row per item.")
    p.add_argument("embeddings", help=".npz sparse matrix or .npy array, shape (n_items, dims)")
    p.add_argument("--item-ids", default=None, help="text file with one item id per line (default: row numbers)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint directory")
    p.set_defaults(func=cmd_import)

    # info
    p = sub.add_parser("info", help="describe a checkpoint", description="Print a checkpoint's manifest summary.")
    p.add_argument("checkpoint", help="checkpoint directory")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.set_defaults(func=cmd_info)

    # build
    p = sub.add_parser("build", help="build an index from a checkpoint",
                       description="Index a checkpoint's item embeddings with one backend and write a "
                                   "self-contained index directory (checkpoint copy + backend files).")
    p.add_argument("checkpoint", help="checkpoint directory")
    p.add_argument("--backend", required=True, choices=["sparse", "lucene", "faiss-flat", "faiss-hnsw", "faiss-ivf"],
                   help="sparse: exact in-process; lucene: Lucene impact index; faiss-*: dense baselines")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="backend build or search parameter, e.g. --param M=32 --param depth=200 (repeatable)")
    p.add_argument("--out", required=True, help="index directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index directory")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_build)

    # recommend
    p = sub.add_parser("recommend", help="recommend items for user histories",
                       description="Top-k items for one history (--history) or for a JSON-lines file of "
                                   "histories (--input), written as JSON lines.")
    p.add_argument("index", help="index directory (from 'elsa-index build')")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--history", nargs="+", metavar="ITEM_ID", help="the items of one user's history")
    g.add_argument("--input", metavar="FILE",
                   help="JSON lines: each a list of item ids or an object {\"user\": ..., \"history\": [...]}")
    p.add_argument("--k", type=int, default=20, help="items per user (default: 20)")
    p.add_argument("--allow", nargs="+", metavar="ITEM_ID", help="only recommend these items")
    p.add_argument("--deny", nargs="+", metavar="ITEM_ID", help="never recommend these items")
    p.add_argument("--include-history", action="store_true", help="allow items of the history in the results")
    p.add_argument("--search-param", action="append", default=[], metavar="NAME=VALUE",
                   help="backend search parameter, e.g. --search-param ef_search=256 (repeatable)")
    p.add_argument("--output", metavar="FILE", help="write JSON lines here (default: stdout)")
    p.add_argument("--batch-size", type=int, default=1000, help="histories per batch (default: 1000)")
    p.set_defaults(func=cmd_recommend)

    # segments
    p = sub.add_parser("segments", help="discover item segments of a sparse checkpoint or index",
                       description="Group the items of a Compressed ELSA (sparse) checkpoint by their dominant "
                                   "signed dimension, merge near-duplicate segments, label them from item metadata "
                                   "and save the segments directory. Default output: SOURCE/segments for an index "
                                   "directory, the sibling SOURCE.segments for a checkpoint directory; 'elsa-index "
                                   "homepage' looks in both places.")
    p.add_argument("source", metavar="CHECKPOINT_OR_INDEX", help="sparse checkpoint or index directory")
    p.add_argument("--merge-to", type=int, default=None, metavar="N",
                   help="fold the smallest segment into its most similar one until N remain (default: no merging)")
    p.add_argument("--min-size", type=int, default=1, metavar="N",
                   help="first merge segments with fewer than N items into their most similar one (default: 1)")
    p.add_argument("--items", metavar="METADATA", help="item metadata (.parquet/.csv/.tsv) for labels and titles")
    p.add_argument("--id-col", default="item_id", help="metadata column with the item ids (default: item_id)")
    p.add_argument("--label-col", nargs="+", default=["genres"], metavar="COL",
                   help="metadata column(s) whose tokens label the segments (default: genres)")
    p.add_argument("--title-col", default="title",
                   help="metadata column shown for central items in the summary, if present (default: title)")
    p.add_argument("--central", type=int, default=10, metavar="N",
                   help="central items kept (and labelled) per segment (default: 10)")
    p.add_argument("--out", default=None, metavar="DIR", help="segments directory to write (default: see above)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing segments directory")
    p.add_argument("--show", type=int, default=20, metavar="N", help="segments listed in the summary (default: 20; 0: all)")
    p.set_defaults(func=cmd_segments)

    # homepage
    p = sub.add_parser("homepage", help="write a static HTML homepage preview for one history",
                       description="Recommend the plain 'Recommended for you' row plus one row per recommended "
                                   "segment for one history and write them as a self-contained HTML page. A history "
                                   "with no item of the catalogue falls back to popular segments and items (with a "
                                   "warning on stderr).")
    p.add_argument("index", metavar="INDEX", help="sparse index directory (or checkpoint directory)")
    p.add_argument("--history", nargs="+", required=True, metavar="ITEM_ID", help="the items of the user's history")
    p.add_argument("--rows", type=int, default=5, help="segment rows (default: 5)")
    p.add_argument("--k", type=int, default=10, help="items per row (default: 10)")
    p.add_argument("--items", metavar="METADATA", help="item metadata (.parquet/.csv/.tsv) with titles")
    p.add_argument("--id-col", default="item_id", help="metadata column with the item ids (default: item_id)")
    p.add_argument("--title-col", default="title", help="metadata column with the titles (default: title)")
    p.add_argument("--segments", metavar="DIR",
                   help="segments directory (default: INDEX/segments, else the sibling INDEX.segments)")
    p.add_argument("--title", default="Homepage preview", help="page heading")
    p.add_argument("--out", required=True, metavar="FILE", help="HTML file to write (replaced if it exists)")
    p.set_defaults(func=cmd_homepage)

    # demo
    p = sub.add_parser("demo", help="end-to-end run on built-in synthetic data (offline, a few minutes)",
                       description="Generate synthetic interactions with planted structure, train popularity, "
                                   "dense ELSA and Compressed ELSA, save checkpoints, print a results table, serve "
                                   "recommendations from an index and run a small benchmark of the backends.")
    p.add_argument("--out", default="elsa-demo", help="output directory (default: ./elsa-demo)")
    p.add_argument("--users", type=int, default=5000, help="synthetic users (default: 5000)")
    p.add_argument("--items", type=int, default=2000, help="synthetic items (default: 2000)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-bench", action="store_true", help="skip the small backend benchmark at the end")
    p.set_defaults(func=cmd_demo)

    # bench
    p = sub.add_parser("bench", help="benchmark index backends (latency, memory, recall) from a config",
                       description="Run (or resume) the benchmark described by a TOML config: build every index, "
                                   "sweep its search parameters over the same queries, store raw per-query results "
                                   "and write OUT/report.md with PNG plots. Configurations already measured in OUT "
                                   "are skipped unless --force.")
    p.add_argument("config", help="benchmark config (.toml), e.g. eval/configs/quick.toml")
    p.add_argument("--out", required=True, help="output directory (reused to resume)")
    p.add_argument("--quick", action="store_true", help="apply the config's [quick] overrides: a minutes-long smoke run")
    p.add_argument("--force", action="store_true", help="re-measure configurations already measured; rebuild indexes")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--report-only", action="store_true", help="only re-render the report from stored results")
    only.add_argument("--prepare-only", action="store_true",
                   help="only train the checkpoints and prepare the query sets (e.g. on a GPU machine); "
                        "a later run with the same --out measures")
    p.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    p.set_defaults(func=cmd_bench)
    return parser


# ------------------------------------------------------------------ commands


def cmd_train(args) -> int:
    from .workflow import load_split, make_model, train_checkpoint

    spec = _data_spec(args)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ElsaIndexError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    params = dict(batch_size=args.batch_size, lr=args.lr, n_negatives=args.negatives, device=args.device,
                  seed=args.seed, progress=not args.quiet)
    if args.model == "elsa":
        model = make_model("elsa", dims=args.dims or 256, epochs=args.epochs or 20, **params)
    else:
        model = make_model(
            "compressed", dims=args.dims or 1024, nnz=args.nnz, schedule=args.schedule, restart=args.restart,
            prune_steps=args.prune_steps, warmup_epochs=args.warmup_epochs, finetune_epochs=args.finetune_epochs,
            epochs=args.epochs or 8, **params,
        )
    _say(f"loading {spec.source} ...")
    split = load_split(spec)
    _say(f"training {model.kind} on {split.train.n_users} users x {split.train.n_items} items "
         f"({split.train.nnz} interactions); {split.fold_in.shape[0]} held-out users")
    ckpt = train_checkpoint(model, split, data={"spec": spec.to_dict()}, evaluate_heldout=not args.no_eval)
    ckpt.save(out, overwrite=args.overwrite)
    _say(f"saved {ckpt!r} to {out} (training {ckpt.config['train_seconds']:.1f}s)")
    if ckpt.metrics:
        _say(_metrics_line(ckpt.metrics))
    return 0


def cmd_evaluate(args) -> int:
    from .checkpoint import Checkpoint
    from .workflow import DataSpec, evaluate_checkpoint, load_split

    ckpt = Checkpoint.load(args.checkpoint)
    if args.data is not None:
        spec = _data_spec(args)
    elif "spec" in ckpt.data:
        spec = DataSpec.from_dict(ckpt.data["spec"])
    else:
        raise ElsaIndexError(f"{args.checkpoint} records no training data; pass --data to name the interactions")
    split = load_split(spec)
    metrics = evaluate_checkpoint(ckpt, split, metrics=args.metrics)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        _say(f"{split.fold_in.shape[0]} held-out users of {spec.source}")
        _say(_metrics_line(metrics))
    return 0


def cmd_import(args) -> int:
    from .checkpoint import import_embeddings

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ElsaIndexError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    ckpt = import_embeddings(args.embeddings, args.item_ids)
    ckpt.save(out, overwrite=args.overwrite)
    nnz = ckpt.nnz_per_row()
    _say(f"imported {ckpt.n_items} items x {ckpt.dims} dims ({'sparse' if ckpt.sparse else 'dense'}, "
         f"{nnz.mean():.1f} nnz/row) to {out}")
    return 0


def cmd_info(args) -> int:
    from .checkpoint import Checkpoint

    ckpt = Checkpoint.load(args.checkpoint)
    m = ckpt.manifest()
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    nnz = m["nnz_per_row"]
    rows = [
        ("kind", m["kind"]), ("storage", m["storage"]), ("items", m["n_items"]), ("dims", m["dims"]),
        ("nnz per row", f"{nnz['min']}..{nnz['max']} (mean {nnz['mean']:.1f})"),
        ("embedding bytes", f"{m['embedding_bytes']:,}"), ("fingerprint", m["fingerprint"]), ("created", m["created"]),
    ]
    if ckpt.metrics:
        rows.append(("metrics", _metrics_line(ckpt.metrics)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _parse_params(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ElsaIndexError(f"parameter {item!r} must look like NAME=VALUE")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def cmd_build(args) -> int:
    from .search import build_index

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ElsaIndexError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    t0 = time.perf_counter()
    if not args.quiet:
        _say(f"building {args.backend} index of {args.checkpoint} ...")
    index = build_index(args.checkpoint, args.backend, out, overwrite=args.overwrite, progress=not args.quiet,
                        **_parse_params(args.param))
    info = index.backend.info()
    _say(f"built {args.backend} index of {index.n_items} items in {time.perf_counter() - t0:.1f}s: "
         f"{info.get('bytes_on_disk', 0):,} bytes in {out}/backend")
    return 0


def _read_histories(path: str):
    users, hists = [], []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ElsaIndexError(f"{path} line {n} is not valid JSON: {exc}") from None
                if isinstance(obj, dict) and isinstance(obj.get("history"), list):
                    users.append(obj.get("user", n - 1)), hists.append([str(x) for x in obj["history"]])
                elif isinstance(obj, list):
                    users.append(n - 1), hists.append([str(x) for x in obj])
                else:
                    raise ElsaIndexError(f"{path} line {n}: expected a JSON list of item ids or an object with a "
                                         f"'history' list, got {type(obj).__name__}")
    except OSError as exc:
        raise ElsaIndexError(f"cannot read {path}: {exc}") from None
    return users, hists


def cmd_recommend(args) -> int:
    import warnings

    from .errors import UnknownItemsWarning
    from .search import open_index

    index = open_index(args.index)
    if args.search_param:
        index.set_search_params(**_parse_params(args.search_param))
    if args.history:
        users, hists = [None], [args.history]
    else:
        users, hists = _read_histories(args.input)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    n_unknown = 0
    try:
        for start in range(0, len(hists), max(1, args.batch_size)):
            batch = hists[start : start + args.batch_size]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UnknownItemsWarning)
                rec = index.recommend(batch, args.k, exclude_history=not args.include_history,
                                      allow=args.allow, deny=args.deny)
            n_unknown += sum(1 for w in caught if issubclass(w.category, UnknownItemsWarning))
            for r in range(len(batch)):
                keep = rec.indices[r] >= 0
                row = {"items": rec.ids[r][keep].tolist(), "scores": [round(float(x), 6) for x in rec.scores[r][keep]],
                       "fallback": bool(rec.fallback[r])}
                if users[start + r] is not None:
                    row = {"user": users[start + r], **row}
                out.write(json.dumps(row) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if n_unknown:
        print(f"warning: some history item ids are not in the catalogue and were ignored "
              f"({n_unknown} batch(es) affected)", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from .eval.config import load_config
    from .eval.harness import plan_runs, run_bench

    cfg = load_config(args.config, quick=args.quick)
    if args.report_only:
        from .eval.report import write_report

        path = write_report(Path(args.out), cfg, plan_runs(cfg))
        _say(f"wrote {path}")
        return 0

    def say(msg: str) -> None:
        if not args.quiet:
            from tqdm.auto import tqdm

            tqdm.write(msg)

    res = run_bench(cfg, args.out, force=args.force, progress=not args.quiet, prepare_only=args.prepare_only, say=say)
    if args.prepare_only:
        _say(f"prepared checkpoints and query sets for {res['prepared']} configuration(s) in {args.out}; "
             f"run again without --prepare-only to measure")
        return 0
    _say(f"{res['measured']} configuration(s) measured, {res['reused']} already measured, {res['skipped']} skipped")
    for s in res["skips"]:
        _say(f"  skipped {s['label']} ({s['scope']}): {s['reason']}")
    _say(f"report: {res['report']}")
    return 0


def cmd_demo(args) -> int:
    from .models.baselines import Popularity
    from .metrics import evaluate
    from .workflow import DEFAULT_METRICS, DataSpec, load_split, make_model, train_checkpoint

    out = Path(args.out)
    spec = DataSpec(source="synthetic", synthetic_users=args.users, synthetic_items=args.items,
                    n_heldout_users=max(1, min(1000, args.users // 5)))
    _say(f"generating synthetic interactions: {args.users} users x {args.items} items ...")
    split = load_split(spec)
    _say(f"training on {split.train.n_users} users ({split.train.nnz} interactions); "
         f"evaluating on {split.fold_in.shape[0]} held-out users")
    rows = []
    t0 = time.perf_counter()
    pop = Popularity().fit(split.train.matrix)
    res = evaluate(pop.score, split.fold_in, split.targets, ks=(), metrics=DEFAULT_METRICS)
    rows.append(("popularity", "-", time.perf_counter() - t0, 0, res))
    runs = [
        ("elsa-256", make_model("elsa", dims=256, epochs=20, lr=0.01, progress=not args.quiet)),
        ("elsa-32", make_model("elsa", dims=32, epochs=20, lr=0.01, progress=not args.quiet)),
        ("compressed-1024-nnz16", make_model("compressed", dims=1024, nnz=16, epochs=12, lr=0.01, warmup_epochs=0,
                                              finetune_epochs=9, prune_steps=50, progress=not args.quiet)),
    ]
    for name, model in runs:
        _say(f"training {name} ...")
        ckpt = train_checkpoint(model, split, data={"spec": spec.to_dict()},
                                validation_users=max(1, min(500, split.train.n_users // 10)))
        ckpt.save(out / name, overwrite=True)
        nnz = ckpt.nnz_per_row().mean()
        rows.append((name, f"{nnz:.0f}", ckpt.config["train_seconds"], ckpt.nbytes(), ckpt.metrics))
    _say("")
    header = ["model", "nnz/item", "train s", "embedding bytes", *DEFAULT_METRICS]
    table = [header] + [
        [n, nz, f"{s:.1f}", f"{b:,}", *(f"{m[k]:.4f}" for k in DEFAULT_METRICS)] for n, nz, s, b, m in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    _say(f"\ncheckpoints written under {out}/")

    # Serve the compressed checkpoint from the exact sparse index and show one user's rows.
    from .search import build_index

    index = build_index(out / "compressed-1024-nnz16", "sparse", out / "index-sparse", overwrite=True)
    row = split.fold_in[0]
    history = index.item_ids[row.indices].tolist()
    rec = index.recommend([history], k=5)
    _say(f"\nheld-out user {split.heldout_user_ids.ids[0]} ({len(history)} history items) -> "
         f"{', '.join(rec.ids[0])}")
    if args.no_bench:
        return 0
    # A small benchmark of every installed backend on synthetic data (eval/configs/quick.toml).
    from .eval.config import load_config
    from .eval.harness import run_bench

    config = Path(__file__).resolve().parent / "eval" / "configs" / "quick.toml"
    if not config.is_file():
        from . import eval as _eval

        config = Path(_eval.__file__).parent / "configs" / "quick.toml"
    _say(f"\nbenchmarking the backends ({config.name}) ...")
    res = run_bench(load_config(config), out / "bench", force=True, progress=not args.quiet, say=lambda m: None)
    for s in res["skips"]:
        _say(f"  skipped {s['label']} ({s['scope']}): {s['reason']}")
    _say(f"benchmark report: {res['report']}")
    return 0


def _open_source(path: str):
    """(index or None, checkpoint) of a sparse index or checkpoint directory."""
    from .segments import open_source

    return open_source(path)


def _table(rows: list[list[str]], right: set[int] = frozenset()) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, r in enumerate(rows):
        print("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def cmd_segments(args) -> int:
    import numpy as np

    from .data.tables import read_table
    from .homepage import item_metadata
    from .segments import SegmentError, default_segments_dirs, discover_segments

    index, ckpt = _open_source(args.source)
    out = Path(args.out) if args.out else default_segments_dirs(args.source)[0]
    if out.exists() and not args.overwrite:
        raise SegmentError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if args.show < 0:
        raise SegmentError(f"--show must be >= 0, got {args.show}")
    meta = titles = None
    if args.items:
        meta = read_table(args.items, string_columns=(args.id_col,), error=SegmentError)  # read once, used twice
    seg = discover_segments(ckpt, merge_to=args.merge_to, min_size=args.min_size, metadata=meta, id_col=args.id_col,
                            label_cols=args.label_col, n_central=args.central)
    if meta is not None and args.title_col in meta:
        titles = item_metadata(meta, ckpt.item_ids.ids, id_col=args.id_col, title_col=args.title_col, detail_cols=())
    seg.save(out, overwrite=args.overwrite)

    sizes = seg.sizes
    what = f"{index.backend.name} index" if index is not None else f"{ckpt.kind} checkpoint"
    _say(f"segments of {args.source} ({what}, {ckpt.n_items} items x {ckpt.dims} dims, "
         f"fingerprint {ckpt.fingerprint})")
    info = seg.info
    merged = []
    if args.min_size > 1:
        merged.append(f"min size {args.min_size}")
    if args.merge_to is not None:
        merged.append(f"merge to {args.merge_to}")
    summary = [
        ("dominant-dimension segments", f"{info['n_initial_segments']}"),
        ("after merging", f"{seg.n_segments} ({info['n_merges']} merges"
                          + (f"; {', '.join(merged)})" if merged else "; no merging asked)")),
        ("segmented items", f"{info['n_segmented_items']} of {seg.n_items} "
                            f"({seg.n_items - info['n_segmented_items']} with an empty row)"),
        ("segment sizes", f"min {sizes.min()}, median {float(np.median(sizes)):g}, mean {sizes.mean():.1f}, "
                          f"max {sizes.max()}"),
        ("labels", f"from {args.items} ({', '.join(args.label_col)}; {info['metadata_coverage']:.1%} of items "
                   "covered)" if meta is not None else "from dimensions (no --items)"),
        ("written to", str(out)),
    ]
    width = max(len(k) for k, _ in summary)
    for k, v in summary:
        print(f"{k:<{width}}  {v}")
    n_show = seg.n_segments if args.show == 0 else min(args.show, seg.n_segments)
    if n_show:
        print()
        rows = [["id", "size", "keys", "label", "central items"]]
        for d in seg.describe(n_central=3)[:n_show]:
            names = [titles[c].title if titles and c in titles and titles[c].title else c for c in d["central"]]
            main = d["keys"][0]
            keys = f"{main[0]}{'+' if main[1] > 0 else '-'}" + (f" +{len(d['keys']) - 1}" if len(d["keys"]) > 1 else "")
            cen = "; ".join(names)
            rows.append([str(d["segment"]), str(d["size"]), keys, d["label"], cen if len(cen) <= 70 else cen[:67] + "..."])
        _table(rows, right={0, 1})
        if n_show < seg.n_segments:
            print(f"... {seg.n_segments - n_show} more (--show 0 lists all)")
    return 0


def cmd_homepage(args) -> int:
    import warnings

    from .errors import SegmentFallbackWarning, UnknownItemsWarning
    from .homepage import make_homepage

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnknownItemsWarning)
        warnings.simplefilter("always", SegmentFallbackWarning)
        made = make_homepage(args.index, args.history, segments=args.segments, rows=args.rows, k=args.k,
                             metadata=args.items, id_col=args.id_col, title_col=args.title_col, out=args.out,
                             heading=args.title)
    for w in caught:
        if issubclass(w.category, (UnknownItemsWarning, SegmentFallbackWarning)):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    page = made.rows
    n_items = sum(len(r.items) for r in page)
    _say(f"wrote {args.out}: {len(page)} rows, {n_items} items (segments from {made.segments_dir})"
         + (" [popularity fallback]" if page and page[0].fallback else ""))
    for r in page:
        _say(f"  {r.label}: {len(r.items)} items")
    return 0


# ------------------------------------------------------------------ helpers


def _say(msg: str) -> None:
    print(msg, flush=True)


def _metrics_line(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ElsaIndexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
