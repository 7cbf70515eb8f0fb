"""End-to-end steps shared by the CLI and the benchmarks: data -> split -> model -> checkpoint -> metrics."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from .checkpoint import Checkpoint
from .data import IdMap, Interactions, Split, column_split, filter_log, read_log, strong_generalization_split
from .data.split import interaction_holdout_split
from .data.datasets import DATASETS, load_dataset
from .data.synthetic import make_synthetic
from .errors import DataError, TrainingError
from .metrics import evaluate
from .models import ELSA, CompressedELSA

logger = logging.getLogger(__name__)

__all__ = ["DataSpec", "load_split", "make_model", "train_checkpoint", "with_epochs", "evaluate_checkpoint", "align_to",
           "DEFAULT_METRICS", "SPLIT_METRICS", "default_metrics", "validation_split"]

#: metrics reported for held-out users (strong generalisation): the ELSA / EASE papers' normalised Recall@k
DEFAULT_METRICS = ("recall@20", "recall@50", "ndcg@100")
#: metrics reported for a fixed train/test split: the LightGCN / KGAT papers' Recall@20 (hits / |targets|)
SPLIT_METRICS = ("hit_recall@20", "ndcg@20")


def default_metrics(split: Split | str) -> tuple[str, ...]:
    """The metrics published tables use for this kind of split (a :class:`Split` or its ``protocol``).

    Held-out users (``"users"``): :data:`DEFAULT_METRICS`; a fixed split
    (``"interactions"``): :data:`SPLIT_METRICS`.
    """
    protocol = split if isinstance(split, str) else split.protocol
    return SPLIT_METRICS if protocol == "interactions" else DEFAULT_METRICS


@dataclass
class DataSpec:
    """Where the interactions come from and how they are filtered and split.

    ``source`` is a Parquet/CSV path, a dataset name known to
    :func:`elsa_index.data.datasets.load_dataset` (e.g. ``"ml-1m"``), or
    ``"synthetic"`` (the built-in generator; ``synthetic_*`` settings apply).
    With ``split_col`` set, the file's own train/test split is used (rows
    whose split value is ``train_value`` / ``test_value``); otherwise
    ``n_heldout_users`` users are held out (strong generalisation).
    """

    source: str = "synthetic"
    user_col: str = "user_id"
    item_col: str = "item_id"
    rating_col: str | None = None
    timestamp_col: str | None = None
    split_col: str | None = None
    train_value: str = "train"
    test_value: str = "test"
    min_rating: float | None = None
    min_user_support: int = 5
    min_item_support: int = 1
    n_heldout_users: int = 1000
    fold_in_fraction: float = 0.8
    seed: int = 42
    synthetic_users: int = 5000
    synthetic_items: int = 2000
    synthetic_clusters: int = 20

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        """A spec from a dict (e.g. recorded in a checkpoint); every value's type is checked (DataError)."""
        if not isinstance(d, dict):
            raise DataError(f"data settings must be a mapping of names to values, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known, key=str)
        if unknown:
            raise DataError(f"unknown data setting(s) {unknown}; expected some of {sorted(known)}")
        for name, value in d.items():
            kinds = _SPEC_TYPES[name]
            ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
            if not ok:
                expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
                raise DataError(f"data setting {name!r} must be {expected}, got {value!r}")
        return cls(**d)


_STR, _OPT_STR = (str,), (str, type(None))
_SPEC_TYPES: dict[str, tuple] = {
    "source": _STR, "user_col": _STR, "item_col": _STR, "rating_col": _OPT_STR, "timestamp_col": _OPT_STR,
    "split_col": _OPT_STR, "train_value": _STR, "test_value": _STR, "min_rating": (int, float, type(None)),
    "min_user_support": (int,), "min_item_support": (int,), "n_heldout_users": (int,), "fold_in_fraction": (int, float), "seed": (int,),
    "synthetic_users": (int,), "synthetic_items": (int,), "synthetic_clusters": (int,),
}


def load_log(spec: DataSpec):
    """The raw interaction log named by ``spec`` (before filtering)."""
    src = spec.source
    if src == "synthetic":
        return make_synthetic(spec.synthetic_users, spec.synthetic_items, spec.synthetic_clusters, seed=spec.seed)
    path = Path(src)
    if path.is_file():
        cols = dict(user_col=spec.user_col, item_col=spec.item_col, rating_col=spec.rating_col,
                    timestamp_col=spec.timestamp_col, split_col=spec.split_col)
        return read_log(path, **cols)
    if src in DATASETS:
        return load_dataset(src)
    raise DataError(f"data source {src!r} is neither a file nor a known dataset; expected a .parquet/.csv path, 'synthetic' or one of {list(DATASETS)}")


def load_split(spec: DataSpec) -> Split:
    """Load, filter and split the interactions described by ``spec`` (recorded in the split's ``spec``)."""
    split = _load_split(spec)
    split.spec = spec.to_dict()
    return split


def _load_split(spec: DataSpec) -> Split:
    log = load_log(spec)
    if spec.split_col is not None:
        # Filtering per part would break the given split; only positives are selected.
        if spec.min_rating is not None:
            log = filter_log(log, min_rating=spec.min_rating, min_user_support=1, min_item_support=1)
        return column_split(log, train_value=spec.train_value, test_value=spec.test_value)
    log = filter_log(log, min_rating=spec.min_rating, min_user_support=spec.min_user_support,
                     min_item_support=spec.min_item_support)
    inter = Interactions.from_log(log)
    n_heldout = spec.n_heldout_users
    if n_heldout >= inter.n_users:
        raise DataError(f"n_heldout_users={n_heldout} but only {inter.n_users} users remain after filtering; expected fewer")
    return strong_generalization_split(inter, n_heldout, fold_in_fraction=spec.fold_in_fraction, seed=spec.seed)


def make_model(kind: str, **params):
    """``ELSA`` for ``kind="elsa"`` (alias ``"dense"``), ``CompressedELSA`` for ``"compressed_elsa"`` (alias ``"compressed"``)."""
    kinds = {"elsa": ELSA, "dense": ELSA, "compressed_elsa": CompressedELSA, "compressed": CompressedELSA}
    if kind not in kinds:
        raise TrainingError(f"unknown model kind {kind!r}; expected one of {sorted(kinds)}")
    cls = kinds[kind]
    try:
        model = cls(**params)
    except TypeError as exc:
        raise TrainingError(f"bad parameter for {cls.__name__}: {exc}") from None
    model.check_params()
    return model


def validation_split(split: Split, users: int | float, *, holdout_fraction: float = 0.2, seed: int = 7) -> Split:
    """Validation data drawn from ``split.train`` only, following the split's own test protocol.

    Parameters
    ----------
    split : the evaluation split; its test users and targets are never used.
    users : validation users, a count (int >= 1) or a fraction of the
        training users (float in (0, 1)).
    holdout_fraction : a fixed split's validation targets: this share of each
        validation user's training interactions.
    seed : seeds the draw.

    Returns
    -------
    Split
        For held-out users (``split.protocol == "users"``): that many training
        users held out whole, with the same 80/20 fold-in as the test users.
        For a fixed split (``"interactions"``): held-out interactions of that
        many training users, who stay in training with the rest of their row
        as input, as test users do (:func:`~elsa_index.data.split.interaction_holdout_split`).
    """
    n_train = split.train.n_users
    if isinstance(users, bool) or not isinstance(users, (int, float, np.integer, np.floating)):
        raise DataError(f"validation users must be a count >= 1 or a fraction in (0, 1), got {users!r}")
    if isinstance(users, (float, np.floating)):
        if not 0.0 < users < 1.0:
            raise DataError(f"a fraction of validation users must be in (0, 1), got {users}")
        users = max(1, int(round(users * n_train)))
    if split.protocol == "interactions":
        return interaction_holdout_split(split.train, int(users), holdout_fraction=holdout_fraction, seed=seed)
    return strong_generalization_split(split.train, int(users), seed=seed)


def train_checkpoint(model, split: Split, *, data: dict | None = None, validation_users: int | float = 0,
                     patience: int | None = 3, validation_seed: int = 7, refit: bool = True,
                     metrics: Sequence[str] | None = None, evaluate_heldout: bool = True,
                     validation_holdout: float = 0.2) -> Checkpoint:
    """Fit ``model`` on ``split.train``; return its checkpoint, evaluated on the held-out users.

    With ``validation_users`` (a count, or a fraction of the training
    users), the number of epochs is chosen on validation data drawn from the
    training data by the split's own protocol (:func:`validation_split`:
    held-out training users for strong generalisation, held-out interactions
    of training users for a fixed split; never the test users or targets).
    The model trains with early stopping (``patience``), and then, with
    ``refit``, is trained again from the same initialisation on all training
    data for the best epoch count (a Compressed ELSA keeps its pruning
    timeline; only the fine-tuning is cut). Without ``refit`` the
    early-stopped model is kept.

    ``metrics`` defaults to :func:`default_metrics` of the split. ``data``
    defaults to the split's recorded data settings, so the checkpoint can be
    evaluated again from itself alone. The settings used are recorded in the
    checkpoint's ``config``.
    """
    train = split.train
    metrics = tuple(metrics) if metrics is not None else default_metrics(split)
    if data is None and split.spec is not None:
        data = {"spec": dict(split.spec)}
    config: dict[str, Any] = {"validation_users": validation_users, "metrics": list(metrics)}
    t0 = time.perf_counter()
    if validation_users:
        inner = validation_split(split, validation_users, holdout_fraction=validation_holdout, seed=validation_seed)
        config["validation"] = {"protocol": inner.protocol, "users": int(inner.fold_in.shape[0]),
                                "holdout_fraction": validation_holdout if inner.protocol == "interactions" else None,
                                "seed": validation_seed, "patience": patience, "refit": refit}
        model.fit(inner.train.matrix, validation=(inner.fold_in, inner.targets), patience=patience)
        config["best_epoch"] = best = model.best_epoch_
        config["validation_history"] = model.history_
        if refit:
            config["selection_seconds"] = round(time.perf_counter() - t0, 3)
            model = with_epochs(model, best)
            t0 = time.perf_counter()
            model.fit(train.matrix)
        else:
            train = inner.train
    else:
        model.fit(train.matrix)
    seconds = time.perf_counter() - t0
    config["train_seconds"] = round(seconds, 3)
    # Training time per epoch as the model recorded it (validation passes excluded).
    config["seconds_per_epoch"] = round(sum(h["seconds"] for h in model.history_) / max(1, len(model.history_)), 3)
    ckpt = Checkpoint.from_model(model, train, data=data, config=config)
    if evaluate_heldout and split.fold_in.shape[0]:
        ckpt.metrics = evaluate_checkpoint(ckpt, split, metrics=metrics)
    return ckpt


def with_epochs(model, epochs: int):
    """A fresh copy of ``model`` set to train ``epochs`` epochs (fine-tuning shortened for Compressed ELSA)."""
    params = model.get_params()
    if "finetune_epochs" in params:
        prune_end = params["epochs"] - params["finetune_epochs"]
        params["finetune_epochs"] = max(0, epochs - prune_end)
        epochs = max(epochs, prune_end)
    params["epochs"] = epochs
    return type(model)(**params, progress=model.progress)


def align_to(ckpt: Checkpoint, matrix: sp.csr_matrix, item_ids: IdMap) -> sp.csr_matrix:
    """Re-index the columns of ``matrix`` (in ``item_ids`` order) to the checkpoint's items; unknown items are dropped."""
    if item_ids == ckpt.item_ids:
        return sp.csr_matrix(matrix, dtype=np.float32)
    cols = ckpt.item_ids.index(item_ids.ids, missing="ignore")
    m = sp.csr_matrix(matrix, dtype=np.float32).tocoo()
    new = cols[m.col]
    keep = new >= 0
    out = sp.csr_matrix((m.data[keep], (m.row[keep], new[keep])), shape=(matrix.shape[0], ckpt.n_items))
    out.sort_indices()
    return out


def evaluate_checkpoint(ckpt: Checkpoint, split: Split, *, metrics: Sequence[str] | None = None,
                        batch_size: int = 1000) -> dict[str, float]:
    """Recall/NDCG of the checkpoint's rankings for the split's held-out users.

    Items are matched by external id, so the split may come from a different
    (e.g. re-filtered) copy of the data; fold-in or target items the checkpoint
    does not know are dropped (and counted in the log). ``metrics`` defaults
    to :func:`default_metrics` of the split.
    """
    metrics = tuple(metrics) if metrics is not None else default_metrics(split)
    fold = align_to(ckpt, split.fold_in, split.item_ids)
    tgt = align_to(ckpt, split.targets, split.item_ids)
    lost = split.targets.nnz - tgt.nnz
    if lost:
        logger.warning("%d target interactions are items unknown to the checkpoint and were dropped", lost)
    if tgt.nnz == 0:
        raise DataError("no held-out target item is known to the checkpoint; is this the data it was trained on?")
    res = evaluate(ckpt.score, fold, tgt, ks=(), metrics=metrics, batch_size=batch_size)
    return {k: float(v) for k, v in res.items()}

