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

Outputs: by default (``n_negatives="auto"``) every batch scores the whole
catalogue (full outputs) whenever ``batch_size x n_items`` scores fit under
:data:`FULL_OUTPUT_CAP`; beyond that each batch scores the batch's positive
items plus sampled negatives, with an importance-weighting correction that
keeps the loss's normalisation an unbiased estimate of the full one (see
:meth:`ELSA._sample_columns`).

Memory: once Compressed ELSA's last pruning event has passed, the dense
``n_items x dims`` weight, mask and optimiser state are dropped and training
continues on a compact ``(n_items, nnz)`` values + column-indices
parametrisation (same updates, a fraction of the memory). With ``start_nnz``
below ``dims`` (a sparse start) training runs on the compact state from the
first step, each row starting from ``start_nnz`` random columns, so the
dense weight never exists.
"""

from __future__ import annotations

import contextlib
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

#: Full outputs are used when ``batch_size * n_items`` scores stay within this
#: many floats (128 MiB as one float32 batch x catalogue array). Such batches
#: compute their outputs in chunks (see FUSED_OUTPUT_FLOATS), so the cap bounds
#: the time of a step (its output products grow with the catalogue) rather
#: than its memory. At batch 512 that is catalogues of up to 65,536 items.
FULL_OUTPUT_CAP = 1 << 25

#: A batch whose batch x scored-items array exceeds this many floats (16 MiB in float32) computes its outputs and
#: loss in chunks of items (:func:`_fused_elsa_loss`), recomputing each chunk's scores in the backward pass: the
#: step then holds one chunk's scores and gradients (about ``FUSED_CHUNK_FLOATS`` floats each) instead of about
#: eight batch x items arrays, for one more matrix product per chunk.
FUSED_OUTPUT_FLOATS = 1 << 22
#: floats of one chunk's batch x items scores in the fused path
FUSED_CHUNK_FLOATS = 1 << 21

#: Negatives are drawn with probability proportional to (training count + 1)
#: to this power (word2vec's smoothing: popular items, which score high and
#: dominate the loss's normalisation, are drawn often; rare ones still can be).
POPULARITY_POWER = 0.75

NEGATIVE_SAMPLERS = ("popularity", "uniform")

# SCHEDULES, nnz_schedule, score_items and encode_users are re-exported for
# code that imported them from here before they got their own modules.
__all__ = ["ELSA", "CompressedELSA", "SCHEDULES", "nnz_schedule", "score_items", "encode_users"]


# ---------------------------------------------------------------- validation


@contextlib.contextmanager
def _deterministic(device):
    """Training on the CPU is bit-reproducible for a seed: torch's deterministic algorithms while it runs.

    Some CPU kernels (sparse products, index additions) otherwise sum in an
    order that depends on thread timing: about 1e-7 apart after a few epochs
    with a dense start, and, with a sparse start, different models (regrowth and
    magnitude pruning pick other columns). The global setting is restored
    afterwards. CUDA training is seeded but left as it is (deterministic cuBLAS
    needs ``CUBLAS_WORKSPACE_CONFIG`` set before CUDA starts).
    """
    import torch

    if getattr(device, "type", str(device)) != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


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
    n_negatives : which items each batch scores.

        - ``"auto"`` (default): all items (full outputs) when
          ``batch_size * n_items <= FULL_OUTPUT_CAP`` (2**25 scores, i.e.
          128 MiB per float32 batch x catalogue array; catalogues of up to
          65,536 items at batch 512), else sampled outputs with
          ``FULL_OUTPUT_CAP // batch_size`` negatives per batch.
        - ``None``: always all items.
        - an int N: sampled outputs, the batch's positive items plus N
          negatives drawn (with replacement) per batch.
    negatives : how sampled negatives are drawn: ``"popularity"`` (probability
        proportional to ``(training count + 1) ** POPULARITY_POWER``) or
        ``"uniform"``. The batch's positive items are always scored, and the
        negatives are drawn among the other items. Either way each sampled
        column is weighted by ``count / (N · q)`` (importance weights, the
        equivalent for ELSA's normalised loss of the logQ correction of a
        sampled softmax), so the squared norm of the prediction, which the
        loss normalises by, is an unbiased estimate of the full-output one.
        Full outputs use no weights and are unaffected.
    input_dropout : share of each training user's history hidden from the
        input of each step (default 0: none). The hidden items stay targets:
        the model learns to predict them from the rest of the history, as the
        fold-in/target protocol asks of it at inference (a denoising
        autoencoder's input dropout; the ``-x`` term of ``x·(AAᵀ − I)``
        subtracts only the visible items). Drawn per step from ``seed``.
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    seed : seeds initialisation, shuffling and negative sampling.
    progress : show a progress bar.

    Attributes
    ----------
    embeddings_ : ndarray float32 (n_items, dims), L2-normalised rows.
    history_ : list of dict per epoch (epoch, loss, nnz, seconds[, val_recall@20]);
        ``seconds`` is the epoch's training time, validation excluded.
    best_epoch_ : epoch whose weights were kept (with validation), else None.
    n_outputs_ : items scored per batch (``n_items`` with full outputs, else
        the number of sampled negatives).

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
    lr: float = 0.01
    n_negatives: int | str | None = "auto"
    negatives: str = "popularity"
    input_dropout: float = 0.0
    device: str = "auto"
    seed: int = 0
    progress: bool = field(default=True, metadata=_NOT_A_PARAM)

    #: weight sampled columns by 1 / (N q) (off only to measure the uncorrected loss)
    _sampling_correction = True
    #: train only the live entries after the last pruning event (off only to measure the masked dense state)
    _compact_after_pruning = True
    #: output scores in chunks, recomputed in the backward pass (see FUSED_OUTPUT_FLOATS): None decides by size;
    #: True / False force it (to compare the two)
    _fused_outputs: bool | None = None

    # -- configuration

    def get_params(self) -> dict[str, Any]:
        """Constructor settings (JSON-serialisable), as stored in a checkpoint; ``progress`` is not one."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("param", True)}

    def check_params(self) -> None:
        """Raise TrainingError for invalid settings (called by ``fit``; cheap, no data needed)."""
        _check_ints(self, (("dims", 1), ("epochs", 1), ("batch_size", 1), ("seed", 0)))
        check_float(self.lr, "lr", 0.0, low_open=True, error=TrainingError)
        check_float(self.input_dropout, "input_dropout", 0.0, 1.0, high_open=True, error=TrainingError)
        if self.n_negatives != "auto" or not isinstance(self.n_negatives, str):
            check_int(self.n_negatives, "n_negatives", 0, allow_none=True, error=TrainingError,
                      hint=" (or None for all items, or 'auto')")
        if self.negatives not in NEGATIVE_SAMPLERS:
            raise TrainingError(f"unknown negatives sampler {self.negatives!r}; expected one of {NEGATIVE_SAMPLERS}")

    def n_outputs(self, n_items: int) -> int | None:
        """Negatives sampled per batch for a catalogue of ``n_items`` (``None``: full outputs), per ``n_negatives``."""
        if self.n_negatives is None:
            return None
        if self.n_negatives == "auto":
            if int(self.batch_size) * int(n_items) <= FULL_OUTPUT_CAP:
                return None
            return max(1, FULL_OUTPUT_CAP // int(self.batch_size))
        return int(self.n_negatives)

    def _check_memory(self, n_users: int, n_items: int, device) -> None:
        """Refuse, before allocating, a model whose training state cannot fit in memory (naming ``dims``).

        Per weight: the weight, its gradient, two NAdam moments, the masked
        and normalised copies and the best epoch's copy (about 28 bytes; the
        initial copy too with ``restart``); per batch: the inputs, hidden and
        output activations and their gradients. Host memory is checked (the
        initial weights are made there); on a GPU the device has its own
        limit, reported by torch.
        """
        need, what, hint = self._state_bytes(n_users, n_items, device)
        check_fits(need, f"{what} on {n_items} items", error=TrainingError, hint=hint)
        neg = self.n_outputs(n_items)
        if neg is not None:
            # Each step draws n_negatives int64 ids and counts them.
            check_fits(float(neg) * 32, f"n_negatives={neg} (sampled items per batch)",
                       error=TrainingError, hint=f"use at most the {n_items} items, or leave it unset to score all items")

    def _state_bytes(self, n_users: int, n_items: int, device) -> tuple[float, str, str]:
        """Estimated bytes of the training state (see :meth:`_check_memory`), what it is, and how to lower it."""
        width = int(self._start_dims)
        neg = self.n_outputs(n_items)
        outputs = n_items if neg is None else min(n_items, neg + int(self.batch_size) * 64)
        batch = float(min(int(self.batch_size), n_users))
        activations = batch * (int(self.dims) + outputs + n_items) * 16
        if not self._sparse_start:
            need = float(n_items) * width * (32 if device.type == "cpu" else 8) + activations
            return need, f"training with dims={width}", "lower --dims (the embedding width)"
        # Compact state: per live entry the value, its int64 column, gradient, two NAdam
        # moments, the normalised copy and the best epoch's copy (and the initial value
        # with restart), about 36 bytes; a pruning event briefly holds the old state and
        # the new one (measured: about 50 bytes per entry at the peak). On a GPU the host
        # holds only the initial values and columns.
        per = (52 + 4 * bool(self._restart)) if device.type == "cpu" else 12
        chunks = 3 * 4.0 * _CHUNK_FLOATS  # one item chunk's dense rows, their gradient and a product
        need = float(n_items) * width * per + chunks + activations
        return need, f"training with start_nnz={width} (dims={self.dims})", "lower --start-nnz"

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
        """Live entries per row when training starts."""
        return self.dims

    @property
    def _sparse_start(self) -> bool:
        """Whether training starts on a compact state of ``_start_dims < dims`` entries per row."""
        return False

    def _regrow(self, nnz: int) -> int:
        """Dead columns to regrow per row at a pruning event down to ``nnz`` (sparse start only)."""
        return 0

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
        with _deterministic(self._resolve_device()):
            return self._fit(X, validation=validation, patience=patience)

    def _fit(self, X: sp.spmatrix, *, validation=None, patience: int | None = 3) -> "ELSA":
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
        n_batches = max(1, math.ceil(n_users / self.batch_size))
        plan = self._pruning_plan(n_batches)  # global step -> nnz
        last_prune = max(plan) if plan else -1
        if self._sparse_start:
            # Only start_nnz live entries per row from the first step: no dense weight is ever made.
            state = _CompactState.random(n_items, self.dims, width, gen, device, keep_init=self._restart)
            init = None
        else:
            init = torch.empty(n_items, width)
            torch.nn.init.kaiming_uniform_(init, generator=gen)
            init = torch.nn.functional.normalize(init, dim=-1)
            # The mask exists only for pruning, the initial weights only for restarts.
            # No other reference to the dense weight is kept, so it is freed when
            # the compact state takes over.
            state = _DenseState(torch.nn.Parameter(init.to(device, copy=True)),
                                torch.ones(n_items, width, dtype=torch.bool, device=device) if plan else None)
            init = init if self._restart else None
        opt = torch.optim.NAdam([state.params], lr=self.lr)
        sampler = self._make_sampler(X)
        self.n_outputs_ = n_items if sampler is None else sampler.n_negatives

        cur_nnz = width
        self.history_ = []
        self.best_epoch_ = None
        best = None  # (val recall, epoch, snapshot)
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
                        if isinstance(state, _CompactState):
                            regrow = self._regrow(cur_nnz) if step != last_prune else 0
                            state, opt = state.pruned(cur_nnz, opt, self.lr, restart=self._restart, regrow=regrow)
                        else:
                            self._prune(state.weight, state.mask, None if init is None else init.to(device), cur_nnz)
                            if self._restart:
                                opt = torch.optim.NAdam([state.weight], lr=self.lr)
                        if (step == last_prune and cur_nnz < width and self._compact_after_pruning
                                and not isinstance(state, _CompactState)):
                            # From here on only the live entries change: train them alone.
                            state, opt = _CompactState.from_masked(state, opt, self.lr)
                            init = None
                    if isinstance(state, _CompactState):
                        # Regrowth candidates come from the gradient of the step before a pruning event.
                        nxt = step + 1 in plan and step + 1 != last_prune
                        state.grow = (self._regrow(cur_nnz) or None) if nxt else None
                    rows = order[b * self.batch_size : (b + 1) * self.batch_size]
                    loss = self._step(X[rows], state, opt, sampler, rng, device)
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
                    stats["val_recall@20"] = score = _validation_recall(state.embeddings(), *validation)
                    # Only epochs at the final width are eligible (pruning may still be under way).
                    if cur_nnz == self._final_nnz and (best is None or score > best[0]):
                        best = (score, epoch + 1, state.snapshot())
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
            _, self.best_epoch_, state = best
        self._finish(state)
        self.n_items_ = n_items
        return self

    _restart = False

    def _prune(self, weight, mask, init, nnz: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _make_sampler(self, X: sp.csr_matrix) -> "_NegativeSampler | None":
        neg = self.n_outputs(X.shape[1])
        if neg is None:
            return None
        counts = np.asarray(X.sum(axis=0)).ravel() if self.negatives == "popularity" else None
        return _NegativeSampler(X.shape[1], neg, counts, correct=self._sampling_correction)

    def _step(self, Xb: sp.csr_matrix, state, opt, sampler, rng, device) -> float:
        import torch

        Xb.sum_duplicates()  # Xb is a fresh row selection, not the caller's matrix
        n_rows = Xb.shape[0]
        row_of = np.repeat(np.arange(n_rows), np.diff(Xb.indptr))
        rows = torch.from_numpy(row_of).to(device)
        data = torch.from_numpy(Xb.data.astype(np.float32)).to(device)
        all_idx = torch.from_numpy(Xb.indices.astype(np.int64)).to(device)
        visible = None
        if self.input_dropout > 0:
            # The input (and the -x term) holds the visible entries; every entry stays a target.
            keep = rng.random(len(Xb.indices)) >= self.input_dropout
            visible = torch.from_numpy(keep.astype(np.float32)).to(device)
            counts = np.bincount(row_of[keep], minlength=n_rows)
            in_ptr = np.concatenate([[0], np.cumsum(counts)[:-1]])
            indptr = torch.from_numpy(in_ptr.astype(np.int64)).to(device)
            idx = all_idx[visible.bool()]
        else:
            indptr = torch.from_numpy(Xb.indptr[:-1].astype(np.int64)).to(device)
            idx = all_idx
        if sampler is None:
            cols, sqrt_w, local = None, None, all_idx
        else:
            cols_np, w = sampler.sample(Xb, rng)
            lookup = np.full(Xb.shape[1], -1, np.int64)
            lookup[cols_np] = np.arange(len(cols_np))
            local = torch.from_numpy(lookup[Xb.indices]).to(device)
            cols = torch.from_numpy(cols_np).to(device)
            sqrt_w = None if w is None else torch.from_numpy(np.sqrt(w).astype(np.float32)).to(device)

        opt.zero_grad(set_to_none=True)
        n_out = Xb.shape[1] if cols is None else len(cols)
        fused = self._fused_outputs
        if fused is None:
            fused = n_rows * n_out > FUSED_OUTPUT_FLOATS
        if fused:
            xA, W, wcols, sink = state.parts(idx, indptr, n_rows, cols)
            loss = _fused_elsa_loss(xA, W, wcols, rows, local, data, sqrt_w, sink, visible)
        else:
            loss = _elsa_loss(state.scores(idx, indptr, n_rows, cols), rows, local, data, sqrt_w, visible)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def _finish(self, state) -> None:
        self.embeddings_ = state.embeddings()

    # -- inference

    def _check_fitted(self):
        if not hasattr(self, "embeddings_"):
            raise TrainingError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")

    def score(self, X: sp.spmatrix) -> np.ndarray:
        """Item scores for users' histories, float32 (n_users, n_items)."""
        self._check_fitted()
        return score_items(X, self.embeddings_)


# ---------------------------------------------------------------- training state


def _norm(sq):
    """``max(√sq, 1e-12)`` (as ``F.normalize``), with a finite gradient at ``sq = 0``: a user whose input is
    empty (every entry hidden by input dropout) scores 0 everywhere, and the gradient of ``√`` at 0 (inf) times
    the clamp's 0 would be NaN, which the chunked loss's backward would spread to every item."""
    return sq.clamp_min(1e-24).sqrt()


def _elsa_loss(scores, rows, cols, data, sqrt_w=None, visible=None):
    """ELSA's normalised MSE ``mean_u ‖p/‖p‖ − x/‖x‖‖²`` with ``p = relu(scores − x)``, x given sparse.

    ``scores`` (batch, n_cols) are consumed (modified in place); the history x
    is ``data`` at ``(rows, cols)``. With ``visible`` (0/1 per entry; input
    dropout) only the visible entries are subtracted (``p = relu(scores −
    x_visible)``); x stays the target. With ``sqrt_w`` (n_cols,), column j counts
    ``w_j`` times in ``‖p‖²`` (sampled outputs; x must lie on columns of
    weight 1). Expanding the square as ``‖p‖²/n_p² + ‖x‖²/n_x² − 2 p·x/(n_p n_x)``
    (``n = max(‖·‖, 1e-12)``, as ``F.normalize``) keeps a single batch x
    n_cols array alive instead of the target and the normalised copies.
    """
    import torch

    pred = scores.index_put_((rows, cols), -(data if visible is None else data * visible), accumulate=True).relu_()
    if sqrt_w is not None:
        pred = pred * sqrt_w
    pp = pred.pow(2).sum(-1)
    px = torch.zeros_like(pp).index_add(0, rows, pred[rows, cols] * data)
    xx = torch.zeros_like(pp).index_add(0, rows, data * data)
    n_p, n_x = _norm(pp), _norm(xx)
    return (pp / n_p**2 + xx / n_x**2 - 2 * px / (n_p * n_x)).mean()



def _fused_elsa_loss(xA, W, wcols, rows, cols, data, sqrt_w=None, sink=None, visible=None):
    """:func:`_elsa_loss` of the scores ``xA @ Aᵀ``, computed item chunk by item chunk.

    ``W`` holds the scored items' rows: dense (n_out, dims) when ``wcols`` is
    None, else the live values (n_out, nnz) at columns ``wcols`` (the compact
    state; ``sink`` records each chunk's dense gradient, as in
    :func:`_sparse_rows_product`). The forward pass keeps per user only the
    squared norm of the prediction and its product with the history; the
    backward pass recomputes each chunk's scores for its gradient. The loss,
    the gradients and what ``sink`` sees equal the unfused ones up to float
    rounding (sums in another order).
    """
    import torch

    global _FUSED
    if _FUSED is None:
        _FUSED = _make_fused()
    sub = data if visible is None else data * visible
    pp, px = _FUSED.apply(xA, W, wcols, rows, cols, data, sub, sqrt_w, sink)
    xx = torch.zeros_like(pp).index_add(0, rows, data * data)
    n_p, n_x = _norm(pp), _norm(xx)
    return (pp / n_p**2 + xx / n_x**2 - 2 * px / (n_p * n_x)).mean()


def _make_fused():
    import torch

    def chunks(W, wcols, dims, n_rows):
        # A chunk holds at most FUSED_CHUNK_FLOATS scores (n_rows per item) and _CHUNK_FLOATS expanded weights.
        step = max(1, min(FUSED_CHUNK_FLOATS // max(n_rows, 1), _CHUNK_FLOATS // dims))
        if wcols is not None:
            yield from _chunks(W, wcols, dims, step)
            return
        for lo in range(0, W.shape[0], step):
            hi = min(W.shape[0], lo + step)
            yield lo, hi, W[lo:hi]

    def predicted(xA, R, lo, hi, rows, cols, data, sub, sqrt_w):
        """A chunk's ``relu(scores - x_visible)`` (weighted), the mask of its positive entries, and its history
        entries (the targets)."""
        S = xA @ R.T
        sel = (cols >= lo) & (cols < hi)
        r, c, d = rows[sel], cols[sel] - lo, data[sel]
        S.index_put_((r, c), -sub[sel], accumulate=True)
        mask = S > 0
        S.relu_()
        if sqrt_w is not None:
            S.mul_(sqrt_w[lo:hi])
        return S, mask, r, c, d

    class Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, xA, W, wcols, rows, cols, data, sub, sqrt_w, sink):
            dims = xA.shape[1]
            pp = xA.new_zeros(xA.shape[0])
            px = xA.new_zeros(xA.shape[0])
            for lo, hi, R in chunks(W, wcols, dims, xA.shape[0]):
                P, _, r, c, d = predicted(xA, R, lo, hi, rows, cols, data, sub, sqrt_w)
                pp += P.pow(2).sum(1)
                px.index_add_(0, r, P[r, c] * d)
            ctx.save_for_backward(xA, W, wcols, rows, cols, data, sub, sqrt_w)
            ctx.sink = sink
            return pp, px

        @staticmethod
        def backward(ctx, g_pp, g_px):
            xA, W, wcols, rows, cols, data, sub, sqrt_w = ctx.saved_tensors
            dims = xA.shape[1]
            g_xA = torch.zeros_like(xA) if ctx.needs_input_grad[0] else None
            g_W = torch.empty_like(W) if ctx.needs_input_grad[1] else None
            for lo, hi, R in chunks(W, wcols, dims, xA.shape[0]):
                P, mask, r, c, d = predicted(xA, R, lo, hi, rows, cols, data, sub, sqrt_w)
                # d pp / d p = 2p, d px / d p = x on the history; then through the weight and the relu.
                G = P.mul_(2 * g_pp[:, None])
                G.index_put_((r, c), g_px[r] * d, accumulate=True)
                if sqrt_w is not None:
                    G.mul_(sqrt_w[lo:hi])
                G.mul_(mask)
                if g_xA is not None:
                    g_xA.addmm_(G, R)
                if g_W is not None or ctx.sink is not None:
                    full = G.T @ xA
                    if g_W is not None:
                        g_W[lo:hi] = full if wcols is None else torch.gather(full, 1, wcols[lo:hi])
                    if ctx.sink is not None:
                        ctx.sink(lo, hi, full)
            return g_xA, g_W, None, None, None, None, None, None, None

    return Fused


_FUSED = None


class _NegativeSampler:
    """Draws a batch's sampled negatives and their importance weights.

    The batch's positive items are always scored (probability 1, weight 1);
    ``n_negatives`` draws with replacement come from ``q`` restricted to the
    other items. An item drawn ``c`` times gets weight ``c / (n_negatives · q_j)``,
    so ``Σ_cols w_j f(j)`` is an unbiased estimate of ``Σ_all items f(j)``.
    Without correction (``correct=False``) it reproduces the earlier behaviour:
    uniform draws over all items, no weights.
    """

    def __init__(self, n_items: int, n_negatives: int, counts: np.ndarray | None, *, correct: bool = True):
        self.n_items = n_items
        self.n_negatives = n_negatives
        self.correct = correct
        if counts is None:
            self.q = np.full(n_items, 1.0 / n_items)
        else:
            q = (np.asarray(counts, dtype=np.float64) + 1.0) ** POPULARITY_POWER
            self.q = q / q.sum()

    def sample(self, Xb: sp.csr_matrix, rng) -> tuple[np.ndarray, np.ndarray | None]:
        """Sorted column ids to score and their weights (``None``: all 1)."""
        pos = np.unique(Xb.indices)
        if not self.correct:
            neg = rng.integers(0, self.n_items, size=self.n_negatives)
            return np.union1d(pos, neg), None
        q = self.q.copy()
        q[pos] = 0.0
        rest = q.sum()
        if self.n_negatives == 0 or rest <= 0:
            return pos.astype(np.int64), None
        q /= rest
        draws = rng.choice(self.n_items, size=self.n_negatives, p=q)
        neg, counts = np.unique(draws, return_counts=True)
        cols = np.concatenate([pos, neg]).astype(np.int64)
        w = np.concatenate([np.ones(len(pos)), counts / (self.n_negatives * q[neg])])
        order = np.argsort(cols, kind="stable")
        return cols[order], w[order]


class _DenseState:
    """The trainable n_items x dims weight, with an optional bool mask of live entries."""

    def __init__(self, weight, mask):
        self.weight, self.mask = weight, mask

    @property
    def params(self):
        """The trained tensor (the optimiser's parameter)."""
        return self.weight

    def _normalised(self):
        import torch.nn.functional as F

        W = self.weight if self.mask is None else self.weight * self.mask
        return F.normalize(W, dim=-1)

    def parts(self, idx, offsets, n_rows: int, cols):
        """``(x·A, output rows, None, None)``: the batch's hidden rows and the scored items' rows
        (all items when ``cols`` is None), as :meth:`_CompactState.parts` returns them."""
        import torch.nn.functional as F

        A = self._normalised()
        # x·A as a sum of history rows: cheap for sparse histories on any catalogue size.
        xA = F.embedding_bag(idx, A, offsets, mode="sum")
        return xA, (A if cols is None else A[cols]), None, None

    def scores(self, idx, offsets, n_rows: int, cols):
        """(batch, n_cols) scores ``(x·A)·a_j`` (all items when ``cols`` is None)."""
        xA, A_out, _, _ = self.parts(idx, offsets, n_rows, cols)
        return xA @ A_out.T

    def embeddings(self) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self._normalised().cpu().numpy().astype(np.float32)

    def snapshot(self) -> "_DenseState":
        return _DenseState(self.weight.detach().clone(), None if self.mask is None else self.mask.clone())

    def live_columns(self) -> np.ndarray:
        """int64 (n_items, nnz): the live columns of each row, sorted (every row has the same count)."""
        mask = self.mask.cpu().numpy()
        return np.nonzero(mask)[1].reshape(mask.shape[0], -1)


class _CompactState:
    """Only the live entries: values (n_items, nnz) trained, their columns (n_items, nnz) fixed.

    Holds ``n_items · nnz`` floats (and int64 columns) instead of
    ``n_items · dims``; scores and gradients are computed item-chunk by
    item-chunk (:func:`_sparse_rows_product`), so no dense n_items x dims array
    is ever formed.
    """

    def __init__(self, values, cols, dims: int, init=None):
        self.values, self.cols, self.dims = values, cols, dims
        #: the live entries' initial values (for restarts), aligned with ``cols``, or None
        self.init = init
        #: regrowth candidates per row to record during the next backward (None: none recorded)
        self.grow: int | None = None
        #: int64 (n_items, grow): the recorded candidates, dead columns by decreasing |gradient| (-1: none)
        self.grow_cols = None

    @property
    def params(self):
        """The trained tensor (the optimiser's parameter)."""
        return self.values

    @classmethod
    def random(cls, n_items: int, dims: int, width: int, gen, device, *, keep_init: bool = False):
        """A sparse start: ``width`` of ``dims`` columns per row drawn uniformly without replacement.

        Columns are drawn from ``gen`` item chunk by item chunk (a chunk's
        random keys, never an ``n_items x dims`` array), sorted within each
        row. Values are uniform with the variance ``1/dims`` of the dense
        start's (normalised) entries, so that the optimiser's steps have the
        same size relative to them (rows are normalised in the forward pass).
        """
        import torch

        cols = torch.empty(n_items, width, dtype=torch.int64)
        step = max(1, _CHUNK_FLOATS // dims)
        for lo in range(0, n_items, step):
            hi = min(n_items, lo + step)
            keys = torch.rand(hi - lo, dims, generator=gen)
            cols[lo:hi] = torch.topk(keys, width, dim=1).indices.sort(dim=1).values
        bound = math.sqrt(3.0 / dims)
        values = torch.empty(n_items, width).uniform_(-bound, bound, generator=gen)
        init = values.clone() if keep_init else None
        return cls(torch.nn.Parameter(values.to(device)), cols.to(device), dims,
                   None if init is None else init.to(device))

    def pruned(self, nnz: int, opt, lr: float, *, restart: bool = False, regrow: int = 0):
        """Keep the ``nnz`` largest-magnitude live entries of each row; returns the new state and optimiser.

        Without ``restart`` the kept entries' NAdam moments and step counters
        carry over (NAdam is elementwise: the updates are those of a masked
        model); with it the kept entries go back to their initial values and
        the optimiser starts afresh. With ``regrow`` (and candidates recorded
        in ``grow_cols``; not with ``restart``) see :meth:`_pruned_regrown`.
        """
        import torch

        if nnz >= self.values.shape[1]:
            return self, opt
        if regrow and self.grow_cols is not None and not restart:
            return self._pruned_regrown(nnz, opt, lr, min(regrow, self.grow_cols.shape[1], nnz - 1))
        with torch.no_grad():
            keep = torch.topk(self.values.abs(), nnz, dim=1).indices
            # Keep the columns sorted within each row.
            keep = torch.gather(keep, 1, torch.argsort(torch.gather(self.cols, 1, keep), dim=1))
            cols = torch.gather(self.cols, 1, keep)
            src = self.init if restart and self.init is not None else self.values
            values = torch.nn.Parameter(torch.gather(src, 1, keep))
            init = None if self.init is None else torch.gather(self.init, 1, keep)
        new = _nadam_carried(values, None if restart else opt, self.values, lambda t: torch.gather(t, 1, keep), lr)
        return _CompactState(values, cols, self.dims, init), new

    @classmethod
    def from_masked(cls, dense: _DenseState, opt, lr: float):
        """The compact state of a masked dense one, with the optimiser's state of the live entries carried over."""
        import torch

        cols_np = dense.live_columns()
        cols = torch.from_numpy(cols_np).to(dense.weight.device)
        with torch.no_grad():
            values = torch.nn.Parameter(torch.gather(dense.weight, 1, cols))
        # The live entries' moments and step counters carry over: the updates are those of the masked dense model.
        new = _nadam_carried(values, opt, dense.weight, lambda t: torch.gather(t, 1, cols), lr)
        return cls(values, cols, dense.weight.shape[1]), new

    def _pruned_regrown(self, nnz: int, opt, lr: float, r: int):
        """Keep ``nnz - r`` entries by magnitude and regrow up to ``r`` dead columns of largest recorded gradient, at 0."""
        import torch

        with torch.no_grad():
            keep = torch.topk(self.values.abs(), nnz - r, dim=1).indices
            cand = self.grow_cols[:, :r]
            # Rows without (enough) candidates keep their next-largest entries instead.
            extra = torch.topk(self.values.abs(), nnz, dim=1).indices[:, nnz - r:]
            use = cand >= 0
            new_cols = torch.cat([torch.gather(self.cols, 1, keep),
                                  torch.where(use, cand, torch.gather(self.cols, 1, extra))], 1)
            order = torch.argsort(new_cols, dim=1)
            cols = torch.gather(new_cols, 1, order)

            def select(t):  # per entry: the kept ones, then regrown ones at 0 (or the next-largest), by column
                return torch.gather(torch.cat([torch.gather(t, 1, keep),
                                               torch.where(use, 0.0, torch.gather(t, 1, extra))], 1), 1, order)

            values = torch.nn.Parameter(select(self.values))
            new = _nadam_carried(values, opt, self.values, select, lr)
        return _CompactState(values, cols, self.dims, None), new

    def _normalised(self):
        import torch.nn.functional as F

        return F.normalize(self.values, dim=-1)

    def parts(self, idx, offsets, n_rows: int, cols):
        """``(x·A, values, columns, sink)``: the batch's hidden rows, the scored items' live entries (all
        items when ``cols`` is None) and the regrowth recorder for their dense gradients (None: none)."""
        import torch

        V = self._normalised()
        C = self.cols
        # x·A: scatter the history rows' live entries into (batch, dims).
        seg = torch.repeat_interleave(torch.arange(n_rows, device=idx.device),
                                      torch.diff(torch.cat([offsets, offsets.new_tensor([idx.numel()])])))
        pos = (seg[:, None] * self.dims + C[idx]).reshape(-1)
        xA = torch.zeros(n_rows * self.dims, dtype=V.dtype, device=V.device).index_add(0, pos, V[idx].reshape(-1))
        xA = xA.view(n_rows, self.dims)
        rows = None
        if cols is not None:
            V, C, rows = V[cols], C[cols], cols
        sink = None if self.grow is None else (lambda lo, hi, g: self._record_growth(rows, lo, hi, g))
        return xA, V, C, sink

    def scores(self, idx, offsets, n_rows: int, cols):
        """(batch, n_cols) scores, item chunk by item chunk (:func:`_sparse_rows_product`)."""
        return _sparse_rows_product(*self.parts(idx, offsets, n_rows, cols))

    def _record_growth(self, rows, lo: int, hi: int, g) -> None:
        """Record in ``grow_cols``, for a chunk's rows, the ``grow`` dead columns of largest |gradient| ``g``."""
        import torch

        ids = torch.arange(lo, hi, device=g.device) if rows is None else rows[lo:hi]
        mag = g.abs().scatter_(1, self.cols[ids], -1.0)  # live columns are never candidates
        top = torch.topk(mag, self.grow, dim=1)
        if self.grow_cols is None or self.grow_cols.shape[1] != self.grow:
            self.grow_cols = torch.full((self.values.shape[0], self.grow), -1, dtype=torch.int64, device=g.device)
        self.grow_cols[ids] = torch.where(top.values > 0, top.indices, -1)

    def embeddings(self) -> sp.csr_matrix:
        import torch

        with torch.no_grad():
            V = self._normalised().cpu().numpy().astype(np.float32)
        n, k = V.shape
        indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
        return sp.csr_matrix((V.ravel(), self.cols.cpu().numpy().ravel(), indptr), shape=(n, self.dims))

    def snapshot(self) -> "_CompactState":
        return _CompactState(self.values.detach().clone(), self.cols, self.dims)

    def live_columns(self) -> np.ndarray:
        return self.cols.cpu().numpy()


def _nadam_carried(values, opt, old_param, select, lr: float):
    """A NAdam over ``values`` whose per-entry state is ``select`` of ``old_param``'s state in ``opt``.

    NAdam is elementwise, so carrying the moments of the entries that survive
    (through ``select``, e.g. a gather of their columns) continues their
    updates unchanged; other state (step counters) is copied. With ``opt``
    None, or no state yet for ``old_param``, the optimiser starts afresh.
    """
    import torch

    new = torch.optim.NAdam([values], lr=lr)
    old = {} if opt is None else opt.state.get(old_param, {})
    if old:
        new.state[values] = {k: (select(v) if torch.is_tensor(v) and v.shape == old_param.shape
                                 else (v.clone() if torch.is_tensor(v) else v)) for k, v in old.items()}
    return new


#: items per chunk of the compact products (a chunk's dense rows: chunk x dims floats)
_CHUNK_FLOATS = 1 << 22

_SPARSE_ROWS = None


def _sparse_rows_product(u, values, cols, sink=None):
    """``u @ Aᵀ`` for A given by its rows' live entries, differentiable in ``u`` and ``values``.

    ``u`` (batch, dims), ``values`` and ``cols`` (n_rows, nnz); returns (batch, n_rows).
    Each item chunk's rows are expanded to dense (chunk, dims) for one matmul,
    so the work is a dense product's but the memory a chunk's. ``sink(lo, hi,
    dense_grad)``, when given, is called during backward with each chunk's
    gradient with respect to its dense rows (live and dead columns).
    """
    global _SPARSE_ROWS
    if _SPARSE_ROWS is None:
        import torch

        class SparseRows(torch.autograd.Function):
            @staticmethod
            def forward(ctx, u, values, cols, sink):
                ctx.save_for_backward(u, values, cols)
                ctx.sink = sink
                out = u.new_empty(u.shape[0], values.shape[0])
                for lo, hi, rows in _chunks(values, cols, u.shape[1]):
                    out[:, lo:hi] = u @ rows.T
                return out

            @staticmethod
            def backward(ctx, grad):
                u, values, cols = ctx.saved_tensors
                gu = torch.zeros_like(u) if ctx.needs_input_grad[0] else None
                gv = torch.empty_like(values) if ctx.needs_input_grad[1] else None
                for lo, hi, rows in _chunks(values, cols, u.shape[1]):
                    g = grad[:, lo:hi]
                    if gu is not None:
                        gu.addmm_(g, rows)
                    if gv is not None or ctx.sink is not None:
                        full = g.T @ u
                        if gv is not None:
                            # Only the live entries' gradients: gathered from the chunk's dense one.
                            gv[lo:hi] = torch.gather(full, 1, cols[lo:hi])
                        if ctx.sink is not None:
                            ctx.sink(lo, hi, full)
                return gu, gv, None, None

        _SPARSE_ROWS = SparseRows
    return _SPARSE_ROWS.apply(u, values, cols, sink)


def _chunks(values, cols, dims: int, step: int | None = None):
    """``(lo, hi, dense rows)`` of compact rows ``values`` at ``cols``, ``step`` rows at a time (default: as many
    as fit in ``_CHUNK_FLOATS`` floats)."""
    import torch

    n = values.shape[0]
    step = max(1, _CHUNK_FLOATS // dims) if step is None else step
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        rows = torch.zeros(hi - lo, dims, dtype=values.dtype, device=values.device)
        rows.scatter_(1, cols[lo:hi], values[lo:hi])
        yield lo, hi, rows


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
    start_nnz : live entries per row when training starts (``nnz <= start_nnz
        <= dims``); ``None`` (default): ``dims``, the dense start. Below
        ``dims`` (a sparse start) each row starts with ``start_nnz`` columns
        drawn at random (seeded), training runs on the compact state from the
        first step, and the schedule prunes from ``start_nnz`` to ``nnz`` by
        magnitude within the live entries: the ``n_items x dims`` weight,
        mask and optimiser state never exist.
    regrow : with a sparse start, the share of each row's entries that every
        pruning event but the last gives to dead columns (RigL-like): the
        event keeps ``(1 - regrow) · n`` entries by magnitude and adds the
        ``regrow · n`` dead columns with the largest gradient in the step
        before (the gradient through the item's output scores), at value 0
        with fresh NAdam moments. 0 turns it off; ignored with the dense
        start, where every column is live, and with ``restart``.
    warmup_epochs : epochs before the first pruning event.
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
    epochs: int = 8
    schedule: str = "exponential"
    restart: bool = False
    prune_steps: int = 100
    warmup_epochs: int = 0
    finetune_epochs: int = 6
    start_nnz: int | None = None
    regrow: float = 0.3

    @property
    def _final_nnz(self) -> int:  # type: ignore[override]
        return self.nnz

    @property
    def _start_dims(self) -> int:  # type: ignore[override]
        return self.dims if self.start_nnz is None else self.start_nnz

    @property
    def _sparse_start(self) -> bool:  # type: ignore[override]
        return self.start_nnz is not None and self.start_nnz < self.dims

    def _regrow(self, nnz: int) -> int:  # type: ignore[override]
        return int(round(self.regrow * nnz)) if self._sparse_start else 0

    @property
    def _restart(self) -> bool:  # type: ignore[override]
        return bool(self.restart)

    def check_params(self) -> None:
        super().check_params()
        if self.start_nnz is None:
            check_int(self.nnz, "nnz", 1, self.dims, error=TrainingError, hint=f" (dims={self.dims})")
        else:
            check_int(self.start_nnz, "start_nnz", 1, self.dims, error=TrainingError,
                      hint=f" (at most dims={self.dims}, or None for the dense start)")
            check_int(self.nnz, "nnz", 1, self.start_nnz, error=TrainingError,
                      hint=f" (at most start_nnz={self.start_nnz})")
        check_float(self.regrow, "regrow", 0.0, 1.0, error=TrainingError)
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
        nnz_schedule(self.schedule, self._start_dims, self.nnz, self.prune_steps)

    def _pruning_plan(self, n_batches: int) -> dict[int, int]:
        levels = nnz_schedule(self.schedule, self._start_dims, self.nnz, self.prune_steps)
        return pruning_plan(levels, n_batches, self.warmup_epochs, self.epochs - self.finetune_epochs)

    def _prune(self, weight, mask, init, nnz: int) -> None:
        import torch

        with torch.no_grad():
            mag = (weight * mask).abs()
            top = torch.topk(mag, nnz, dim=1).indices
            new = torch.zeros_like(mask)
            new.scatter_(1, top, True)
            mask.copy_(new)
            if self.restart and init is not None:
                weight.copy_(init)
            weight.mul_(mask)

    def _finish(self, state) -> None:
        # Exactly nnz entries per row, taken from the live columns (an exact zero stays stored).
        A = state.embeddings()
        if sp.issparse(A):
            self.embeddings_ = A
            return
        n_items = A.shape[0]
        cols = state.live_columns() if state.mask is not None else np.tile(np.arange(A.shape[1]), (n_items, 1))
        if cols.shape[1] != self.nnz:
            raise TrainingError(f"internal: {cols.shape[1]} active dims per row, expected {self.nnz}")
        data = np.take_along_axis(A, cols, axis=1)
        indptr = np.arange(0, n_items * self.nnz + 1, self.nnz, dtype=np.int64)
        self.embeddings_ = sp.csr_matrix((data.ravel(), cols.ravel(), indptr), shape=A.shape)
