"""Command-line interface: ``elsa-index <command> ...`` (also ``python -m elsa_index``).

Each command parses its arguments (defined in :mod:`elsa_index._cli_parser`),
calls the library and prints the outcome; user mistakes are printed as one
``error: ...`` line with exit status 2.

Imports: the library's own modules are imported here at the top. Only the
benchmark harness (:mod:`elsa_index.eval`) is imported inside ``cmd_bench``:
it needs the optional ``bench`` extra (pydantic, matplotlib), which other
commands and ``--help`` must not require. Backends that need torch, faiss or
pyserini import them when used, so ``elsa-index --help`` loads none of them
(tested).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ._cli_parser import build_parser, columns
from ._atomic import atomic_file
from ._cli_inputs import (MAX_K, RESULT_SLOT_BYTES, check_new_output, check_output_file, check_recommend_args,
                          check_recommend_memory, read_histories)
from ._checks import check_float
from ._memory import check_fits, format_bytes
from .checkpoint import Checkpoint
from .importing import import_embeddings
from .data.tables import read_table
from .demo import bench_demo, run_demo
from .errors import CheckpointError, ElsaIndexError, SegmentFallbackWarning, UnknownItemsWarning
from .homepage import item_metadata, make_homepage
from .search import build_index, open_index
from .segments import SegmentError, default_segments_dirs, discover_segments, open_source
from .metrics import check_metrics, evaluate, metric_legend
from .models import EASE, Popularity
from .recipes import DEFAULT_LRS, fit_recipe, search_recipe
from .workflow import (DEFAULT_METRICS, DataSpec, default_metrics, evaluate_checkpoint, load_split, make_model,
                       train_checkpoint)

__all__ = ["main", "build_parser"]


def _given(value, default):
    """``value`` unless the option was left out (None): 0 or "" are values, never a cue for the default."""
    return default if value is None else value


def _data_spec(args):
    return DataSpec(
        source=args.data, user_col=args.user_col, item_col=args.item_col, rating_col=args.rating_col,
        timestamp_col=args.timestamp_col, split_col=args.split_col, train_value=args.train_value,
        test_value=args.test_value, min_rating=args.min_rating, min_user_support=args.min_user_support,
        min_item_support=args.min_item_support, n_heldout_users=args.heldout_users, seed=args.split_seed,
    )


# ------------------------------------------------------------------ commands

#: train options that set a model parameter of the same meaning (option attribute -> parameter name)
_MODEL_OPTIONS = {"dims": "dims", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "negatives": "n_negatives",
                  "sampler": "negatives", "input_dropout": "input_dropout", "device": "device", "seed": "seed"}
_COMPRESSED_OPTIONS = {"nnz": "nnz", "schedule": "schedule", "restart": "restart", "prune_steps": "prune_steps",
                       "start_nnz": "start_nnz", "regrow": "regrow",
                       "warmup_epochs": "warmup_epochs", "finetune_epochs": "finetune_epochs"}


def _model_params(args) -> dict:
    """The model settings given on the command line; everything left out is the model class's own default."""
    names = dict(_MODEL_OPTIONS)
    if args.model == "compressed":
        names.update(_COMPRESSED_OPTIONS)
    else:
        given = [f"--{o.replace('_', '-')}" for o in _COMPRESSED_OPTIONS if getattr(args, o) is not None]
        if given:
            raise ElsaIndexError(f"{', '.join(given)} only apply to --model compressed")
    params = {param: getattr(args, opt) for opt, param in names.items() if getattr(args, opt) is not None}
    if params.get("n_negatives") == "full":
        params["n_negatives"] = None  # the model's spelling of full outputs
    return params


def _check_train_args(args) -> None:
    if args.patience < 0:
        raise ElsaIndexError(f"--patience must be an integer >= 0 (0: never stop early), got {args.patience}")
    if args.validation_users and not isinstance(args.validation_users, float) and args.validation_users < 0:
        raise ElsaIndexError(f"--validation-users must be a count >= 0 or a fraction in (0, 1), "
                             f"got {args.validation_users}")
    if not 0.0 < args.validation_holdout < 1.0:
        raise ElsaIndexError(f"--validation-holdout must be in (0, 1), got {args.validation_holdout}")
    if args.search_budget is not None and not (args.search_budget > 0 and math.isfinite(args.search_budget)):
        raise ElsaIndexError(f"--search-budget must be a positive number of seconds, got {args.search_budget}")
    if args.search_budget is not None and (args.lr is not None or args.dims is not None):
        raise ElsaIndexError("with --search-budget the search chooses the learning rate and width: give the values "
                             "to try with --search-lrs/--search-dims instead of --lr/--dims")
    if args.search_budget is None and (args.search_lrs or args.search_dims or args.search_prune_epochs
                                       or args.search_input_dropouts or args.search_start_nnz
                                       or args.no_search_refine or args.no_search_reference):
        raise ElsaIndexError("--search-lrs/--search-dims/--search-prune-epochs/--search-input-dropouts/"
                             "--search-start-nnz/--no-search-refine/--no-search-reference need --search-budget "
                             "(the time the search may take)")
    for share in args.search_input_dropouts or ():
        if not 0.0 <= share < 1.0:
            raise ElsaIndexError(f"--search-input-dropouts must be shares in [0, 1), got {share:g}")
    if args.search_start_nnz and args.model != "compressed":
        raise ElsaIndexError(f"--search-start-nnz applies to --model compressed only, not to {args.model!r}")
    for n in args.search_start_nnz or ():
        if n < 0:
            raise ElsaIndexError(f"--search-start-nnz must be counts >= 0 (0: the dense start), got {n}")
    if args.no_refit and not args.validation_users and args.search_budget is None:
        raise ElsaIndexError("--no-refit needs --validation-users (it keeps the early-stopped model)")
    if args.metrics:
        _check_metric_cutoffs(args.metrics, batch=1)


def cmd_train(args) -> int:
    _check_train_args(args)
    spec = _data_spec(args)
    out = Path(args.out)
    check_new_output(out, args.overwrite, "checkpoint", inputs=[args.data])
    params = _model_params(args)
    search = args.search_budget is not None
    if search:
        make_model(args.model, **params, progress=False)  # refuse bad settings before the data is loaded
    else:
        model = make_model(args.model, **params, progress=not args.quiet)
    _say(f"loading {spec.source} ...")
    split = load_split(spec)
    what = (f"{split.fold_in.shape[0]} test users (fixed split)" if split.protocol == "interactions"
            else f"{split.fold_in.shape[0]} held-out users")
    _say(f"training {args.model} on {split.train.n_users} users x {split.train.n_items} items "
         f"({split.train.nnz} interactions); {what}")
    patience = args.patience or None
    if search:
        recipe = search_recipe(
            args.model, split, base=params, lrs=args.search_lrs or DEFAULT_LRS, widths=args.search_dims,
            prune_epochs=args.search_prune_epochs, input_dropouts=args.search_input_dropouts,
            start_nnzs=None if args.search_start_nnz is None else [n or None for n in args.search_start_nnz],
            refine=not args.no_search_refine, reference=not args.no_search_reference,
            max_epochs=params.get("epochs"), patience=patience or 10**6, budget_seconds=args.search_budget,
            validation_users=args.validation_users or 0.1, holdout_fraction=args.validation_holdout,
            seed=params.get("seed", 0))
        def cand(c):
            return (f"lr {c['lr']:g} dims {c['dims']}"
                    + (f" pruning {c['prune_epochs']} epochs" if "prune_epochs" in c else "")
                    + (f" input dropout {c['input_dropout']:g}" if "input_dropout" in c else "")
                    + ((f" sparse start {c['start_nnz']}" if c["start_nnz"] else " dense start")
                       if "start_nnz" in c else ""))

        for t in recipe["trials"]:
            _say(f"  trial {cand(t)}: validation {recipe['metric']} {t['score']:.4f} "
                 f"at epoch {t['best_epoch']} ({t['seconds']:.1f}s)")
        if recipe["untried"]:
            _say(f"  not tried within {args.search_budget:g}s: " + ", ".join(cand(c) for c in recipe["untried"]))
        chosen = recipe["trials"][recipe["chosen"]]
        _say(f"chosen: {cand(chosen)}, {recipe['best_epoch']} epochs")
        ref = recipe["reference"]
        if ref and "skipped" in ref:
            _say(f"  reference EASE skipped: {ref['skipped']}")
        elif ref:
            share = "" if ref["ratio"] is None else f"; the chosen model scores {ref['ratio']:.3f} of it"
            _say(f"  reference: EASE l2={ref['l2']:g}, validation {recipe['metric']} {ref['score']:.4f}{share}")
        ckpt = fit_recipe(recipe, split, metrics=args.metrics, evaluate_heldout=not args.no_eval,
                          progress=not args.quiet)
    else:
        ckpt = train_checkpoint(model, split, validation_users=args.validation_users, patience=patience,
                                validation_seed=args.validation_seed, refit=not args.no_refit, metrics=args.metrics,
                                evaluate_heldout=not args.no_eval, validation_holdout=args.validation_holdout)
    ckpt.save(out, overwrite=args.overwrite)
    _say(f"saved {ckpt!r} to {out} (training {ckpt.config['train_seconds']:.1f}s)")
    if ckpt.metrics:
        _say(_metrics_line(ckpt.metrics))
    return 0


def cmd_evaluate(args) -> int:
    ckpt = Checkpoint.load(args.checkpoint)
    if args.data is not None:
        spec = _data_spec(args)
    elif "spec" in ckpt.data:
        spec = DataSpec.from_dict(ckpt.data["spec"])
    else:
        raise ElsaIndexError(f"{args.checkpoint} records no training data; pass --data to name the interactions")
    names = args.metrics
    if names is None and isinstance(ckpt.config.get("metrics"), list) and ckpt.config["metrics"]:
        names = [str(m) for m in ckpt.config["metrics"]]
    if names is not None:
        _check_metric_cutoffs(names, batch=1)  # limits first, before the data is loaded
    split = load_split(spec)
    names = names if names is not None else list(default_metrics(split))
    _check_metric_cutoffs(names, batch=max(1, min(1000, split.fold_in.shape[0])))
    metrics = evaluate_checkpoint(ckpt, split, metrics=names)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        _say(f"{split.fold_in.shape[0]} {'test' if split.protocol == 'interactions' else 'held-out'} users of "
             f"{spec.source}")
        _say(_metrics_line(metrics))
    return 0


def cmd_baseline(args) -> int:
    if args.metrics:
        _check_metric_cutoffs(args.metrics, batch=1)
    spec = _data_spec(args)
    model = EASE(l2=args.l2, solver=args.solver, dtype=args.dtype) if args.model == "ease" else Popularity()
    if args.model == "ease":
        check_float(args.l2, "l2", 0.0)  # before the data is loaded
    if not args.json:
        _say(f"loading {spec.source} ...")
    split = load_split(spec)
    names = args.metrics or list(default_metrics(split))
    _check_metric_cutoffs(names, batch=max(1, min(1000, split.fold_in.shape[0])))
    X = split.train.matrix
    if args.model == "ease":
        plan = model.plan(X)  # checks l2 and the memory before anything large is made
        if not args.json:
            _say(f"EASE (l2={args.l2:g}) on {X.shape[0]} users x {X.shape[1]} items: {plan['solver']} system "
                 f"{plan['size']:,} x {plan['size']:,} in {plan['dtype']}, about {format_bytes(plan['bytes'])}")
    t0 = time.perf_counter()
    model.fit(X)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = evaluate(model.score, split.fold_in, split.targets, ks=(), metrics=names)
    eval_s = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in res.items()}
    if args.json:
        out = {"model": args.model, "fit_seconds": round(fit_s, 3), "eval_seconds": round(eval_s, 3),
               "users_evaluated": int(split.fold_in.shape[0]), "metrics": metrics, "data": spec.to_dict()}
        if args.model == "ease":
            out.update(params=model.get_params(), solver=model.solver_, dtype=model.dtype_)
        print(json.dumps(out, indent=2))
        return 0
    _say(f"fitted in {fit_s:.1f}s; evaluated {split.fold_in.shape[0]} users in {eval_s:.1f}s")
    _say(_metrics_line(metrics))
    return 0


def _check_metric_cutoffs(names: list[str], batch: int = 1000) -> None:
    """Refuse unknown metric names and cut-offs (``recall@K``) the ranking buffers cannot hold."""
    for name in names:
        _, sep, cut = name.partition("@")
        if sep and cut.isdigit() and int(cut) > MAX_K:
            raise ElsaIndexError(f"the cut-off of {name!r} must be at most {MAX_K:,}, got {int(cut)}")
    check_metrics(names)
    for name in names:
        _, sep, cut = name.partition("@")
        if sep and cut.isdigit():
            k = int(cut)
            if k > MAX_K:
                raise ElsaIndexError(f"the cut-off of {name!r} must be at most {MAX_K:,}, got {k}")
            check_fits(float(batch) * k * 16, f"the metric {name!r} ({batch} users per batch x {k} ranked items)",
                       hint="lower the cut-off")


def cmd_import(args) -> int:
    out = Path(args.out)
    check_new_output(out, args.overwrite, "checkpoint", inputs=[args.embeddings, args.item_ids, args.popularity])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        ckpt = import_embeddings(args.embeddings, args.item_ids, popularity=args.popularity,
                                 normalize=not args.no_normalize)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    ckpt.save(out, overwrite=args.overwrite)
    nnz = ckpt.nnz_per_row()
    norms = ckpt.data.get("row_norms")
    scaled = f"; rows scaled to unit length (norms were {norms['min']:.4g}-{norms['max']:.4g})" if (
        ckpt.data.get("normalized") and norms and not 0.999 <= norms["min"] <= norms["max"] <= 1.001) else ""
    _say(f"imported {ckpt.n_items} items x {ckpt.dims} dims ({'sparse' if ckpt.sparse else 'dense'}, "
         f"{nnz.mean():.1f} nnz/row) to {out}{scaled}")
    return 0


def cmd_info(args) -> int:
    ckpt = Checkpoint.load(args.checkpoint)
    metrics = _metrics_line(ckpt.metrics, f"{args.checkpoint}/manifest.json", legend=False) if ckpt.metrics else ""
    m = ckpt.manifest()
    if args.json:
        try:
            text = json.dumps(m, indent=2, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{args.checkpoint}/manifest.json holds values that are not plain JSON ({exc})") from None
        print(text)
        return 0
    nnz = m["nnz_per_row"]
    rows = [
        ("kind", m["kind"]), ("storage", m["storage"]), ("items", m["n_items"]), ("dims", m["dims"]),
        ("nnz per row", f"{nnz['min']}..{nnz['max']} (mean {nnz['mean']:.1f})"),
        ("embedding bytes", f"{m['embedding_bytes']:,}"), ("fingerprint", m["fingerprint"]), ("created", m["created"]),
    ]
    if metrics:
        rows.append(("metrics", metrics))
    _table([[k, str(v)] for k, v in rows], header=False)
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
    out = Path(args.out)
    check_new_output(out, args.overwrite, "index", inputs=[args.checkpoint])
    t0 = time.perf_counter()
    if not args.quiet:
        _say(f"building {args.backend} index of {args.checkpoint} ...")
    index = build_index(args.checkpoint, args.backend, out, overwrite=args.overwrite, progress=not args.quiet,
                        **_parse_params(args.param))
    info = index.backend.info()
    _say(f"built {args.backend} index of {index.n_items} items in {time.perf_counter() - t0:.1f}s: "
         f"{info.get('bytes_on_disk', 0):,} bytes in {out}/backend")
    return 0


def cmd_recommend(args) -> int:
    check_recommend_args(args)
    if args.output:
        check_output_file(args.output, [args.index, args.input])
    index = open_index(args.index)
    if args.search_param:
        index.set_search_params(**_parse_params(args.search_param))
    if args.history:
        users, hists = [None], [args.history]
    else:
        users, hists = read_histories(args.input)
    check_recommend_memory(args.k, len(hists), args.batch_size, index.n_items)
    n_unknown = 0
    # The file is replaced only when every batch was answered: an error leaves an existing one untouched.
    with atomic_file(args.output) if args.output else contextlib.nullcontext(sys.stdout) as out:
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
    if n_unknown:
        print(f"warning: some history item ids are not in the catalogue and were ignored "
              f"({n_unknown} batch(es) affected)", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    # Needs the optional ``bench`` extra (pydantic, matplotlib): see the module docstring.
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
    def show_models(models) -> None:
        _say("")
        rows = [["model", "nnz/item", "train s", "embedding bytes", *DEFAULT_METRICS]]
        rows += [[m.name, "-" if m.nnz_per_item is None else f"{m.nnz_per_item:.0f}", f"{m.train_seconds:.1f}",
                  f"{m.embedding_bytes:,}", *(f"{m.metrics[k]:.4f}" for k in DEFAULT_METRICS)] for m in models]
        _table(rows, right=set(range(1, len(rows[0]))))
        _say(f"\ncheckpoints written under {args.out}/")

    res = run_demo(args.out, users=args.users, items=args.items, bench=False, progress=not args.quiet, say=_say,
                   on_models=show_models)
    _say(f"\nheld-out user {res.user} ({len(res.history)} history items) -> {', '.join(res.recommended)}")
    if args.no_bench:
        return 0
    _say("\nbenchmarking the backends (quick.toml) ...")
    bench = bench_demo(args.out, progress=not args.quiet)
    for s in bench["skips"]:
        _say(f"  skipped {s['label']} ({s['scope']}): {s['reason']}")
    _say(f"benchmark report: {bench['report']}")
    return 0


def _table(rows: list[list[str]], right: set[int] = frozenset(), *, header: bool = True) -> None:
    """Print ``rows`` of strings as aligned columns (:func:`columns`): the one table printer of the CLI."""
    print("\n".join(columns(rows, right, header=header)))


def cmd_segments(args) -> int:
    index, ckpt = open_source(args.source)
    out = Path(args.out) if args.out else default_segments_dirs(args.source)[0]
    check_new_output(out, args.overwrite, "segments", inputs=[args.source], inside_inputs=True, error=SegmentError)
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
    if not 1 <= args.k <= MAX_K:
        raise ElsaIndexError(f"--k must be a positive integer (items per row) at most {MAX_K:,}, got {args.k}")
    if args.rows < 0:
        raise ElsaIndexError(f"--rows must be an integer >= 0 (segment rows), got {args.rows}")
    check_fits(float(args.k) * min(args.rows + 1, 10_000) * RESULT_SLOT_BYTES,
               f"--k {args.k} ({min(args.rows + 1, 10_000)} rows x k items)", hint="lower --k")
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


def _metrics_line(metrics, where: str = "the checkpoint", *, legend: bool = True) -> str:
    """``recall@20 0.1234  ...``; metrics that are not a mapping of names to numbers are an error, not a crash."""
    ok = isinstance(metrics, dict) and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
        for v in metrics.values())
    if not ok:
        raise CheckpointError(f"{where} records metrics that are not a mapping of names to numbers "
                              f"({json.dumps(metrics, default=str)[:120]}); expected e.g. {{\"recall@20\": 0.31}}")
    line = "  ".join(f"{k} {float(v):.4f}" for k, v in metrics.items())
    text = metric_legend(metrics) if legend else ""
    return f"{line}\n({text})" if text else line


COMMANDS = {
    "train": cmd_train, "evaluate": cmd_evaluate, "import-npz": cmd_import, "info": cmd_info, "build": cmd_build,
    "recommend": cmd_recommend, "segments": cmd_segments, "homepage": cmd_homepage, "demo": cmd_demo,
    "bench": cmd_bench, "baseline": cmd_baseline,
}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _broken_pipe()
    except ElsaIndexError as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        return _error(f"out of memory in '{args.command}': the request needs more memory than is available; "
                      "lower the sizes asked for (--k, --dims, --batch-size, build parameters) or use a larger machine",
                      args.verbose)
    except RecursionError:
        return _error(f"an input of '{args.command}' is nested too deeply to be read", args.verbose)
    except OSError as exc:
        return _error(_os_error_message(exc), args.verbose)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no raw traceback for any input
        return _error(f"unexpected {type(exc).__name__} in '{args.command}': {exc} (a malformed input file, or a "
                      "bug in elsa-index; rerun with -v for the traceback)", args.verbose)


def _error(message: str, show_traceback: bool = False) -> int:
    if show_traceback:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return 2


def _os_error_message(exc: OSError) -> str:
    """One line naming the path and the cause of an operating-system error (full disk, permissions, ...)."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    why = exc.strerror or str(exc) or type(exc).__name__
    hint = {
        errno.ENOSPC: "free some space or write elsewhere",
        errno.EDQUOT: "free some space or write elsewhere",
        errno.EACCES: "check the permissions of the folder, or write elsewhere",
        errno.EPERM: "check the permissions of the folder, or write elsewhere",
        errno.EROFS: "the file system is read-only; write elsewhere",
    }.get(exc.errno)
    text = f"{where}: {why}" if where else why
    return text + (f" ({hint})" if hint else "")


def _broken_pipe() -> int:
    """The reader of stdout went away (``| head``): stop quietly, as Unix tools do (status 128 + SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    except (OSError, ValueError, AttributeError):
        pass
    return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
