"""Checkpoints: item embeddings plus everything needed to serve them.

A checkpoint is a directory::

    manifest.json      format, version, model kind, shape, nnz per row,
                       training config, data description, metrics, history,
                       fingerprint of the embeddings and id table, and
                       ``files``: size and sha256 of every array file
    item_ids.npy       external item ids (unicode), row order of the embeddings
    popularity.npy     int64 number of training users per item
    embeddings.npy     float32 (n_items, dims)             -- dense storage
    data.npy, indices.npy, indptr.npy                       -- sparse CSR storage

Everything is loaded with ``allow_pickle=False`` and range-checked, after
every file is checked against its recorded sha256 (format 2). A checkpoint is written to a
temporary sibling directory and renamed into place, so a failed save leaves
nothing at the target path.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import warnings
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from . import __version__
from ._atomic import atomic_directory
from ._io import (array_digest, load_array, load_csr, read_manifest, record_files, save_array,
                  save_csr, verify_files, write_json)
from .data import IdMap, Interactions
from .errors import CheckpointError, DataError, UnknownItemsWarning
from .models import encode_users, score_items
from .scoring import score_rows

logger = logging.getLogger(__name__)

FORMAT = "elsa-index-checkpoint"
#: 2: the manifest records ``files`` (bytes and sha256 of every array file); format 1 (no ``files``) still
#: loads when its ``fingerprint`` matches the arrays (popularity.npy is then not covered).
FORMAT_VERSION = 2
_FINGERPRINT_LEN = 32
KINDS = ("elsa", "compressed_elsa", "imported")

__all__ = ["Checkpoint", "FORMAT", "FORMAT_VERSION", "load_checkpoint"]


@dataclass
class Checkpoint:
    """Item embeddings with their id table and metadata.

    Attributes
    ----------
    embeddings : ndarray float32 (n_items, dims) or scipy CSR float32.
    item_ids : IdMap, one external id per embedding row.
    popularity : ndarray int64 (n_items,), training users per item (zeros if unknown).
    kind : ``"elsa"``, ``"compressed_elsa"`` or ``"imported"``.
    config : training configuration (model parameters, data settings).
    data : description of the training data (fingerprint, sizes, source).
    metrics : evaluation results, e.g. ``{"recall@20": 0.35}``.
    history : per-epoch training statistics.

    The embedding arrays are the checkpoint's own (copied from the caller's
    on construction) and read-only, so the :attr:`fingerprint`, computed once,
    always describes them. Assigning new ``embeddings`` or ``item_ids``
    validates them again and recomputes it.
    """

    embeddings: Any
    item_ids: IdMap
    popularity: np.ndarray
    kind: str = "imported"
    config: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    created: str = ""
    #: the arrays are fresh and owned by this checkpoint (e.g. just loaded): no defensive copy
    _owned: InitVar[bool] = False

    def __post_init__(self, _owned: bool = False):
        if not isinstance(self.item_ids, IdMap):
            self.item_ids = IdMap(self.item_ids)
        object.__setattr__(self, "embeddings", _check_embeddings(self.embeddings, "embeddings", owned=_owned))
        self.item_ids.ids.flags.writeable = False
        object.__setattr__(self, "_fp", None)
        n = self.embeddings.shape[0]
        if len(self.item_ids) != n:
            raise CheckpointError(f"{len(self.item_ids)} item ids for {n} embedding rows; expected one id per row")
        pop = np.asarray(self.popularity)
        if pop.shape != (n,) or pop.dtype.kind not in "iuf":
            raise CheckpointError(f"popularity must be {n} integer counts (one per item), got {pop.dtype} {pop.shape}")
        if pop.size and (not np.isfinite(pop).all() or pop.min() < 0):
            raise CheckpointError("popularity must hold finite non-negative counts (training users per item)")
        if pop.dtype.kind == "f" and (pop != np.round(pop)).any():
            raise CheckpointError(f"popularity must be {n} integer counts (one per item), got fractional values")
        self.popularity = pop.astype(np.int64)
        if self.kind not in KINDS:
            raise CheckpointError(f"unknown checkpoint kind {self.kind!r}; expected one of {KINDS}")
        if not self.created:
            self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def __setattr__(self, name, value):
        if name in ("embeddings", "item_ids") and "_fp" in self.__dict__:
            # A new array or id table: validate, freeze and fingerprint it again.
            if name == "item_ids":
                value = value if isinstance(value, IdMap) else IdMap(value)
                if len(value) != self.n_items:
                    raise CheckpointError(f"{len(value)} item ids for {self.n_items} embedding rows; expected one id per row")
                value.ids.flags.writeable = False
            else:
                value = _check_embeddings(value, "embeddings")
                if value.shape[0] != len(self.item_ids):
                    raise CheckpointError(
                        f"{value.shape[0]} embedding rows for {len(self.item_ids)} item ids; expected one row per id")
            object.__setattr__(self, name, value)
            object.__setattr__(self, "_fp", None)
            return
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------ properties

    @property
    def sparse(self) -> bool:
        return sp.issparse(self.embeddings)

    @property
    def n_items(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dims(self) -> int:
        return self.embeddings.shape[1]

    def nnz_per_row(self) -> np.ndarray:
        """Stored entries per row (``dims`` for every row of a dense checkpoint)."""
        if self.sparse:
            return np.diff(self.embeddings.indptr)
        return np.full(self.n_items, self.dims, np.int64)

    @property
    def fingerprint(self) -> str:
        """sha256 prefix of the embeddings and the item-id table (computed once; the arrays are read-only)."""
        fp = self.__dict__.get("_fp")
        if fp is None:
            fp = _digest(self.embeddings, self.item_ids.ids)
            object.__setattr__(self, "_fp", fp)
        return fp

    def nbytes(self) -> int:
        """Bytes of the embedding arrays (values and, if sparse, int32 column indices)."""
        if self.sparse:
            return int(self.embeddings.data.nbytes + self.embeddings.nnz * 4 + self.embeddings.indptr.nbytes)
        return int(self.embeddings.nbytes)

    # ------------------------------------------------------------- scoring

    def encode(self, X: sp.spmatrix) -> np.ndarray:
        """User vectors ``x·A`` for binary histories X (n_users, n_items)."""
        return encode_users(_check_histories(X, self.n_items), self.embeddings)

    def score(self, X: sp.spmatrix) -> np.ndarray:
        """Scores of every item, float32 (n_users, n_items)."""
        return score_items(_check_histories(X, self.n_items), self.embeddings)

    def score_candidates(self, queries, candidates, *, dtype=np.float32) -> np.ndarray:
        """Exact inner products of each query with its own candidate items.

        Parameters
        ----------
        queries : ndarray (n, dims) or scipy sparse (n, dims), or one 1-D vector.
        candidates : int array (n, c) of item rows per query (one 1-D array for
            one query); ``-1`` marks padding.
        dtype : dtype of the result. The sums are taken in float64 (stored
            entries in row order) whatever ``dtype``.

        Returns
        -------
        ndarray ``dtype`` (n, c): ``queries[r] · a_j`` for each candidate ``j``
        of row ``r``; ``-inf`` where the candidate is ``-1``.

        Raises
        ------
        CheckpointError
            Shapes that do not fit, or candidates outside ``[-1, n_items)``.
        """
        try:
            return score_rows(self.embeddings, queries, candidates, dtype)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None

    def histories_to_matrix(self, histories, *, warn: bool = True,
                            stacklevel: int = 2) -> tuple[sp.csr_matrix, np.ndarray]:
        """Binary user x item matrix of external-id histories.

        Parameters
        ----------
        histories : a sequence of sequences of external item ids (one per
            user), or a scipy sparse (n_users, n_items) matrix of item rows
            (validated and returned as float32 CSR).
        warn : warn with :class:`~elsa_index.errors.UnknownItemsWarning` when
            ids are not in the catalogue (they are ignored either way).
        stacklevel : passed to :func:`warnings.warn` (2: the caller's line).

        Returns
        -------
        (X, empty) : float32 CSR (n_users, n_items) with a 1 per known history
            item (duplicates counted once), and bool (n_users,), True for rows
            without any known item.

        Raises
        ------
        DataError
            Not a list of lists (e.g. one string), or a matrix of the wrong width.
        """
        if sp.issparse(histories):
            X = sp.csr_matrix(histories, dtype=np.float32)
            if X.shape[1] != self.n_items:
                raise DataError(f"history matrix has {X.shape[1]} columns; the catalogue has {self.n_items} items")
            return X, np.diff(X.indptr) == 0
        if isinstance(histories, (str, bytes)) or not isinstance(histories, (Sequence, np.ndarray)):
            raise DataError("histories must be a list of lists of item ids (one list per user) or a CSR matrix")
        if isinstance(histories, np.ndarray) and histories.dtype.kind in "fcb":
            raise DataError(f"histories is a dense {histories.dtype} array of shape {histories.shape}; expected lists "
                            "of item ids, or a scipy CSR (n_users, n_items) matrix (scipy.sparse.csr_matrix(X))")
        rows, cols, unknown = [], [], []
        for r, h in enumerate(histories):
            if isinstance(h, (str, bytes)):
                raise DataError(f"history {r} is a single string {h!r}; expected a list of item ids")
            if not isinstance(h, (Sequence, np.ndarray, set, frozenset)):
                raise DataError(f"history {r} is {type(h).__name__}; expected a list of item ids")
            h = list(h)
            bad = [v for v in h if isinstance(v, (bool, np.bool_)) or not isinstance(v, (str, int, np.integer))]
            if bad:
                raise DataError(f"history {r} holds {bad[0]!r} ({type(bad[0]).__name__}); item ids must be strings "
                                "or integers")
            idx = self.item_ids.index(h, missing="ignore")
            if (idx < 0).any():
                unknown.extend(str(v) for v, i in zip(h, idx) if i < 0)
            idx = np.unique(idx[idx >= 0])
            rows.append(np.full(len(idx), r)), cols.append(idx)
        if unknown and warn:
            warnings.warn(
                f"{len(unknown)} history item id(s) are not in the catalogue and were ignored, e.g. {unknown[:5]}",
                UnknownItemsWarning, stacklevel=stacklevel + 1,
            )
        n = len(histories)
        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        X = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n, self.n_items))
        return X, np.diff(X.indptr) == 0

    # ----------------------------------------------------------- persistence

    def manifest(self) -> dict:
        nnz = self.nnz_per_row()
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "elsa_index_version": __version__,
            "created": self.created,
            "kind": self.kind,
            "storage": "csr" if self.sparse else "dense",
            "n_items": self.n_items,
            "dims": self.dims,
            "nnz_per_row": {
                "min": int(nnz.min()) if len(nnz) else 0,
                "max": int(nnz.max()) if len(nnz) else 0,
                "mean": float(nnz.mean()) if len(nnz) else 0.0,
            },
            "embedding_bytes": self.nbytes(),
            "fingerprint": self.fingerprint,
            "config": self.config,
            "data": self.data,
            "metrics": self.metrics,
            "history": self.history,
        }

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the checkpoint directory atomically; returns its path."""
        path = Path(path)
        with atomic_directory(path, overwrite=overwrite, error=CheckpointError, kind=FORMAT) as tmp:
            if self.sparse:
                save_csr(tmp, "", self.embeddings)
            else:
                save_array(tmp / "embeddings.npy", self.embeddings)
            save_array(tmp / "item_ids.npy", self.item_ids.ids)
            save_array(tmp / "popularity.npy", self.popularity)
            # Hashed once here (the bytes are still in the page cache), checked by every load.
            manifest = self.manifest()
            manifest["files"] = record_files(tmp, _file_names(manifest["storage"]))
            write_json(tmp / "manifest.json", manifest)
        logger.info("saved %s checkpoint to %s", self.kind, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify: bool = True, mmap: bool = False) -> "Checkpoint":
        """Read a checkpoint directory written by :meth:`save`.

        Parameters
        ----------
        path : the checkpoint directory.
        verify : check every file against the size and sha256 recorded in the
            manifest before reading it (one streamed read of each file, about
            1.7 GB/s); the manifest's fingerprint then describes the arrays and
            is kept, so :attr:`fingerprint` costs nothing later. A format-1
            checkpoint (no digests) is verified by recomputing its fingerprint
            instead (popularity.npy is not covered: re-save it to record
            digests). A manifest with neither is refused. False trusts the
            files (no hashing); the arrays are range-checked either way.
        mmap : memory-map the embedding arrays read-only instead of reading
            them into memory (pages are read on first use and shared with the
            page cache); the directory must stay in place while in use.

        Raises
        ------
        CheckpointError
            Not a directory, missing or malformed files, a newer format version,
            pickled arrays, wrong dtypes, out-of-range indices, non-finite values,
            duplicate item ids, negative popularity, or (``verify``) a file that
            does not match its recorded digest, or a manifest without digests
            and fingerprint.
        """
        path = Path(path)
        m = read_manifest(path, "manifest.json", FORMAT, FORMAT_VERSION, "checkpoint", CheckpointError)
        for key in ("kind", "storage", "n_items", "dims"):
            if key not in m:
                raise CheckpointError(f"{path}/manifest.json lacks the field {key!r}")
        n, d = m["n_items"], m["dims"]
        for key in ("n_items", "dims"):
            if isinstance(m[key], bool) or not isinstance(m[key], int) or m[key] < 0:
                raise CheckpointError(f"{path}/manifest.json: {key} must be a non-negative integer, got {m[key]!r}")
        if m["storage"] not in ("csr", "dense"):
            raise CheckpointError(f"{path}: unknown storage {m['storage']!r}; expected 'dense' or 'csr'")
        fp = m.get("fingerprint")
        if fp is not None and not (isinstance(fp, str) and len(fp) == _FINGERPRINT_LEN
                                   and all(c in "0123456789abcdef" for c in fp)):
            raise CheckpointError(f"{path}/manifest.json: fingerprint must be {_FINGERPRINT_LEN} hex digits, got {fp!r}")
        legacy = False  # verified through the recomputed fingerprint (format 1)
        if verify:
            if "files" in m:
                verify_files(path, m["files"], CheckpointError, manifest="manifest.json",
                             expected=_file_names(m["storage"]))
                if fp is None:
                    raise CheckpointError(f"{path}/manifest.json lacks the field 'fingerprint'")
            elif m["format_version"] >= 2:
                raise CheckpointError(
                    f"{path}/manifest.json lacks the field 'files' (the size and sha256 of every array file); "
                    "the manifest is corrupted or was edited, so the arrays cannot be verified")
            elif fp is None:
                raise CheckpointError(
                    f"{path}/manifest.json has neither file digests nor a fingerprint, so its arrays cannot be "
                    "verified; load it with verify=False only if you trust these files, then save it again "
                    "to record digests")
            else:
                legacy = True
        if m["storage"] == "csr":
            emb = load_csr(path, "", (n, d), CheckpointError, mmap=mmap)
        else:
            emb = load_array(path / "embeddings.npy", CheckpointError, mmap=mmap)
            if emb.shape != (n, d):
                raise CheckpointError(f"{path}: embeddings.npy has shape {emb.shape}, manifest says ({n}, {d})")
            if emb.dtype.kind != "f":
                raise CheckpointError(f"{path}: embeddings.npy has dtype {emb.dtype}; expected float32")
        ids = load_array(path / "item_ids.npy", CheckpointError)
        if ids.dtype.kind != "U" or ids.shape != (n,):
            raise CheckpointError(
                f"{path}: item_ids.npy holds {ids.dtype} {ids.shape}; expected unicode strings of shape ({n},)")
        pop = load_array(path / "popularity.npy", CheckpointError)
        if pop.dtype.kind not in "iu" or pop.shape != (n,):
            raise CheckpointError(
                f"{path}: popularity.npy holds {pop.dtype} {pop.shape}; expected int64 counts of shape ({n},)")
        if pop.size and pop.min() < 0:
            raise CheckpointError(f"{path}: popularity.npy holds negative counts; expected training users per item")
        try:
            ids = IdMap(ids)
        except ValueError as exc:  # e.g. duplicate ids
            raise CheckpointError(f"{path}: item_ids.npy: {exc}") from None
        _check_manifest_fields(path, m)
        try:
            ckpt = cls(
                emb, ids, pop, kind=m["kind"], config=m.get("config", {}), data=m.get("data", {}),
                metrics=m.get("metrics", {}), history=m.get("history", []), created=m.get("created", ""),
                _owned=True,
            )
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        if legacy:
            # Format 1: the fingerprint, recomputed from the arrays once (and kept), is the only check.
            if fp != ckpt.fingerprint:
                raise CheckpointError(
                    f"{path}: arrays do not match the manifest fingerprint (corrupted or edited files)")
            logger.warning("%s was written by an older elsa-index (checkpoint format 1, no file digests): its "
                           "embeddings and ids match the fingerprint, popularity.npy is not verified; save it "
                           "again to record digests", path)
        elif fp is not None:
            # The files are byte for byte those save() wrote with this fingerprint (verified above), or trusted.
            object.__setattr__(ckpt, "_fp", fp)
        return ckpt

    # ------------------------------------------------------------- building

    @classmethod
    def from_model(cls, model, train: Interactions, *, data: dict | None = None, config: dict | None = None) -> "Checkpoint":
        """Checkpoint of a fitted ELSA / CompressedELSA trained on ``train``."""
        if not hasattr(model, "embeddings_"):
            raise CheckpointError(f"{type(model).__name__} is not fitted")
        info = {"fingerprint": train.fingerprint(), "n_users": train.n_users, "n_items": train.n_items, "n_interactions": train.nnz}
        info.update(data or {})
        cfg = {"model": model.get_params()}
        cfg.update(config or {})
        return cls(
            model.embeddings_, train.item_ids, train.item_popularity(), kind=model.kind,
            config=cfg, data=info, history=list(getattr(model, "history_", [])),
        )

    def __repr__(self) -> str:
        nnz = self.nnz_per_row()
        extra = f", nnz/row {nnz.mean():.1f}" if self.sparse else ""
        return f"Checkpoint(kind={self.kind!r}, n_items={self.n_items}, dims={self.dims}{extra})"


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Shorthand for :meth:`Checkpoint.load`."""
    return Checkpoint.load(path)


def _check_manifest_fields(path: Path, m: dict) -> None:
    """The descriptive fields of a manifest have the types the library relies on (names the field otherwise)."""
    for name, kind in (("config", dict), ("data", dict), ("metrics", dict), ("history", list), ("created", str)):
        if name in m and not isinstance(m[name], kind):
            raise CheckpointError(f"{path}: manifest field {name!r} is {type(m[name]).__name__}; expected "
                                  f"{'an object' if kind is dict else 'a list' if kind is list else 'a string'}")
    for key, value in m.get("metrics", {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckpointError(f"{path}: manifest metric {key!r} is {value!r}; expected a finite number")


def _file_names(storage: str) -> tuple[str, ...]:
    """The array files of a checkpoint with this storage, as recorded in its manifest."""
    emb = ("data.npy", "indices.npy", "indptr.npy") if storage == "csr" else ("embeddings.npy",)
    return (*emb, "item_ids.npy", "popularity.npy")


def _digest(emb, ids: np.ndarray) -> str:
    """The checkpoint fingerprint of embeddings and ids (the definition stored in manifests)."""
    if sp.issparse(emb):
        return array_digest(emb.data, emb.indices.astype(np.int64), emb.indptr.astype(np.int64), ids)
    return array_digest(emb, ids)


def _check_embeddings(emb, name: str, *, owned: bool = False):
    """Validated float32 embeddings (canonical CSR or C-contiguous), read-only.

    The caller's arrays are copied unless ``owned`` (fresh arrays nobody else
    holds, e.g. just loaded), so freezing them never touches a caller's data.
    """
    if sp.issparse(emb):
        emb = sp.csr_matrix(emb)
        if emb.dtype.kind not in "fiu":
            raise CheckpointError(f"{name} must be numeric, got dtype {emb.dtype}")
        writable = all(a.flags.writeable for a in (emb.data, emb.indices, emb.indptr))
        if not owned or emb.dtype != np.float32 or not (writable or emb.has_canonical_format):
            emb = emb.astype(np.float32, copy=True)
        if not emb.has_canonical_format:
            emb.sum_duplicates()
        emb.sort_indices()
        for a in (emb.data, emb.indices, emb.indptr):
            a.flags.writeable = False
        values = emb.data
    else:
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.dtype.kind not in "fiu":
            raise CheckpointError(f"{name} must be a 2-D numeric array (n_items, dims), got {emb.dtype} {emb.shape}")
        if owned:
            emb = np.ascontiguousarray(emb, dtype=np.float32)
        else:
            emb = np.array(emb, dtype=np.float32, order="C", copy=True)
        emb.flags.writeable = False
        values = emb
    if emb.shape[0] == 0 or emb.shape[1] == 0:
        raise CheckpointError(f"{name} is empty (shape {emb.shape}); expected at least one item and one dimension")
    bad = ~np.isfinite(values)
    if bad.any():
        raise CheckpointError(f"{name} contain {int(bad.sum())} NaN/inf values; expected finite weights")
    return emb


def _check_histories(X, n_items: int) -> sp.csr_matrix:
    if not sp.issparse(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise CheckpointError(f"histories must be a 2-D (n_users, n_items) matrix, got shape {X.shape}")
    X = sp.csr_matrix(X, dtype=np.float32)
    if X.shape[1] != n_items:
        raise CheckpointError(f"histories have {X.shape[1]} item columns; the checkpoint has {n_items} items")
    return X
