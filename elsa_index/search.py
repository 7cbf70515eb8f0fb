"""One search API over every backend: recommend for user histories, similar items, raw vector search.

An *index directory* is self-contained::

    index.json     format, version, backend name, checkpoint fingerprint
    checkpoint/    the checkpoint it was built from (item embeddings, ids, popularity)
    backend/       the backend's own files (see ``elsa_index.indexers``)

Users are encoded exactly as the model scores them: ``u = x·A``, the sum of
the item embeddings of the history; the backend then finds the items with the
largest ``u·a_j``.

An opened index memory-maps the large read-only arrays (the checkpoint's
embeddings, the ``sparse`` backend's postings): opening is fast, pages are
read on first use and shared with the page cache. Keep the directory in
place while the index is open; ``Index.close()`` (or ``with open_index(p) as
idx:``) releases what the backend holds (e.g. Lucene's reader).

Restricted search (:meth:`Index.search_within`, ``recommend(allow=...)``):
the backend's own restricted search where it has one (Lucene: a filter
clause), otherwise exact scores of the candidates
(:func:`elsa_index.scoring.score_rows`, the summation order the exact
``sparse`` backend uses too) and :mod:`elsa_index.topk`. Ties go to the lower
item index everywhere, so exact paths return identical rows.

Catalogue updates (:meth:`Index.upsert_items`, :meth:`Index.delete_items`):
only backends that change items in place (``milvus``) accept them; the others
ask for a rebuild. An update makes a new checkpoint (changed rows replaced,
new items appended with popularity 0, deleted items removed and the rows
after them moved up), applies it to the backend (visible to the next query)
and, for an index directory, rewrites its checkpoint copy, the backend's
files and ``index.json``, each replaced in one step, in that order. A crash
between the steps leaves parts that disagree on the checkpoint fingerprint;
:func:`open_index` then refuses the directory (rebuild it). A checkpoint
directory given to :func:`open_index` as ``checkpoint=`` is never written.
Each update copies the catalogue's arrays once and rewrites the checkpoint
copy: batch changes into few calls.

Thread safety: an opened :class:`Index` only reads its arrays and the
backend's index; ``recommend``, ``similar_items``, ``search`` and ``search_within`` may be called
from several threads at once. ``set_search_params``, ``upsert_items`` and
``delete_items`` must not run concurrently with searches.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp

from . import __version__
from ._checks import check_k
from ._atomic import _replace_dir, _unique, atomic_directory, atomic_file
from ._io import read_manifest, write_json
from .checkpoint import Checkpoint
from .errors import BackendError, CheckpointError, DataError, NoPopularityWarning, UnknownItemsWarning
from .indexers import get_backend
from .indexers.base import Backend
from .indexers.requests import finish
from .topk import topk_unchecked

logger = logging.getLogger(__name__)

INDEX_DIR_FORMAT = "elsa-index-index"
INDEX_DIR_VERSION = 1

__all__ = ["Index", "Recommendations", "build_index", "open_index", "UnknownItemsWarning"]


class Recommendations(NamedTuple):
    """Batched results, best first, shape (n, k).

    ids : external item ids (str); ``""`` pads rows with fewer than k results.
    scores : float32 inner products (``-inf`` for padding); for fallback rows,
        the items' training popularity.
    indices : int64 row indices into the checkpoint (-1 for padding).
    fallback : bool (n,), True where the user had no known history and got
        the most popular items.
    """

    ids: np.ndarray
    scores: np.ndarray
    indices: np.ndarray
    fallback: np.ndarray


class Index:
    """A backend plus the checkpoint it indexes. Use :func:`open_index` or :func:`build_index`."""

    def __init__(self, checkpoint: Checkpoint, backend, path: Path | None = None):
        if backend.fingerprint_ != checkpoint.fingerprint:
            raise BackendError(
                f"the {backend.name!r} index was built from checkpoint {backend.fingerprint_}, "
                f"but the given checkpoint is {checkpoint.fingerprint}; rebuild the index or use its own checkpoint"
            )
        self.backend = backend
        self.path = path
        self._closed = False
        self._use_checkpoint(checkpoint)

    def _use_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        emb = checkpoint.embeddings
        self._emb = sp.csr_matrix(emb) if sp.issparse(emb) else emb
        self._popular = np.lexsort((np.arange(checkpoint.n_items), -checkpoint.popularity))

    # ---------------------------------------------------------------- basics

    @property
    def item_ids(self) -> np.ndarray:
        return self.checkpoint.item_ids.ids

    @property
    def n_items(self) -> int:
        return self.checkpoint.n_items

    def set_search_params(self, **params) -> "Index":
        self.backend.set_search_params(**params)
        return self

    def info(self) -> dict[str, Any]:
        out = {"path": None if self.path is None else str(self.path), "checkpoint": self.checkpoint.manifest()}
        out["checkpoint"].pop("history", None)
        out["backend"] = self.backend.info()
        return out

    def __repr__(self) -> str:
        return f"Index({self.backend.name!r}, {self.checkpoint!r})"

    def close(self) -> None:
        """Release what the backend holds (e.g. Lucene's reader and temporary files); idempotent.

        A closed index refuses every further query (whatever its backend), so a use after close is an error,
        never a silent answer from half-released state.
        """
        self._closed = True
        self.backend.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("this index is closed; open it again with open_index(path) to query it")

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    # ------------------------------------------------------------ histories

    def histories_matrix(self, histories, *, warn: bool = True) -> sp.csr_matrix:
        """Binary CSR (n_users, n_items) from lists of external ids (or a CSR matrix, validated).

        See :meth:`~elsa_index.checkpoint.Checkpoint.histories_to_matrix`.
        """
        return self.checkpoint.histories_to_matrix(histories, warn=warn, stacklevel=3)[0]

    def _item_indices(self, ids, what: str, *, unique: bool = True) -> np.ndarray | None:
        """Row indices of external ids; unknown ids raise a DataError naming them."""
        if ids is None:
            return None
        if isinstance(ids, (str, bytes)):
            ids = [ids]
        idx = self.checkpoint.item_ids.index(list(ids), missing="ignore")
        if (idx < 0).any():
            bad = [str(v) for v, i in zip(ids, idx) if i < 0][:5]
            raise DataError(f"{what} contains item id(s) not in the catalogue: {bad}")
        return np.unique(idx) if unique else idx

    def encode(self, X: sp.csr_matrix):
        """User vectors ``x·A``: sparse CSR for sparse checkpoints, else dense float32."""
        U = X @ self._emb
        return sp.csr_matrix(U, dtype=np.float32) if sp.issparse(U) else np.asarray(U, dtype=np.float32)

    # ------------------------------------------------------------- recommend

    def recommend(self, histories, k: int = 20, *, exclude_history: bool = True,
                  allow: Sequence[str] | None = None, deny: Sequence[str] | None = None) -> Recommendations:
        """Top-k items for each user history.

        Parameters
        ----------
        histories : list of lists of external item ids, or a CSR matrix
            (n_users, n_items) of the checkpoint's item indices.
        k : items per user (>= 1); rows are padded when fewer items qualify.
        exclude_history : never return an item of the user's own history.
        allow : only these item ids may be returned. Scored exactly against
            the checkpoint's embeddings (no backend involved; see
            :meth:`search_within` for a restricted search by item indices
            that uses the backend's own when it has one).
        deny : these item ids are never returned.

        Unknown history ids are ignored with an :class:`UnknownItemsWarning`;
        a user left with an empty history gets the most popular items
        (``fallback`` is True for that row).
        """
        self._check_open()
        k = check_k(k, error=BackendError)
        X, empty = self.checkpoint.histories_to_matrix(histories, stacklevel=3)
        n = X.shape[0]
        allow_idx = self._item_indices(allow, "allow")
        deny_idx = self._item_indices(deny, "deny")
        exclude = X.copy() if exclude_history else sp.csr_matrix(X.shape, dtype=np.float32)
        if deny_idx is not None and len(deny_idx):
            D = sp.csr_matrix((np.ones(n * len(deny_idx), np.float32),
                               (np.repeat(np.arange(n), len(deny_idx)), np.tile(deny_idx, n))), shape=X.shape)
            exclude = exclude + D
        exclude = sp.csr_matrix(exclude)
        exclude.sort_indices()
        ids = np.full((n, k), -1, np.int64)
        scores = np.full((n, k), -np.inf, np.float32)
        active = np.nonzero(~empty)[0]
        if len(active):
            U = self.encode(X[active])
            if allow_idx is not None:
                ids[active], scores[active] = self._score_within(U, allow_idx, exclude[active], k)
            else:
                res = self.backend.search(U, k, exclude=exclude[active])
                ids[active], scores[active] = res.ids, res.scores
        for r in np.nonzero(empty)[0]:
            ids[r], scores[r] = self._popular_row(exclude[r], allow_idx, k)
        return Recommendations(self.checkpoint.item_ids.external(ids), scores, ids, empty)

    def _score_within(self, Q, cand: np.ndarray, exclude: sp.csr_matrix | None, k: int):
        """Exact top-k among ``cand`` (sorted unique item rows): the shared scores and tie rule, no backend."""
        n = Q.shape[0]
        S = self.checkpoint.score_candidates(Q, np.broadcast_to(cand, (n, len(cand))))
        ex = None if exclude is None else exclude[:, cand]
        local, top = topk_unchecked(S, k, ex if ex is not None and ex.nnz else None, copy=False)
        # The backends' output rules: overflow refused, padded to k with -1 / -inf (already ranked and excluded).
        res = finish(np.where(local >= 0, cand[np.clip(local, 0, None)], -1), top, None, k)
        return res.ids, res.scores

    def _popular_row(self, exclude_row: sp.csr_matrix, allow_idx, k: int):
        if not self.checkpoint.popularity.any():
            warnings.warn("a user with no known history fell back to popular items, but this checkpoint has no "
                          "popularity (e.g. imported without --popularity): the items come in catalogue order",
                          NoPopularityWarning, stacklevel=4)
        order = self._popular
        if allow_idx is not None:
            order = order[np.isin(order, allow_idx)]
        if exclude_row.nnz:
            order = order[~np.isin(order, exclude_row.indices)]
        top = order[:k]
        ids = np.full(k, -1, np.int64)
        sc = np.full(k, -np.inf, np.float32)
        ids[: len(top)] = top
        sc[: len(top)] = self.checkpoint.popularity[top]
        return ids, sc

    # --------------------------------------------------------- similar items

    def similar_items(self, item_ids: Sequence[str], k: int = 20, *, include_self: bool = False) -> Recommendations:
        """Items whose embeddings have the largest inner product with each given item's embedding."""
        self._check_open()
        k = check_k(k, error=BackendError)
        idx = self._item_indices(item_ids, "item_ids", unique=False)
        Q = self._emb[idx]
        exclude = None if include_self else [np.array([i]) for i in idx]
        res = self.backend.search(Q, k, exclude=exclude)
        return Recommendations(self.checkpoint.item_ids.external(res.ids), res.scores, res.ids,
                               np.zeros(len(idx), bool))

    # ---------------------------------------------------------------- search

    def search(self, query_vectors, k: int = 20, *, exclude=None) -> Recommendations:
        """Top-k items for raw query vectors (n, dims), dense or sparse."""
        self._check_open()
        k = check_k(k, error=BackendError)
        res = self.backend.search(query_vectors, k, exclude=exclude)
        n = res.ids.shape[0]
        return Recommendations(self.checkpoint.item_ids.external(res.ids), res.scores, res.ids, np.zeros(n, bool))


    # ------------------------------------------------------- restricted search

    def search_within(self, queries, k: int, candidates, *, exclude=None) -> Recommendations:
        """Top-k items for raw query vectors among candidate items given by row index.

        Parameters
        ----------
        queries : ndarray (n, dims) or scipy sparse (n, dims), or one 1-D
            vector (e.g. :meth:`encode` of a history matrix).
        k : results per query (>= 1); rows are padded (index -1, id ``""``,
            score -inf) when fewer candidates qualify.
        candidates : 1-D int array of item row indices of the checkpoint
            (any order; duplicates count once), the same for every query.
        exclude : items never returned: a sparse (n, n_items) matrix (stored
            entries are excluded), or a sequence of n integer arrays.

        Returns
        -------
        Recommendations (n, k), best first; ``fallback`` is all False.

        Notes
        -----
        A backend with its own restricted search (``backend.has_search_within``,
        e.g. Lucene: the candidates' terms as a filter clause, then an exact
        re-rank) answers the query; for any other backend the candidates are
        scored exactly (:meth:`~elsa_index.checkpoint.Checkpoint.score_candidates`)
        and ranked by :mod:`elsa_index.topk`. Both return exact ``u·a_j`` in
        float32 in the one summation order of :mod:`elsa_index.scoring`, ties
        broken by the lower item index, so an exact backend gives the same
        rows through either path (Lucene: the same rows whenever its
        candidates hold the exact top-k).

        Raises
        ------
        BackendError
            Bad ``k``, queries, candidates or exclusions.
        """
        self._check_open()
        k = check_k(k, error=BackendError)
        be = self.backend
        if be.has_search_within:
            res = be.search_within(queries, k, candidates, exclude=exclude)
            ids, scores = res.ids, res.scores
        else:
            Q = be.as_queries(queries)
            cand = be.as_candidates(candidates)
            ex = be.as_exclude(exclude, Q.shape[0])
            ids, scores = self._score_within(Q, cand, ex, k)
        return Recommendations(self.checkpoint.item_ids.external(ids), scores, ids, np.zeros(ids.shape[0], bool))


    # ------------------------------------------------------ catalogue updates

    def upsert_items(self, ids: Sequence[str], embeddings) -> "Index":
        """Add items or replace their embeddings; the next query sees them.

        Parameters
        ----------
        ids : external item ids (str, unique); known ids get new embeddings
            (their popularity is kept), unknown ones are appended (popularity 0).
        embeddings : (len(ids), dims) rows: a scipy sparse matrix or an array
            for a sparse checkpoint (stored as CSR), an array for a dense one.

        Raises
        ------
        BackendError
            The backend cannot change items in place (rebuild the index), or it failed.
        DataError
            Bad ids or embeddings.

        See the module notes for what is written and when.
        """
        self._check_open()
        self._check_updatable()
        ids = self._update_ids(ids, "upsert_items")
        E = self._update_rows(embeddings, len(ids))
        old = self.checkpoint
        idx = old.item_ids.index(ids, missing="ignore")
        n_old = old.n_items
        fresh = idx < 0
        # Row r of the new catalogue is row src[r] of [old rows; given rows].
        src = np.arange(n_old + int(fresh.sum()))
        src[idx[~fresh]] = n_old + np.flatnonzero(~fresh)
        src[n_old:] = n_old + np.flatnonzero(fresh)
        if old.sparse:
            emb = sp.vstack([sp.csr_matrix(old.embeddings), E], format="csr")[src]
        else:
            emb = np.concatenate([np.asarray(old.embeddings), E])[src]
        new_ids = np.concatenate([old.item_ids.ids.astype(object), np.array(ids, dtype=object)[fresh]])
        pop = np.concatenate([old.popularity, np.zeros(int(fresh.sum()), np.int64)])
        rows = np.concatenate([idx[~fresh], np.arange(n_old, len(src))])
        ckpt = self._updated_checkpoint(emb, new_ids, pop)
        self.backend.upsert_items(ckpt, rows)
        self._commit(ckpt)
        return self

    def delete_items(self, ids: Sequence[str]) -> "Index":
        """Remove items from the catalogue; the next query no longer returns them.

        The remaining items keep their order (row indices after a deleted
        row move up by one). Unknown ids raise a DataError (nothing is
        deleted); see :meth:`upsert_items` for the other errors.
        """
        self._check_open()
        self._check_updatable()
        ids = self._update_ids(ids, "delete_items")
        rows = self._item_indices(ids, "delete_items")
        old = self.checkpoint
        if len(rows) >= old.n_items:
            raise DataError(f"delete_items would remove all {old.n_items} items; an index needs at least one")
        keep = np.setdiff1d(np.arange(old.n_items), rows)
        emb = sp.csr_matrix(old.embeddings)[keep] if old.sparse else np.asarray(old.embeddings)[keep]
        ckpt = self._updated_checkpoint(emb, old.item_ids.ids[keep], old.popularity[keep])
        self.backend.delete_items(ckpt, rows)
        self._commit(ckpt)
        return self

    def _check_updatable(self) -> None:
        if not self.backend.supports_updates:
            self.backend._check_updates(self.checkpoint)  # raises the backend's "rebuild" error

    def _update_ids(self, ids, what: str) -> list[str]:
        if isinstance(ids, (str, bytes)):
            ids = [ids]
        ids = list(ids)
        if not ids or not all(isinstance(v, str) and v for v in ids):
            raise DataError(f"{what} expects a non-empty list of item ids (non-empty strings), got {ids[:5]!r}")
        if len(set(ids)) != len(ids):
            dup = sorted({v for v in ids if ids.count(v) > 1})[:5]
            raise DataError(f"{what} got the item id(s) {dup} more than once; expected each id once")
        return ids

    def _update_rows(self, embeddings, n: int):
        ck = self.checkpoint
        try:
            if ck.sparse:
                E = sp.csr_matrix(embeddings, dtype=np.float32)
                data = E.data
            else:
                E = np.asarray(embeddings.toarray() if sp.issparse(embeddings) else embeddings, dtype=np.float32)
                data = E
        except (TypeError, ValueError) as exc:
            raise DataError(f"embeddings must be a 2-D array or scipy sparse matrix of real numbers: {exc}") from None
        if E.ndim != 2 or E.shape != (n, ck.dims):
            raise DataError(f"embeddings have shape {E.shape}; expected ({n}, {ck.dims}): one row per id")
        if data.size and not np.isfinite(data).all():
            raise DataError("embeddings contain NaN or inf values; expected finite vectors")
        return E

    def _updated_checkpoint(self, emb, ids, popularity) -> Checkpoint:
        old = self.checkpoint
        # The training metrics described the old embeddings: they are not carried over.
        return Checkpoint(emb, ids, popularity, kind=old.kind, config=old.config, data=old.data)

    def _commit(self, ckpt: Checkpoint) -> None:
        """Use ``ckpt`` from now on; in an index directory, rewrite its checkpoint copy, then ``index.json``."""
        self._use_checkpoint(ckpt)
        if self.path is None:
            return
        # The checkpoint copy is a part of the index directory, which atomic_directory never replaces on its own:
        # the new copy is written beside it, then swapped in (the leftover name of a killed writer is cleaned up
        # by the next writer of that path, as for atomic_directory).
        target = self.path / "checkpoint"
        tmp = _unique(target, "tmp")
        try:
            ckpt.save(tmp)
            _replace_dir(tmp, target)
        except OSError as exc:
            raise BackendError(f"could not replace the checkpoint copy {target}: {exc}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        m = read_manifest(self.path, "index.json", INDEX_DIR_FORMAT, INDEX_DIR_VERSION, "index", BackendError)
        m["checkpoint_fingerprint"] = ckpt.fingerprint
        m["updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with atomic_file(self.path / "index.json", error=BackendError) as f:
            json.dump(m, f, indent=2)
            f.write("\n")


def build_index(checkpoint: Checkpoint | str | os.PathLike, backend: str = "sparse", out: str | os.PathLike | None = None,
                *, overwrite: bool = False, progress: bool = False, **params) -> Index:
    """Build a backend over a checkpoint; with ``out``, save a self-contained index directory atomically.

    Parameters
    ----------
    checkpoint : a Checkpoint or a checkpoint directory.
    backend : ``sparse``, ``lucene``, ``faiss-flat``, ``faiss-hnsw`` or ``faiss-ivf``.
    **params : the backend's build and search parameters.

    Returns
    -------
    Index : with ``out``, the saved backend reopened from its directory (memory-mapped)
        around the checkpoint given (not read back from the copy just written).
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.load(checkpoint)
    cls = get_backend(backend)
    be = cls(**params)
    if out is None:
        be.build(ckpt, progress=progress)
        return Index(ckpt, be)
    out = Path(out)
    src = None if isinstance(checkpoint, Checkpoint) else checkpoint  # the output may not replace the input
    with atomic_directory(out, overwrite=overwrite, error=BackendError, kind=INDEX_DIR_FORMAT, inputs=[src]) as tmp:
        be.build(ckpt, progress=progress)
        ckpt.save(tmp / "checkpoint")
        # The checkpoint copy next to it holds the item embeddings: the backend need not store them again.
        be.save(tmp / "backend", with_embeddings=False)
        write_json(tmp / "index.json", {
            "format": INDEX_DIR_FORMAT, "format_version": INDEX_DIR_VERSION, "backend": be.name,
            "checkpoint_fingerprint": ckpt.fingerprint, "elsa_index_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
    be.close()
    # Reopen the backend from its directory (memory-mapped) with the checkpoint already in hand: it was
    # verified when loaded (or fingerprinted when built), so the stored copy need not be read back, and the
    # backend's files were hashed a moment ago by save() (their arrays are still range-checked).
    return open_index(out, checkpoint=ckpt, verify=False)


def open_index(path: str | os.PathLike, *, checkpoint: Checkpoint | str | os.PathLike | None = None,
               mmap: bool = True, verify: bool = True) -> Index:
    """Open an index directory written by :func:`build_index`.

    Parameters
    ----------
    path : the index directory.
    checkpoint : replaces the stored copy (e.g. one loaded once and shared);
        its fingerprint must match the one the index was built from.
    mmap : memory-map the stored checkpoint's embeddings and the backend's
        large arrays read-only (the directory must stay in place while the
        index is open); False reads them into memory.
    verify : check every file of the index (the checkpoint copy, or the
        ``checkpoint`` directory given, and the backend's files) against the
        size and sha256 recorded when it was written, before reading it. This
        reads every byte once (with ``mmap=True`` too: the pages then sit in
        the page cache, not in the process's memory), about 0.2 s for a
        1M-item sparse index. An index written before file digests existed is
        refused with a message to rebuild it. False trusts the files (e.g.
        just built, or checked by other means); every array is range-checked
        either way, so no file can make compiled code read or write outside
        its arrays.

    Raises
    ------
    BackendError
        Missing, malformed, corrupted or edited files, or a checkpoint that is
        not the one the index was built from.
    """
    path = Path(path)
    m = read_manifest(path, "index.json", INDEX_DIR_FORMAT, INDEX_DIR_VERSION, "index", BackendError)
    if checkpoint is None:
        try:
            ckpt = Checkpoint.load(path / "checkpoint", mmap=mmap, verify=verify)
        except CheckpointError as exc:
            raise BackendError(f"{path}: its checkpoint copy is unusable: {exc}") from None
    else:
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.load(checkpoint, verify=verify)
    if ckpt.fingerprint != m.get("checkpoint_fingerprint"):
        raise BackendError(
            f"{path} was built from checkpoint {m.get('checkpoint_fingerprint')}, but the checkpoint given is "
            f"{ckpt.fingerprint}; rebuild the index for this checkpoint"
        )
    backend = Backend.load(path / "backend", checkpoint=ckpt, mmap=mmap, verify=verify)
    return Index(ckpt, backend, path)
