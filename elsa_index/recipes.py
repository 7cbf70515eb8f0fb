"""Training recipes chosen on data: a small, seeded search within a time budget.

A recipe is the learning rate, the width (``dims``; for Compressed ELSA the
dense start width), for Compressed ELSA the number of pruning epochs and the
start, the input dropout, and the number of epochs of a model. Instead of a table of
fixed numbers, :func:`search_recipe` tries a few candidates on validation
data drawn from the training data by the test protocol of the split
(:func:`elsa_index.workflow.validation_split`: held-out training users for
strong generalisation, held-out interactions of training users for a fixed
split; the test users and test interactions are never read), with early
stopping choosing the epochs, then tries the winner again with input
dropout and (Compressed ELSA) a sparse start (the refinement stage; see
:func:`search_recipe`). :func:`fit_recipe` then trains the chosen
candidate on all training data for its best epoch count and records the
recipe, with every trial, in the checkpoint's ``config["recipe"]``.

The search is deterministic for a given seed and data: the candidates are
tried in a seeded order (the model class's own defaults first) and each
trial is seeded. The time budget only decides how many candidates are tried:
a candidate is started only when the mean time of the trials so far still
fits in what is left, so the same budget on a slower machine may try fewer
(the recipe lists what was tried and what was not).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import fields
from typing import Any, Sequence

import numpy as np

from ._checks import check_float, check_int
from ._memory import check_fits
from .checkpoint import Checkpoint
from .data import Split
from .errors import ElsaIndexError, TrainingError
from .metrics import evaluate
from .models.baselines import EASE
from .workflow import default_metrics, make_model, train_checkpoint, validation_split, with_epochs

logger = logging.getLogger(__name__)

__all__ = ["search_recipe", "fit_recipe", "class_defaults", "DEFAULT_LRS"]

#: learning rates tried by default, around the models' default of 0.01
DEFAULT_LRS = (0.003, 0.01, 0.03)
#: the input dropout share the refinement stage tries (see :func:`search_recipe`)
REFINE_DROPOUT = 0.5
#: EASE's l2 values tried for the search's reference score; the best on the validation data is the reference
REFERENCE_L2S = (100.0, 300.0, 1000.0)
#: the largest EASE system (rows of the item x item or user x user matrix) the reference solves: near it each
#: l2 takes minutes on two cores (Book-Crossing's 19.6k-user dual: 160 s, scoring included); beyond it the
#: reference is skipped, with the reason recorded
REFERENCE_MAX_SIZE = 20_000
#: a chosen model under this share of the reference's validation score is reported with a warning
REFERENCE_RATIO = 0.98


def class_defaults(kind: str) -> dict[str, Any]:
    """The default settings of a model kind, read from its class (the one source of defaults)."""
    cls = type(make_model(kind, progress=False))
    return {f.name: f.default for f in fields(cls) if f.metadata.get("param", True)}


def search_recipe(kind: str, split: Split, *, base: dict | None = None, lrs: Sequence[float] = DEFAULT_LRS,
                  widths: Sequence[int] | None = None, prune_epochs: Sequence[int] | None = None,
                  input_dropouts: Sequence[float] | None = None, start_nnzs: Sequence[int | None] | None = None,
                  refine: bool = True, reference: bool = True, max_epochs: int | None = None, patience: int = 3,
                  budget_seconds: float = 600.0, validation_users: int | float = 0.1,
                  holdout_fraction: float = 0.2, metric: str | None = None, seed: int = 0) -> dict:
    """Choose learning rate, width and epochs on validation data within a time budget.

    Parameters
    ----------
    kind : ``"elsa"`` or ``"compressed"`` (as :func:`~elsa_index.workflow.make_model`).
    split : the evaluation split; only ``split.train`` is read.
    base : other model settings, fixed for every candidate (e.g. ``nnz``).
    lrs : learning rates to try.
    widths : widths to try (default: the class's default width and half of it).
    prune_epochs : Compressed ELSA only: pruning lengths to try, in epochs
        (``finetune_epochs`` is set so that pruning ends after them). Default:
        the model's own length (``epochs - warmup_epochs - finetune_epochs``
        of ``base`` or the class, 2 by default) and twice it, when that leaves
        an epoch of fine-tuning. The best length depends on the data: on
        Amazon-Book 1024 -> 32 values, 7 epochs at lr 0.03 beat the default
        2 at 0.01 on validation (test hit_recall@20 0.1694 vs 0.1661), while
        ML-1M chose 2 for 8-128 values but 16.
    input_dropouts : input dropout shares to try (default None: the model's
        own, ``base["input_dropout"]`` or the class default 0, is not
        searched). ``[0, 0.5]`` also tries hiding half of each history from
        the input (on ML-1M it added 0.5-3.5% Recall@20 to wide dense models
        and to Compressed ELSA 32; on Book-Crossing it did not help).
    start_nnzs : Compressed ELSA only: live entries per row at the start to
        try (``None``, or a value >= the candidate's width: the dense start;
        default None: the model's own start is not searched). A sparse start
        of 1.5-2 x ``nnz`` with regrowth and input dropout 0.5 kept 0.99 of
        the best dense ELSA at 32 values on ML-1M (seed mean), against 0.97
        for the dense start, in a fraction of the memory and time; on
        Amazon-Book the dense start won.
    refine : after the main search (learning rate x width x pruning length
        x whatever ``input_dropouts``/``start_nnzs`` give), try the winner
        again with input dropout ``REFINE_DROPOUT`` (0.5), and for Compressed
        ELSA with a sparse start of 2 x ``nnz`` (regrowth as the model's),
        and with both: each setting only where it is neither searched
        explicitly nor set in ``base``. These are the settings that lifted
        dense ELSA above EASE on ML-1M and Last.fm and kept Compressed ELSA
        at 0.97-1.0 of dense at 16-128 values on ML-1M (2 x nnz won on
        validation over 1.5 x at 4 of 5 nnz); the validation data decides
        whether they stay (the sparse start lost on Amazon-Book and Last.fm,
        input dropout on Book-Crossing).
        The refinement trials obey the same budget.
    reference : also fit EASE (l2 from ``REFERENCE_L2S``, the best on the
        validation data) on the same validation data and record its score and
        the chosen model's share of it (``recipe["reference"]``), with a
        logged warning under ``REFERENCE_RATIO`` (0.98): how much an item
        embedding gives up against a full-rank item-item model on this data
        (dense ELSA kept 1.01-1.04x EASE on ML-1M, Amazon-Book and Last.fm,
        0.98 on ML-100k, 0.79 on Book-Crossing). It is skipped, with the
        reason, when EASE's system is larger than ``REFERENCE_MAX_SIZE`` or
        does not fit in memory. Not part of the time budget.
    max_epochs : epochs of each trial before early stopping (default: the
        class's default ``epochs``, or ``base["epochs"]``).
    patience : epochs without improvement before a trial stops.
    budget_seconds : time for the whole search; see the module notes.
    validation_users : count, or fraction of the training users (see
        :func:`~elsa_index.workflow.validation_split`).
    holdout_fraction : a fixed split's share of held-out interactions per
        validation user.
    metric : what is maximised on the validation data (default: the first
        of :func:`~elsa_index.workflow.default_metrics` of the split:
        ``hit_recall@20`` for a fixed split, ``recall@20`` for held-out users).
    seed : seeds the validation draw, the candidates' order and every trial.

    Returns
    -------
    dict
        The recipe: ``params`` (the chosen model settings, epochs set to the
        best epoch count), ``best_epoch``, ``metric``, ``score``, ``trials``
        (every candidate tried, in order, with its validation score, best
        epoch and seconds), ``untried`` (candidates the budget left out),
        ``validation`` (protocol, users, seed), ``refined`` (the settings
        the refinement tried), ``reference`` (``model``, ``l2``, ``score``,
        ``scores`` per l2, ``ratio``, ``seconds``; or ``skipped``, the
        reason; None with ``reference=False``), ``budget_seconds``,
        ``seconds``.
    """
    check_float(budget_seconds, "budget_seconds", 0.0, low_open=True, error=TrainingError)
    check_int(patience, "patience", 1, error=TrainingError)
    base = dict(base or {})
    for reserved in ("lr", "dims", "seed", "progress"):
        base.pop(reserved, None)
    defaults = class_defaults(kind)
    own_epochs = int(base.get("epochs", defaults["epochs"]))  # the model as configured, for its pruning length
    epochs = max_epochs if max_epochs is not None else base.pop("epochs", defaults["epochs"])
    base.pop("epochs", None)
    lrs = [float(v) for v in lrs]
    if widths is None:
        widths = sorted({max(1, defaults["dims"] // 2), defaults["dims"]})
    widths = [int(w) for w in widths]
    if not lrs or not widths:
        raise TrainingError("the recipe search needs at least one learning rate and one width")
    lengths = _prune_lengths(kind, base, defaults, own_epochs, epochs, prune_epochs)
    candidates = [{"lr": lr, "dims": w} for w, lr in itertools.product(widths, lrs)]
    if lengths:
        candidates = [{**c, "prune_epochs": n} for n in lengths for c in candidates]
    if input_dropouts is not None:
        shares = list(dict.fromkeys(float(check_float(p, "input_dropouts", 0.0, 1.0, high_open=True,
                                                      error=TrainingError)) for p in input_dropouts))
        if not shares:
            raise TrainingError("input_dropouts is empty; give at least one share in [0, 1) or leave it out")
        own_dropout = float(base.pop("input_dropout", defaults["input_dropout"]))
        candidates = [{**c, "input_dropout": p} for p in shares for c in candidates]
        defaults = {**defaults, "input_dropout": own_dropout}
    if start_nnzs is not None:
        if "start_nnz" not in defaults:
            raise TrainingError(f"start_nnzs applies to Compressed ELSA only, not to {kind!r}")
        starts = list(dict.fromkeys(None if n is None else check_int(n, "start_nnzs", 1, error=TrainingError)
                                    for n in start_nnzs))
        if not starts:
            raise TrainingError("start_nnzs is empty; give at least one start (None: the dense start) or leave it out")
        own_start = base.pop("start_nnz", defaults["start_nnz"])
        own_start = None if own_start is None or own_start >= defaults["dims"] else own_start
        # A start at or above a candidate's width is its dense start (one trial, not one per value).
        candidates = list({_key(c): c for c in ({**c, "start_nnz": n if n is not None and n < c["dims"] else None}
                                                for n in starts for c in candidates)}.values())
        defaults = {**defaults, "start_nnz": own_start}
    refinements = _refinements(base, defaults, input_dropouts, start_nnzs) if refine else {}
    for c in candidates:  # refuse a bad candidate now, not after an hour of search
        for r in [c, *_refined(c, refinements)]:
            make_model(kind, **_trial_params(base, r, epochs), seed=seed, progress=False)
    candidates = _ordered(candidates, {**defaults, "prune_epochs": lengths[0] if lengths else None}, seed)
    inner = validation_split(split, validation_users, holdout_fraction=holdout_fraction, seed=seed)
    metric = metric or default_metrics(split)[0]
    logger.info("recipe search: %d candidates, %s budget %.0fs, validation %s (%d users)", len(candidates), kind,
                budget_seconds, inner.protocol, inner.fold_in.shape[0])

    t_start = time.perf_counter()
    trials, untried = [], []

    def run(cands: list[dict]) -> None:
        for i, cand in enumerate(cands):
            elapsed = time.perf_counter() - t_start
            if trials and elapsed + elapsed / len(trials) > budget_seconds:
                untried.extend(cands[i:])
                logger.info("recipe search: budget reached after %d trials (%.0fs)", len(trials), elapsed)
                return
            t0 = time.perf_counter()
            model = make_model(kind, **_trial_params(base, cand, epochs), seed=seed, progress=False)
            model.fit(inner.train.matrix, validation=(inner.fold_in, inner.targets), patience=patience)
            score = evaluate(model.score, inner.fold_in, inner.targets, ks=(), metrics=(metric,))[metric]
            best = model.best_epoch_ if model.best_epoch_ is not None else len(model.history_)
            trials.append({**cand, "score": float(score), "best_epoch": int(best),
                           "seconds": round(time.perf_counter() - t0, 3), "_params": model.get_params()})
            logger.info("recipe trial %s: %s %.4f at epoch %d", cand, metric, score, best)

    # The best validation score; ties go to the earlier trial (the class defaults come first).
    def winner() -> int:
        return max(range(len(trials)), key=lambda j: (trials[j]["score"], -j))

    run(candidates)
    refined = {}
    if refinements:  # the winner again with the refinement settings (in a fixed order)
        extra = _refined({k: v for k, v in trials[winner()].items() if k in candidates[0]}, refinements)
        refined = {k: v[1] for k, v in refinements.items() if any(c[k] == v[1] for c in extra)}
        run(extra)
    chosen = winner()
    ref = _reference(inner, metric, trials[chosen]["score"]) if reference else None
    params = dict(trials[chosen]["_params"])
    params.update(_epoch_settings(kind, params, trials[chosen]["best_epoch"]))
    for t in trials:
        t.pop("_params")
    return {
        "kind": kind, "params": params, "best_epoch": trials[chosen]["best_epoch"], "metric": metric,
        "score": trials[chosen]["score"], "trials": trials, "untried": untried, "chosen": chosen,
        "validation": {"protocol": inner.protocol, "users": int(inner.fold_in.shape[0]), "seed": seed,
                       "holdout_fraction": holdout_fraction if inner.protocol == "interactions" else None,
                       "patience": patience, "max_epochs": int(epochs)},
        "refined": refined, "reference": ref,
        "budget_seconds": float(budget_seconds), "seconds": round(time.perf_counter() - t_start, 3),
    }


def _reference(inner: Split, metric: str, score: float) -> dict:
    """EASE's best validation score over ``REFERENCE_L2S`` on the search's validation data, and ``score``'s share."""
    X = inner.train.matrix
    plans = {l2: EASE(l2=l2).plan(X) for l2 in REFERENCE_L2S}
    size = max(p["size"] for p in plans.values())
    need = max(p["bytes"] for p in plans.values())
    if size > REFERENCE_MAX_SIZE:
        return {"model": "ease", "skipped": f"EASE's system of {size:,} x {size:,} is larger than "
                                            f"{REFERENCE_MAX_SIZE:,} (run `elsa-index baseline ease` for it)"}
    try:
        check_fits(need, f"EASE's system of {size:,} x {size:,}")
    except ElsaIndexError as exc:
        return {"model": "ease", "skipped": str(exc)}
    t0 = time.perf_counter()
    scores = {}
    for l2 in REFERENCE_L2S:
        model = EASE(l2=l2).fit(X)
        scores[l2] = float(evaluate(model.score, inner.fold_in, inner.targets, ks=(), metrics=(metric,))[metric])
        del model
    l2 = max(scores, key=lambda v: (scores[v], -v))  # ties to the smaller l2
    ratio = score / scores[l2] if scores[l2] > 0 else None
    if ratio is not None and ratio < REFERENCE_RATIO:
        logger.warning("recipe search: the chosen model scores %.3f of EASE (l2=%g) on the validation data "
                       "(%s %.4f against %.4f): on this data an item embedding of these widths gives up accuracy "
                       "against a full-rank item-item model (EASE); wider widths (or more values per item) may "
                       "narrow it", ratio, l2, metric, score, scores[l2])
    return {"model": "ease", "l2": l2, "score": scores[l2], "scores": {str(k): v for k, v in scores.items()},
            "ratio": ratio, "seconds": round(time.perf_counter() - t0, 3)}


def fit_recipe(recipe: dict, split: Split, *, metrics: Sequence[str] | None = None, evaluate_heldout: bool = True,
               progress: bool = False, data: dict | None = None) -> Checkpoint:
    """Train the recipe's model on all training data; its checkpoint records the recipe (``config["recipe"]``)."""
    try:
        model = make_model(recipe["kind"], **recipe["params"], progress=progress)
    except (KeyError, TypeError) as exc:
        raise TrainingError(f"not a recipe from search_recipe: {exc}") from None
    ckpt = train_checkpoint(model, split, data=data, metrics=metrics, evaluate_heldout=evaluate_heldout)
    ckpt.config["recipe"] = _json_safe(recipe)
    return ckpt


def _prune_lengths(kind: str, base: dict, defaults: dict, own_epochs: int, epochs: int, given) -> list[int]:
    """The pruning lengths a Compressed ELSA search tries (the model's own first); [] for other models."""
    if "finetune_epochs" not in defaults:
        if given:
            raise TrainingError(f"prune_epochs applies to Compressed ELSA only, not to {kind!r}")
        return []
    warmup = int(base.get("warmup_epochs", defaults["warmup_epochs"]))
    if given:
        lengths = [check_int(n, "prune_epochs", 1, error=TrainingError) for n in given]
        for n in lengths:
            if warmup + n > epochs:
                raise TrainingError(f"prune_epochs={n} with warmup_epochs={warmup} exceeds the {epochs} epochs of "
                                    "a trial; expected at most epochs - warmup_epochs")
        return list(dict.fromkeys(lengths))
    own = own_epochs - warmup - int(base.get("finetune_epochs", defaults["finetune_epochs"]))
    own = max(1, min(own, epochs - warmup))
    return [own] + ([2 * own] if warmup + 2 * own < epochs else [])


def _refinements(base: dict, defaults: dict, input_dropouts, start_nnzs) -> dict[str, tuple]:
    """(own, refined) value of every setting the refinement stage tries (see :func:`search_recipe`)."""
    out = {}
    if input_dropouts is None and float(base.get("input_dropout", defaults["input_dropout"])) == 0.0:
        out["input_dropout"] = (0.0, REFINE_DROPOUT)
    if start_nnzs is None and "start_nnz" in defaults and base.get("start_nnz", defaults["start_nnz"]) is None:
        nnz = int(base.get("nnz", defaults["nnz"]))
        out["start_nnz"] = (None, 2 * nnz)
    return out


def _refined(cand: dict, refinements: dict) -> list[dict]:
    """``cand`` with every non-empty combination of the refined settings (a start that is not below the width is
    left out: it would be the dense start again)."""
    out = []
    names = list(refinements)
    for combo in itertools.product((False, True), repeat=len(names)):
        if not any(combo):
            continue
        c = dict(cand)
        for name, on in zip(names, combo):
            c[name] = refinements[name][1] if on else refinements[name][0]
        if c.get("start_nnz") is not None and c["start_nnz"] >= c["dims"]:
            continue
        out.append(c)
    return out


def _trial_params(base: dict, cand: dict, epochs: int) -> dict:
    """A candidate's model settings: ``prune_epochs`` becomes the fine-tuning that follows it."""
    params = {**base, **{k: v for k, v in cand.items() if k != "prune_epochs"}, "epochs": epochs}
    if "prune_epochs" in cand:
        params["finetune_epochs"] = epochs - int(params.get("warmup_epochs", 0)) - int(cand["prune_epochs"])
    return params


def _ordered(candidates: list[dict], defaults: dict, seed: int) -> list[dict]:
    """The class-default candidate (if present) first, the rest in a seeded random order."""
    first = [c for c in candidates if c["lr"] == defaults["lr"] and c["dims"] == defaults["dims"]
             and c.get("prune_epochs") == defaults.get("prune_epochs")
             and c.get("input_dropout", defaults["input_dropout"]) == defaults["input_dropout"]
             and c.get("start_nnz", defaults.get("start_nnz")) == defaults.get("start_nnz")]
    rest = [c for c in candidates if c not in first]
    order = np.random.default_rng(seed).permutation(len(rest))
    return first + [rest[i] for i in order]


def _key(candidate: dict) -> tuple:
    return tuple(sorted(candidate.items()))


def _epoch_settings(kind: str, params: dict, best_epoch: int) -> dict:
    """The epoch settings that train ``best_epoch`` epochs (Compressed ELSA: the fine-tuning is cut)."""
    model = with_epochs(make_model(kind, **params, progress=False), best_epoch)
    return {k: v for k, v in model.get_params().items() if k in ("epochs", "finetune_epochs")}


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value
