"""The command line's arguments and help texts (``elsa-index --help``).

:func:`build_parser` defines every command's arguments; :mod:`elsa_index.cli`
runs the commands. ``build --help`` lists the backends registered in
:data:`elsa_index.indexers.BACKENDS`, with their parameters, computed only
when that help is shown (listing a backend imports its module).
"""

from __future__ import annotations

import argparse
import dataclasses

from tabulate import tabulate

from . import __version__
from .indexers import backend_names, get_backend
from .models import ELSA, CompressedELSA, EASE
from .models.schedules import SCHEDULES
from .workflow import DEFAULT_METRICS, SPLIT_METRICS

__all__ = ["build_parser", "backends_help", "columns"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be computed when help is shown (``epilog_fn``).

    ``build --help`` lists the registered backends, which imports their
    modules: only when a person asks for it, never on an ordinary run.
    """

    epilog_fn = None

    def format_help(self) -> str:
        if self.epilog_fn is not None:
            self.epilog = self.epilog_fn()
        return super().format_help()


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
    g.add_argument("--train-value", default="train", help="--split-col value of training rows (default: train)")
    g.add_argument("--test-value", default="test", help="--split-col value of test rows (default: test)")
    g.add_argument("--min-rating", type=float, default=None,
                   help="keep rows with rating >= this as positives (default: every row is a positive)")
    g.add_argument("--min-user-support", type=int, default=5, help="drop users with fewer positives (default: 5)")
    g.add_argument("--min-item-support", type=int, default=1, help="drop items with fewer positives (default: 1)")
    g.add_argument("--heldout-users", type=int, default=1000, help="users held out for evaluation (default: 1000)")
    g.add_argument("--split-seed", type=int, default=42, help="seed of the held-out user draw (default: 42)")


def _defaults(cls) -> dict:
    """A model class's default settings: dataclass fields, or the constructor's keyword defaults."""
    if dataclasses.is_dataclass(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}
    import inspect

    return {k: v.default for k, v in inspect.signature(cls).parameters.items()}


def _negatives(text: str):
    """``--negatives``: ``auto`` (the model's rule), ``full`` (every item, whatever the catalogue) or a count."""
    if text in ("auto", "full"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, full or a number of sampled items, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"the number of sampled items must be >= 0, got {value}")
    return value


def _count_or_fraction(text: str):
    """``--validation-users``: an integer count, or a fraction in (0, 1)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count of users or a fraction in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a fraction of users must be in (0, 1), got {text}")
    return value


def _add_output_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--out`` (required) and ``--overwrite`` of a command that writes a directory, e.g. "index directory"."""
    p.add_argument("--out", required=True, help=f"{what} to write")
    p.add_argument("--overwrite", action="store_true", help=f"replace an existing {what}")


def backends_help() -> str:
    """The registered backends with their build and search parameters, for ``build --help``."""
    accepts = {"any": "sparse or dense", "sparse": "sparse", "dense": "dense"}
    lines = ["backends (parameters: --param NAME=VALUE at build time, 'recommend --search-param' later):"]
    for name in backend_names():
        try:
            cls = get_backend(name)
        except Exception as exc:  # noqa: BLE001 - help must list every backend, importable or not
            lines.append(f"  {name}: cannot be loaded: {exc}")
            continue
        doc = (cls.__doc__ or "").strip().splitlines()
        kind = "exact" if cls.exact else "approximate"
        lines.append(f"  {name} ({kind}, {accepts.get(cls.accepts, cls.accepts)} embeddings)"
                     + (f": {doc[0].rstrip('.').replace('``', '')}" if doc else ""))
        missing = cls.missing_dependency()
        if missing:
            lines.append(f"      not available here: {missing}")
        rows = [[stage, f"{p}={default!r}", cls.param_docs.get(p, "")]
                for stage, params in (("build", cls.build_params), ("search", cls.search_params))
                for p, default in params.items()]
        lines += ["    " + line for line in columns(rows, header=False)] if rows else ["    (no parameters)"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="elsa-index",
        description="Train ELSA / Compressed ELSA item embeddings and serve recommendations from them.",
    )
    parser.add_argument("--version", action="version", version=f"elsa-index {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # train
    elsa, comp = _defaults(ELSA), _defaults(CompressedELSA)
    p = sub.add_parser("train", help="train a model and save a checkpoint",
                       description="Train dense ELSA or Compressed ELSA on an interaction log and save a checkpoint. "
                                   "Defaults are the model classes' own (elsa_index.models.ELSA, CompressedELSA); "
                                   "the checkpoint records every setting used and the data it was trained on.")
    _add_data_args(p, required=True)
    g = p.add_argument_group("model (defaults: the model classes')")
    g.add_argument("--model", choices=["elsa", "compressed"], default="compressed",
                   help="dense ELSA or Compressed ELSA (default: compressed)")
    g.add_argument("--dims", type=int, default=None,
                   help=f"embedding width; for compressed, the dense start width (default: {elsa['dims']} elsa, "
                        f"{comp['dims']} compressed)")
    g.add_argument("--nnz", type=int, default=None,
                   help=f"compressed: active dims per item at the end (default: {comp['nnz']})")
    g.add_argument("--start-nnz", type=int, default=None,
                   help="compressed: active dims per item when training starts; below --dims, a sparse start "
                        "(random columns, never the dense weight: less training memory) (default: --dims)")
    g.add_argument("--regrow", type=float, default=None,
                   help="compressed, sparse start: share of each row given to dead columns of largest gradient "
                        f"at each pruning event but the last (default: {comp['regrow']})")
    g.add_argument("--schedule", choices=list(SCHEDULES), default=None,
                   help=f"compressed: pruning schedule (default: {comp['schedule']})")
    g.add_argument("--restart", action="store_true", default=None,
                   help="compressed: reset surviving weights after each pruning event")
    g.add_argument("--prune-steps", type=int, default=None,
                   help=f"compressed: pruning events of linear/exponential (default: {comp['prune_steps']})")
    g.add_argument("--warmup-epochs", type=int, default=None,
                   help=f"compressed: dense epochs before pruning (default: {comp['warmup_epochs']})")
    g.add_argument("--finetune-epochs", type=int, default=None,
                   help=f"compressed: epochs at the target nnz (default: {comp['finetune_epochs']})")
    g.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs (default: {elsa['epochs']} elsa, {comp['epochs']} compressed)")
    g.add_argument("--batch-size", type=int, default=None, help=f"users per step (default: {elsa['batch_size']})")
    g.add_argument("--lr", type=float, default=None, help=f"Nadam learning rate (default: {elsa['lr']})")
    g.add_argument("--negatives", type=_negatives, default=None, metavar="auto|full|N",
                   help="outputs each batch scores: full (every item), N (batch positives plus N sampled items, "
                        f"with a sampling correction) or auto (full while batch x items fits, else sampled; "
                        f"default: {elsa['n_negatives']})")
    g.add_argument("--sampler", choices=("popularity", "uniform"), default=None,
                   help=f"how sampled negatives are drawn (default: {elsa['negatives']})")
    g.add_argument("--input-dropout", type=float, default=None, metavar="SHARE",
                   help="share of each user's history hidden from the input at each step, kept as targets "
                        f"(denoising; default: {elsa['input_dropout']})")
    g.add_argument("--device", default=None, help=f"auto, cpu, cuda, cuda:1, ... (default: {elsa['device']})")
    g.add_argument("--seed", type=int, default=None, help=f"model seed (default: {elsa['seed']})")
    g = p.add_argument_group("validation, recipe search and evaluation")
    g.add_argument("--validation-users", type=_count_or_fraction, default=0, metavar="N_OR_FRACTION",
                   help="choose the epochs on validation data drawn from the training data by the split's protocol: "
                        "N training users (or a fraction in (0, 1)) held out whole for held-out-user data; held-out "
                        "interactions of N training users for a fixed split (--split-col). The test users and test "
                        "interactions are never used (default: 0, no validation)")
    g.add_argument("--validation-holdout", type=float, default=0.2, metavar="FRACTION",
                   help="fixed split: share of each validation user's training interactions held out (default: 0.2)")
    g.add_argument("--validation-seed", type=int, default=7, help="seed of the validation draw (default: 7)")
    g.add_argument("--patience", type=int, default=3,
                   help="with validation: stop after this many epochs without improvement; 0 never stops early "
                        "(default: 3)")
    g.add_argument("--no-refit", action="store_true",
                   help="with validation: keep the early-stopped model instead of retraining on all training data "
                        "for the best epoch count")
    g.add_argument("--search-budget", type=float, default=None, metavar="SECONDS",
                   help="choose learning rate, width and epochs by a seeded search on validation data within this "
                        "time (uses --validation-users, default 0.1 of the training users; --epochs is then the most "
                        "epochs a trial runs; learning rate and width come from --search-lrs/--search-dims)")
    g.add_argument("--search-lrs", type=float, nargs="+", default=None, metavar="LR",
                   help="learning rates the search tries (default: 0.003 0.01 0.03)")
    g.add_argument("--search-dims", type=int, nargs="+", default=None, metavar="DIMS",
                   help="widths the search tries (default: the model's default width and half of it)")
    g.add_argument("--search-prune-epochs", type=int, nargs="+", default=None, metavar="N",
                   help="compressed model: pruning lengths in epochs the search tries (default: the model's own, "
                        "--epochs minus --warmup-epochs minus --finetune-epochs, and twice it)")
    g.add_argument("--search-input-dropouts", type=float, nargs="+", default=None, metavar="SHARE",
                   help="input dropout shares the search tries, e.g. 0 0.5 (default: not searched; the model's "
                        "--input-dropout)")
    g.add_argument("--search-start-nnz", type=int, nargs="+", default=None, metavar="N",
                   help="compressed model: live entries per row at the start the search tries; 0 (or a value >= the "
                        "width) is the dense start, e.g. 0 48 for --nnz 32 (default: not searched; the model's "
                        "--start-nnz)")
    g.add_argument("--no-search-refine", action="store_true",
                   help="skip the search's refinement stage (the winner again with input dropout 0.5 and, for the "
                        "compressed model, a sparse start of 2 x --nnz, and both; settings given explicitly are "
                        "never refined)")
    g.add_argument("--no-search-reference", action="store_true",
                   help="skip the search's reference: EASE (l2 100, 300 or 1000, the best on the validation data) on "
                        "the same validation data, reported beside the chosen model with a warning when the model is "
                        "under 0.98 of it (skipped anyway when EASE's system is over 20,000 rows)")
    g.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                   help=f"metrics reported on the held-out users (default: {' '.join(SPLIT_METRICS)} for a fixed "
                        f"split, {' '.join(DEFAULT_METRICS)} for held-out users); recall@k is normalised by "
                        "min(k, |targets|), hit_recall@k divides by |targets|")
    _add_output_args(p, "checkpoint directory")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation on held-out users")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    # evaluate
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on held-out users",
                       description="Metrics of a checkpoint's rankings for the held-out users. Without --data, the "
                                   "data settings recorded in the checkpoint are used.")
    p.add_argument("checkpoint", help="checkpoint directory")
    _add_data_args(p, required=False)
    p.add_argument("--metrics", nargs="+", default=None,
                   help="metric names, e.g. hit_recall@20 ndcg@20 recall@50 (default: those recorded in the "
                        f"checkpoint, else {' '.join(SPLIT_METRICS)} for a fixed split and {' '.join(DEFAULT_METRICS)} "
                        "for held-out users); recall@k is normalised by min(k, |targets|), hit_recall@k divides "
                        "by |targets|")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    # baseline
    ease = _defaults(EASE)
    p = sub.add_parser("baseline", help="fit and evaluate a reference model (EASE or popularity)",
                       description="Fit EASE (closed form, Steck 2019) or popularity on the training data and evaluate "
                                   "it on the held-out users, as 'train' evaluates a checkpoint. Nothing is written.")
    p.add_argument("model", choices=["ease", "popularity"], help="the reference model")
    _add_data_args(p, required=True)
    p.add_argument("--l2", type=float, default=ease["l2"], help=f"EASE: L2 regularisation (default: {ease['l2']:g})")
    p.add_argument("--solver", choices=["auto", "primal", "dual"], default=ease["solver"],
                   help="EASE: item x item (primal) or user x user (dual) system; auto takes the smaller "
                        f"(default: {ease['solver']})")
    p.add_argument("--dtype", choices=["auto", "float32", "float64"], default=ease["dtype"],
                   help="EASE: precision of the solve; auto takes float32 when the condition bound allows "
                        f"(default: {ease['dtype']})")
    p.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                   help="metric names (default: as for train)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    # import-npz
    p = sub.add_parser("import-npz", help="make a checkpoint from a scipy .npz sparse matrix (or a .npy array)",
                       description="Import item embeddings produced by another tool: a scipy.sparse.save_npz "
                                   "matrix (CSR/CSC/COO) or a dense .npy array, one row per item.")
    p.add_argument("embeddings", help=".npz sparse matrix or .npy array, shape (n_items, dims)")
    p.add_argument("--item-ids", default=None, help="text file with one item id per line (default: row numbers)")
    p.add_argument("--popularity", default=None,
                   help=".npy file of per-item counts (one non-negative integer per row): ranks the items for users "
                        "with no known history (default: none, and that fallback warns)")
    p.add_argument("--no-normalize", action="store_true",
                   help="keep the rows as given (default: scale every row to unit L2 norm, as ELSA scores and the "
                        "FAISS backends assume; the checkpoint records it)")
    _add_output_args(p, "checkpoint directory")

    # info
    p = sub.add_parser("info", help="describe a checkpoint", description="Print a checkpoint's manifest summary.")
    p.add_argument("checkpoint", help="checkpoint directory")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")

    # build
    p = sub.add_parser("build", help="build an index from a checkpoint",
                       description="Index a checkpoint's item embeddings with one backend and write a "
                                   "self-contained index directory (checkpoint copy + backend files).",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.epilog_fn = backends_help
    p.add_argument("checkpoint", help="checkpoint directory")
    p.add_argument("--backend", required=True, choices=backend_names(), metavar="BACKEND",
                   help=f"one of {', '.join(backend_names())} (see 'backends' below)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="backend build or search parameter, e.g. --param M=32 --param depth=200 (repeatable)")
    _add_output_args(p, "index directory")
    p.add_argument("--quiet", action="store_true", help="no progress output")

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
    return parser


def columns(rows: list[list[str]], right: set[int] = frozenset(), *, header: bool = True) -> list[str]:
    """Lines of ``rows`` (strings) as aligned columns; the first row is a header, underlined, unless ``header=False``."""
    align = ["right" if i in right else "left" for i in range(len(rows[0]))]
    # "plain" with the header as a row: columns exactly as wide as their widest cell
    # (tabulate pads header columns of its own formats by two characters).
    text = tabulate(rows, tablefmt="plain", colalign=align, disable_numparse=True)
    lines = [line.rstrip() for line in text.splitlines()]
    if header:
        lines.insert(1, "  ".join("-" * max(len(r[i]) for r in rows) for i in range(len(rows[0]))))
    return lines
