"""Dense ELSA and Compressed ELSA (sparse item embeddings), trained with PyTorch.

ELSA (Vančura et al., RecSys 2022) is a linear autoencoder with one item matrix
A (n_items x dims) whose rows are L2-normalised. A user with binary history x
gets the prediction ``relu(x·A·Aᵀ − x)``; training minimises the normalised MSE
``‖x̂/‖x̂‖ − x/‖x‖‖²`` with Nadam.

Compressed ELSA keeps only the ``nnz`` largest-magnitude entries of each row
(sign kept): a mask applied in the forward pass, tightened from ``dims`` to
``nnz`` by a pruning schedule (:mod:`elsa_index.models.schedules`).
``restart=True`` ("with restarting", lottery-ticket style) resets the
surviving weights to their initial values and the optimiser state after each
pruning event. User encoding and item scoring live in
:mod:`elsa_index.models.scoring`.

With ``n_negatives`` set, each batch scores only the batch's positive items
plus that many uniformly sampled items (sampled outputs), so large catalogues
train without an n_items-wide output per user.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from .._checks import check_float, check_int
from .._memory import check_fits
from ..errors import TrainingError
from ..metrics import evaluate
from .schedules import SCHEDULES, nnz_schedule, pruning_plan
from .scoring import encode_users, score_items

logger = logging.getLogger(__name__)

# torch is imported inside the methods that train: loading a checkpoint,
# scoring and serving (which import this module) must not pay for it.

# SCHEDULES, nnz_schedule, score_items and encode_users are re-exported for
# code that imported them from here before they got their own modules.
__all__ = ["ELSA", "CompressedELSA", "SCHEDULES", "nnz_schedule", "score_items", "encode_users"]


# ---------------------------------------------------------------- validation


def _check_validation(validation, n_items: int):
    try:
        fold_in, targets = validation
    except (TypeError, ValueError):
        raise TrainingError("validation must be a (fold_in, targets) pair of sparse matrices") from None
    fold_in = sp.csr_matrix(fold_in, dtype=np.float32)
    targets = sp.csr_matrix(targets, dtype=np.float32)
    if fold_in.shape != targets.shape or fold_in.shape[1] != n_items:
        raise TrainingError(
            f"validation matrices must both have shape (n_users, {n_items}); got {fold_in.shape} and {targets.shape}"
        )
    if targets.nnz == 0:
        raise TrainingError("validation targets are empty; expected held-out items for the validation users")
    return fold_in, targets


def _validation_recall(A: np.ndarray, fold_in: sp.csr_matrix, targets: sp.csr_matrix) -> float:
    res = evaluate(lambda Xb: score_items(Xb, A), fold_in, targets, ks=(), metrics=("recall@20",))
    return float(res["recall@20"])


# ---------------------------------------------------------------- models


@dataclass
class EpochStats:
    epoch: int
    loss: float
    nnz: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "loss": self.loss, "nnz": self.nnz, "seconds": self.seconds}


def _check_ints(model, spec: tuple[tuple[str, int], ...]) -> None:
    """Check that each named setting is an int >= its lower bound."""
    for name, low in spec:
        check_int(getattr(model, name), name, low, error=TrainingError)


# Settings that are not model parameters (not stored in checkpoints).
_NOT_A_PARAM = {"param": False}


@dataclass(eq=False)
class ELSA:
    """Dense ELSA.

    Parameters
    ----------
    dims : embedding width.
    epochs : passes over the training users.
    batch_size : users per step.
    lr : Nadam learning rate.
    n_negatives : if set, sampled outputs: score only the batch's positives
        plus this many uniformly drawn items per batch. ``None`` scores all items.
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    seed : seeds initialisation, shuffling and negative sampling.
    progress : show a progress bar.

    Attributes
    ----------
    embeddings_ : ndarray float32 (n_items, dims), L2-normalised rows.
    history_ : list of dict per epoch (epoch, loss, nnz, seconds[, val_recall@20]).
    best_epoch_ : epoch whose weights were kept (with validation), else None.

    Notes
    -----
    The settings are dataclass fields: the constructor only stores them
    (``fit`` does the work), and :meth:`get_params` lists them, so a subclass
    adds a setting in one place.
    """

    kind = "elsa"

    dims: int = 256
    _: KW_ONLY
    epochs: int = 20
    batch_size: int = 512
    lr: float = 0.1
    n_negatives: int | None = None
    device: str = "auto"
    seed: int = 0
    progress: bool = field(default=True, metadata=_NOT_A_PARAM)

    # -- configuration

    def get_params(self) -> dict[str, Any]:
        """Constructor settings (JSON-serialisable), as stored in a checkpoint; ``progress`` is not one."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("param", True)}

    def check_params(self) -> None:
        """Raise TrainingError for invalid settings (called by ``fit``; cheap, no data needed)."""
        _check_ints(self, (("dims", 1), ("epochs", 1), ("batch_size", 1), ("seed", 0)))
        check_float(self.lr, "lr", 0.0, low_open=True, error=TrainingError)
        check_int(self.n_negatives, "n_negatives", 0, allow_none=True, error=TrainingError, hint=" (or None)")

    def _check_memory(self, n_users: int, n_items: int, device) -> None:
        """Refuse, before allocating, a model whose training state cannot fit in memory (naming ``dims``).

        Per weight: the initial copy and its normalised copy, the weight, its
        gradient, two NAdam moments, the mask and the best epoch's copy (about
        32 bytes); per batch: the inputs, hidden and output activations and
        their gradients. Host memory is checked (the initial weights are made
        there); on a GPU the device has its own limit, reported by torch.
        """
        width = int(self._start_dims)
        outputs = n_items if self.n_negatives is None else min(n_items, int(self.n_negatives) + int(self.batch_size) * 64)
        batch = min(int(self.batch_size), n_users)
        need = float(n_items) * width * (32 if device.type == "cpu" else 8) + float(batch) * (width + outputs + n_items) * 16
        check_fits(need, f"training with dims={width} on {n_items} items", error=TrainingError,
                   hint="lower --dims (the embedding width)")
        if self.n_negatives is not None:
            # Each step draws n_negatives int64 ids and sorts them together with the positives.
            check_fits(float(self.n_negatives) * 32, f"n_negatives={self.n_negatives} (sampled items per batch)",
                       error=TrainingError, hint=f"use at most the {n_items} items, or leave it unset to score all items")

    def _validate(self, X) -> sp.csr_matrix:
        self.check_params()
        if not sp.issparse(X):
            raise TrainingError(f"X must be a scipy sparse user x item matrix, got {type(X).__name__}")
        X = sp.csr_matrix(X, dtype=np.float32)
        if X.shape[0] == 0 or X.shape[1] == 0 or X.nnz == 0:
            raise TrainingError(f"X must have users, items and interactions; got shape {X.shape} with {X.nnz} nonzeros")
        return X

    def _resolve_device(self):
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise TrainingError(f"unknown device {self.device!r}: {exc}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError("device 'cuda' was requested but CUDA is not available; use device='auto' or 'cpu'")
        return dev

    # -- pruning hooks (dense ELSA never prunes)

    def _pruning_plan(self, n_batches: int) -> dict[int, int]:
        return {}

    @property
    def _start_dims(self) -> int:
        return self.dims

    @property
    def _final_nnz(self) -> int:
        return self.dims

    # -- training

    def fit(self, X: sp.spmatrix, *, validation=None, patience: int | None = 3) -> "ELSA":
        """Train on a binary user x item matrix (CSR, float).

        Parameters
        ----------
        X : sparse (n_users, n_items), binary histories.
        validation : optional ``(fold_in, targets)`` sparse matrices of
            validation users (not in X, same item columns). Recall@20 is
            measured after every epoch and recorded in ``history_``; the
            weights of the best epoch are kept (for Compressed ELSA, the best
            epoch at the target nnz), and training stops after ``patience``
            epochs without improvement (``None``: never stops early).

        Returns
        -------
        self
        """
        import torch

        X = self._validate(X)
        if validation is not None:
            validation = _check_validation(validation, X.shape[1])
        device = self._resolve_device()
        n_users, n_items = X.shape
        self._check_memory(n_users, n_items, device)
        gen = torch.Generator().manual_seed(int(self.seed))
        rng = np.random.default_rng(self.seed)
        width = self._start_dims
        init = torch.empty(n_items, width)
        torch.nn.init.kaiming_uniform_(init, generator=gen)
        init = torch.nn.functional.normalize(init, dim=-1)
        weight = torch.nn.Parameter(init.clone().to(device))
        mask = torch.ones(n_items, width, dtype=torch.bool, device=device)
        opt = torch.optim.NAdam([weight], lr=self.lr)

        n_batches = max(1, math.ceil(n_users / self.batch_size))
        plan = self._pruning_plan(n_batches)  # global step -> nnz
        cur_nnz = width
        self.history_ = []
        self.best_epoch_ = None
        best = None  # (val recall, epoch, weight, mask)
        bar = None
        if self.progress:
            bar = tqdm(total=self.epochs * n_batches, desc=f"{self.kind} {width}d", unit="batch", leave=False)
        step = 0
        try:
            for epoch in range(self.epochs):
                t0 = time.perf_counter()
                order = rng.permutation(n_users)
                total, seen = 0.0, 0
                for b in range(n_batches):
                    if step in plan:
                        cur_nnz = plan[step]
                        self._prune(weight, mask, init.to(device), cur_nnz)
                        if self._restart:
                            opt = torch.optim.NAdam([weight], lr=self.lr)
                    rows = order[b * self.batch_size : (b + 1) * self.batch_size]
                    loss = self._step(X[rows], weight, mask, opt, rng, device, cur_nnz < width)
                    if not math.isfinite(loss):
                        raise TrainingError(
                            f"training loss became {loss} at epoch {epoch + 1}, batch {b + 1}; "
                            f"lower the learning rate (lr={self.lr}) or check the data"
                        )
                    total += loss * len(rows)
                    seen += len(rows)
                    step += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}", nnz=cur_nnz)
                stats = EpochStats(epoch + 1, total / seen, cur_nnz, time.perf_counter() - t0).as_dict()
                logger.info("epoch %d loss %.5f nnz %d (%.1fs)", epoch + 1, stats["loss"], cur_nnz, stats["seconds"])
                if validation is not None:
                    with torch.no_grad():
                        A = torch.nn.functional.normalize(weight * mask, dim=-1).cpu().numpy()
                    stats["val_recall@20"] = score = _validation_recall(A, *validation)
                    # Only epochs at the final width are eligible (pruning may still be under way).
                    if cur_nnz == self._final_nnz and (best is None or score > best[0]):
                        best = (score, epoch + 1, weight.detach().clone(), mask.clone())
                    elif best is not None and patience is not None and epoch + 1 - best[1] >= patience:
                        self.history_.append(stats)
                        logger.info("early stop after epoch %d; best epoch %d", epoch + 1, best[1])
                        break
                    if bar is not None:
                        bar.set_postfix(epoch=epoch + 1, loss=f"{stats['loss']:.4f}", nnz=cur_nnz, val=f"{score:.4f}")
                self.history_.append(stats)
        finally:
            if bar is not None:
                bar.close()
        if best is not None:
            _, self.best_epoch_, weight, mask = best
        with torch.no_grad():
            A = torch.nn.functional.normalize(weight * mask, dim=-1).cpu().numpy().astype(np.float32)
        self._finish(A, mask.cpu().numpy())
        self.n_items_ = n_items
        return self

    _restart = False

    def _prune(self, weight, mask, init, nnz: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _step(self, Xb: sp.csr_matrix, weight, mask, opt, rng, device, masked: bool) -> float:
        import torch
        import torch.nn.functional as F

        n_items = Xb.shape[1]
        indptr = torch.from_numpy(Xb.indptr[:-1].astype(np.int64)).to(device)
        idx = torch.from_numpy(Xb.indices.astype(np.int64)).to(device)
        if self.n_negatives is None:
            cols = None
            target = torch.from_numpy(Xb.toarray()).to(device)
        else:
            pos = np.unique(Xb.indices)
            neg = rng.integers(0, n_items, size=self.n_negatives)
            cols_np = np.union1d(pos, neg)
            lookup = np.full(n_items, -1, np.int64)
            lookup[cols_np] = np.arange(len(cols_np))
            sub = sp.csr_matrix((Xb.data, lookup[Xb.indices], Xb.indptr), shape=(Xb.shape[0], len(cols_np)))
            target = torch.from_numpy(sub.toarray()).to(device)
            cols = torch.from_numpy(cols_np).to(device)

        opt.zero_grad(set_to_none=True)
        W = weight * mask if masked else weight
        A = F.normalize(W, dim=-1)
        # x·A as a sum of history rows: cheap for sparse histories on any catalogue size.
        xA = F.embedding_bag(idx, A, indptr, mode="sum")
        A_out = A if cols is None else A[cols]
        pred = torch.relu(xA @ A_out.T - target)
        loss = (F.normalize(pred, dim=-1) - F.normalize(target, dim=-1)).pow(2).sum(-1).mean()
        loss.backward()
        opt.step()
        return float(loss.detach())

    def _finish(self, A: np.ndarray, mask: np.ndarray) -> None:
        self.embeddings_ = A

    # -- inference

    def _check_fitted(self):
        if not hasattr(self, "embeddings_"):
            raise TrainingError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")

    def score(self, X: sp.spmatrix) -> np.ndarray:
        """Item scores for users' histories, float32 (n_users, n_items)."""
        self._check_fitted()
        return score_items(X, self.embeddings_)


#: upper bound on pruning events (more cannot be spread over any realistic training run)
MAX_PRUNE_STEPS = 1_000_000


@dataclass(eq=False)
class CompressedELSA(ELSA):
    """Compressed ELSA: ELSA whose item rows keep ``nnz`` of ``dims`` entries.

    Parameters
    ----------
    dims : the dense start width (active dims per row before pruning).
    nnz : active dims per row at the end (``1 <= nnz <= dims``).
    schedule : one of ``SCHEDULES``.
    restart : reset surviving weights to their initial values after each pruning event.
    prune_steps : number of pruning events for ``linear``/``exponential``.
    warmup_epochs : dense epochs before the first pruning event.
    finetune_epochs : epochs at the target nnz after the last pruning event.
    Other parameters as for ``ELSA``.

    Attributes
    ----------
    embeddings_ : scipy.sparse.csr_matrix float32 (n_items, dims) with exactly
        ``nnz`` stored entries per row, L2-normalised rows.
    """

    kind = "compressed_elsa"

    dims: int = 1024
    nnz: int = 16
    _: KW_ONLY
    schedule: str = "exponential"
    restart: bool = False
    prune_steps: int = 10
    warmup_epochs: int = 1
    finetune_epochs: int = 5

    @property
    def _final_nnz(self) -> int:  # type: ignore[override]
        return self.nnz

    @property
    def _restart(self) -> bool:  # type: ignore[override]
        return bool(self.restart)

    def check_params(self) -> None:
        super().check_params()
        check_int(self.nnz, "nnz", 1, self.dims, error=TrainingError, hint=f" (dims={self.dims})")
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"unknown pruning schedule {self.schedule!r}; expected one of {SCHEDULES}")
        _check_ints(self, (("prune_steps", 1), ("warmup_epochs", 0), ("finetune_epochs", 0)))
        if self.prune_steps > MAX_PRUNE_STEPS:
            # Each event is planned in Python: a billion of them would run for minutes and take GBs.
            raise TrainingError(f"prune_steps must be at most {MAX_PRUNE_STEPS:,} (events beyond the training steps "
                                f"of the pruning phase fall on the same step anyway), got {self.prune_steps}")
        if self.warmup_epochs + self.finetune_epochs >= self.epochs:
            raise TrainingError(
                f"warmup_epochs ({self.warmup_epochs}) + finetune_epochs ({self.finetune_epochs}) "
                f"must leave at least one pruning epoch within epochs={self.epochs}"
            )
        nnz_schedule(self.schedule, self.dims, self.nnz, self.prune_steps)

    def _pruning_plan(self, n_batches: int) -> dict[int, int]:
        levels = nnz_schedule(self.schedule, self.dims, self.nnz, self.prune_steps)
        return pruning_plan(levels, n_batches, self.warmup_epochs, self.epochs - self.finetune_epochs)

    def _prune(self, weight, mask, init, nnz: int) -> None:
        import torch

        with torch.no_grad():
            mag = (weight * mask).abs()
            top = torch.topk(mag, nnz, dim=1).indices
            new = torch.zeros_like(mask)
            new.scatter_(1, top, True)
            mask.copy_(new)
            if self.restart:
                weight.copy_(init)
            weight.mul_(mask)

    def _finish(self, A: np.ndarray, mask: np.ndarray) -> None:
        # Exactly nnz entries per row, taken from the mask (an exact zero stays stored).
        n_items = A.shape[0]
        cols = np.nonzero(mask)[1].reshape(n_items, -1)
        if cols.shape[1] != self.nnz:
            raise TrainingError(f"internal: mask has {cols.shape[1]} active dims per row, expected {self.nnz}")
        data = np.take_along_axis(A, cols, axis=1)
        indptr = np.arange(0, n_items * self.nnz + 1, self.nnz, dtype=np.int64)
        self.embeddings_ = sp.csr_matrix((data.ravel(), cols.ravel(), indptr), shape=A.shape)
