"""The backend contract every index implements.

A backend indexes the item embeddings of a checkpoint and answers batched
top-k maximum-inner-product queries. Subclasses implement only the private
steps (``_build``, ``_search``, ``_save``, ``_load``); this base class
validates input, clips ``k`` to the catalogue, over-fetches so that
exclusions still leave ``k`` results, pads short rows with id ``-1`` and score
``-inf``, and writes self-describing index directories atomically.

A subclass implements ``_build(embeddings, progress=)``, ``_search(queries,
k)``, ``_save(directory, *, with_embeddings=True)`` and ``_load(directory, *,
checkpoint=None, mmap=False)``, and may override ``close`` to release what it holds. A backend
is a context manager: ``with Backend.load(path) as be:`` closes it at the end.

Optional hook: ``_search_within(queries, k, candidates)``, a restricted
search (top-k among given item rows) done by the backend itself, e.g. Lucene
with a filter clause. :meth:`Backend.search_within` validates its input and
handles exclusions around it; :meth:`elsa_index.search.Index.search_within`
uses it when ``has_search_within`` and otherwise scores the candidates
exactly against the checkpoint.

Optional hooks: ``_upsert_items(checkpoint, rows)`` / ``_delete_items(checkpoint,
rows)``, catalogue updates in place (``supports_updates``; e.g. ``milvus``);
every other backend refuses them with a message to rebuild the index. And
``_unrecorded(directory)``: files of a backend directory that change while it
is in use (a database's own files), left out of the recorded digests.

Thread safety: ``search`` must be safe to call from several threads at once
on one built or loaded backend (each subclass states how it ensures this);
``build`` / ``set_search_params`` must not run concurrently with searches.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from elsa_index import __version__
from elsa_index._checks import check_k
from elsa_index._atomic import atomic_directory
from elsa_index._io import read_manifest, record_files, verify_files, write_json
from elsa_index.errors import BackendError, ElsaIndexError

from . import get_backend
from .requests import Results, check_candidates, check_exclude, check_queries, finish

logger = logging.getLogger(__name__)

INDEX_FORMAT = "elsa-index-backend"
#: 2: ``backend.json`` records ``files``, the size and sha256 of every file the backend wrote (checked at load)
INDEX_FORMAT_VERSION = 2
#: files of a backend directory that are not recorded: its manifest, and a lock Lucene may leave
_UNRECORDED = ("backend.json", "lucene/write.lock")

__all__ = ["Results", "Backend", "BackendError", "INDEX_FORMAT_VERSION"]


class Backend:
    """Base class of all backends.

    Parameters
    ----------
    **params : build parameters (``build_params`` lists them with defaults)
        and search parameters (``search_params``); unknown names raise.
    """

    name: ClassVar[str] = "base"
    #: default build parameters (fixed once built)
    build_params: ClassVar[dict[str, Any]] = {}
    #: default search parameters (changeable at any time)
    search_params: ClassVar[dict[str, Any]] = {}
    #: "sparse", "dense" or "any": which checkpoints the backend accepts
    accepts: ClassVar[str] = "any"
    #: whether scores equal the exact inner products (False: approximate candidates)
    exact: ClassVar[bool] = True
    #: top-level modules the backend needs beyond the core install
    requires: ClassVar[tuple[str, ...]] = ()
    #: how to install what ``requires`` names
    install_hint: ClassVar[str] = ""
    #: one line per build and search parameter, shown by ``elsa-index build --help``
    param_docs: ClassVar[dict[str, str]] = {}
    #: whether ``upsert_items`` / ``delete_items`` change the index in place (else they ask for a rebuild)
    supports_updates: ClassVar[bool] = False

    @classmethod
    def missing_dependency(cls) -> str | None:
        """None when the backend can run here, else a message naming what is missing and how to install it."""
        import importlib.util

        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if not missing:
            return None
        hint = f"; install it with {cls.install_hint}" if cls.install_hint else ""
        return f"backend {cls.name!r} needs {', '.join(missing)}, which is not installed{hint}"

    @classmethod
    def touched_bytes(cls, info: dict, search_params: dict, k: int, posting, n_queries: int):
        """Bytes one query must read at least (the backend's cost model), for the physical lower bound.

        Parameters
        ----------
        info : the index's ``info()`` (``n_items``, ``dims``, ``build_params``).
        search_params : the configuration's search parameters.
        k : results per query.
        posting : float64 (n_queries,) bytes of the postings of each query's dimensions
            (8 per posting: float32 value + int32 id), or None for dense checkpoints.
        n_queries : number of queries.

        Returns
        -------
        (bytes, model) : float64 (n_queries,) (NaN where no model applies) and a short description.
        """
        return np.full(n_queries, np.nan), "n/a"

    def __init__(self, **params):
        self.params = dict(self.build_params)
        self._search_params = dict(self.search_params)
        for k, v in params.items():
            if k in self.params:
                self.params[k] = v
            elif k in self._search_params:
                self._search_params[k] = v
            else:
                raise BackendError(
                    f"unknown parameter {k!r} for backend {self.name!r}; build parameters: "
                    f"{sorted(self.build_params)}, search parameters: {sorted(self.search_params)}"
                )
        self._check_params()
        self.n_items_: int | None = None
        self.dims_: int | None = None
        self.fingerprint_: str | None = None
        self.build_seconds_: float | None = None
        self.path_: Path | None = None

    # ------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Release what the backend holds beyond its arrays (files, readers); idempotent.

        The default does nothing. After ``close`` a backend may refuse to search
        until it is built or loaded again.
        """

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    # ------------------------------------------------------------ parameters

    def _check_params(self) -> None:
        """Validate ``self.params`` and ``self._search_params``; raise BackendError."""

    def set_search_params(self, **params) -> "Backend":
        """Change search-time parameters (no rebuild)."""
        for k in params:
            if k not in self._search_params:
                raise BackendError(
                    f"unknown search parameter {k!r} for backend {self.name!r}; expected some of {sorted(self.search_params)}"
                )
        old = dict(self._search_params)
        self._search_params.update(params)
        try:
            self._check_params()
        except Exception:
            self._search_params = old
            raise
        self._on_search_params()
        return self

    def get_search_params(self) -> dict[str, Any]:
        return dict(self._search_params)

    def _on_search_params(self) -> None:
        """Hook: apply changed search parameters to the built index."""

    # ------------------------------------------------------------------ build

    def build(self, checkpoint, *, progress: bool = False) -> "Backend":
        """Index the item embeddings of ``checkpoint`` (a :class:`~elsa_index.checkpoint.Checkpoint`)."""
        emb = checkpoint.embeddings
        if self.accepts == "dense" and sp.issparse(emb):
            raise BackendError(
                f"backend {self.name!r} indexes dense embeddings, but this checkpoint is sparse "
                f"({checkpoint.kind}); use the 'sparse' or 'lucene' backend, or a dense ELSA checkpoint"
            )
        if self.accepts == "sparse" and not sp.issparse(emb):
            raise BackendError(
                f"backend {self.name!r} indexes sparse embeddings, but this checkpoint is dense "
                f"({checkpoint.kind}, {checkpoint.dims} dims, every entry active); use a faiss backend or 'sparse'"
            )
        t0 = time.perf_counter()
        self._build(emb, progress=progress)
        self.build_seconds_ = time.perf_counter() - t0
        self.n_items_, self.dims_ = emb.shape
        self.fingerprint_ = checkpoint.fingerprint
        self._on_search_params()
        return self

    def _build(self, embeddings, *, progress: bool) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- search

    def search(self, queries, k: int, *, exclude=None) -> Results:
        """Top-k items by inner product for each query vector.

        Parameters
        ----------
        queries : ndarray (n, dims) or sparse (n, dims), or one 1-D vector.
        k : results per query (>= 1); clipped to the catalogue size.
        exclude : items never returned: a sparse (n, n_items) matrix (stored
            entries are excluded), or a sequence of n integer arrays.

        Returns
        -------
        Results with arrays of shape (n, k).
        """
        self._check_built()
        Q = self.as_queries(queries)
        n = Q.shape[0]
        k = self._check_k(k)
        ex = self.as_exclude(exclude, n)
        if n == 0:
            return Results(np.empty((0, k), np.int64), np.empty((0, k), np.float32))
        return self._search_excluding(Q, k, ex)

    def _search_excluding(self, Q, k: int, ex) -> Results:
        """Top-k of validated queries with the exclusions ``ex`` (CSR or None) dropped, as :meth:`search` returns.

        The default asks :meth:`_search` for k plus each query's exclusions and
        drops them (:func:`finish`). A backend that can skip excluded items
        inside its own search overrides this (fetching only k).
        """
        n = Q.shape[0]
        # Each query needs k results plus as many as it excludes. An exact backend's top-k does not depend
        # on how many candidates it fetches, so queries are searched in groups whose need is within a factor
        # of two (one long exclusion list does not inflate the whole batch). An approximate backend's candidate
        # list grows with the fetch (HNSW's efSearch, Lucene's depth): each query fetches exactly its own need,
        # so its result never depends on the other queries of the batch.
        need = np.minimum(self.n_items_, k + (np.diff(ex.indptr) if ex is not None else np.zeros(n, np.int64)))
        group = np.ceil(np.log2(need)).astype(np.int64) if self.exact else need
        if (group == group[0]).all():
            return self._search_group(Q, int(need.max()), ex, k)
        out = Results(np.empty((n, k), np.int64), np.empty((n, k), np.float32))
        for g in np.unique(group):
            rows = np.flatnonzero(group == g)
            res = self._search_group(Q[rows], int(need[rows].max()), ex[rows], k)
            out.ids[rows], out.scores[rows] = res.ids, res.scores
        return out

    def _search_group(self, Q, fetch: int, ex, k: int) -> Results:
        ids, scores = self._search(Q, fetch)
        ids = np.asarray(ids, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        return finish(ids, scores, ex, k)

    def _search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (ids, scores) of shape (n, k) sorted by descending score; pad with -1 / -inf."""
        raise NotImplementedError

    # ------------------------------------------------------- restricted search

    @property
    def has_search_within(self) -> bool:
        """Whether this backend restricts searches to candidate items itself (implements ``_search_within``)."""
        return type(self)._search_within is not Backend._search_within

    def search_within(self, queries, k: int, candidates, *, exclude=None) -> Results:
        """Top-k items of each query among ``candidates``, searched by the backend itself.

        Parameters
        ----------
        queries : ndarray (n, dims) or sparse (n, dims), or one 1-D vector.
        k : results per query (>= 1).
        candidates : 1-D int array of item row indices (any order; duplicates
            count once), the same for every query.
        exclude : as in :meth:`search`; excluded candidates are never returned.

        Returns
        -------
        Results with arrays of shape (n, k); rows hold only candidates and are
        padded (-1 / -inf) when fewer than k candidates qualify.

        Raises
        ------
        BackendError
            The backend has no restricted search (``has_search_within`` is
            False: use :meth:`elsa_index.search.Index.search_within`, which
            then scores the candidates exactly), or invalid input.
        """
        if not self.has_search_within:
            raise BackendError(
                f"backend {self.name!r} has no restricted search of its own; use Index.search_within, "
                "which scores the candidates exactly")
        self._check_built()
        Q = self.as_queries(queries)
        n = Q.shape[0]
        k = self._check_k(k)
        cand = self.as_candidates(candidates)
        ex = self.as_exclude(exclude, n)
        if n == 0 or not len(cand):
            return Results(np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32))
        # Fetch k plus the excluded candidates of the most-excluding query, then drop the excluded ones.
        n_ex = 0 if ex is None else int(ex[:, cand].getnnz(axis=1).max())
        fetch = min(len(cand), k + n_ex)
        ids, scores = self._search_within(Q, fetch, cand)
        return finish(np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32), ex, k)

    def _search_within(self, queries, k: int, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Optional hook: top-k among ``candidates`` (sorted unique int64 item rows), as ``_search`` returns.

        ``queries`` are validated (float32, CSR for sparse input, with sorted
        indices) and ``k`` does not exceed ``len(candidates)``. Only
        candidates may be returned; ties go to the lower item index. The base
        class has none (``has_search_within`` is then False).
        """
        raise NotImplementedError

    def as_candidates(self, candidates) -> np.ndarray:
        """Validated candidate item rows: sorted unique int64 in ``[0, n_items)``; raises BackendError."""
        return check_candidates(candidates, self.n_items_)

    def _check_built(self) -> None:
        if self.n_items_ is None:
            raise BackendError(f"the {self.name!r} index is not built or loaded yet; call build(checkpoint) or load(path)")

    def _check_k(self, k) -> int:
        k = check_k(k, error=BackendError)
        if k > self.n_items_:
            logger.debug("k=%d exceeds the catalogue (%d items); rows are padded with id -1", k, self.n_items_)
        return int(k)

    def as_queries(self, queries):
        """Validated queries: float32 CSR (indices sorted) or 2-D float32 ndarray of ``dims_`` columns; raises BackendError."""
        return check_queries(queries, self.dims_)

    def as_exclude(self, exclude, n: int):
        """Validated exclusions of ``n`` queries as CSR (n, n_items), or None; raises BackendError."""
        return check_exclude(exclude, n, self.n_items_)

    # ------------------------------------------------------ catalogue updates

    def upsert_items(self, checkpoint, rows) -> None:
        """Serve ``checkpoint``: the indexed one with the item rows ``rows`` changed or appended.

        Parameters
        ----------
        checkpoint : the new :class:`~elsa_index.checkpoint.Checkpoint`; rows not
            in ``rows`` are the indexed ones, unchanged and in the same order,
            and new items are appended at the end.
        rows : int array of row indices of ``checkpoint`` whose embeddings are new or changed.

        Raises
        ------
        BackendError
            The backend cannot change items in place (``supports_updates`` is
            False): rebuild the index from the updated checkpoint.
        """
        self._check_updates(checkpoint)
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) and (rows[0] < 0 or rows[-1] >= checkpoint.n_items):
            raise BackendError(f"upsert rows outside [0, {checkpoint.n_items})")
        if checkpoint.n_items < self.n_items_:
            raise BackendError(f"an upsert cannot shrink the catalogue ({self.n_items_} -> {checkpoint.n_items} items); "
                               "use delete_items")
        self._upsert_items(checkpoint, rows)
        self._updated(checkpoint)

    def delete_items(self, checkpoint, rows) -> None:
        """Serve ``checkpoint``: the indexed one without the (old) item rows ``rows``, the others in order.

        Raises
        ------
        BackendError
            As :meth:`upsert_items`.
        """
        self._check_updates(checkpoint)
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) and (rows[0] < 0 or rows[-1] >= self.n_items_):
            raise BackendError(f"deleted rows outside [0, {self.n_items_})")
        if checkpoint.n_items != self.n_items_ - len(rows):
            raise BackendError(f"the checkpoint has {checkpoint.n_items} items; deleting {len(rows)} of "
                               f"{self.n_items_} leaves {self.n_items_ - len(rows)}")
        self._delete_items(checkpoint, rows)
        self._updated(checkpoint)

    def _check_updates(self, checkpoint) -> None:
        if not self.supports_updates:
            raise BackendError(
                f"the {self.name!r} backend cannot add, change or delete items in place; rebuild the index from "
                f"the updated checkpoint (elsa-index build CKPT --backend {self.name} --out DIR --overwrite), or "
                "use a backend that supports catalogue updates ('milvus')")
        self._check_built()
        if checkpoint.dims != self.dims_:
            raise BackendError(f"the updated checkpoint has {checkpoint.dims} dims; the index has {self.dims_}")

    def _updated(self, checkpoint) -> None:
        self.n_items_, self.dims_ = checkpoint.n_items, checkpoint.dims
        self.fingerprint_ = checkpoint.fingerprint

    def _upsert_items(self, checkpoint, rows: np.ndarray) -> None:
        """Hook of :meth:`upsert_items` (rows validated, sorted unique)."""
        raise NotImplementedError

    def _delete_items(self, checkpoint, rows: np.ndarray) -> None:
        """Hook of :meth:`delete_items` (rows validated, sorted unique)."""
        raise NotImplementedError

    # ------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike, *, overwrite: bool = False, with_embeddings: bool = True) -> Path:
        """Write the index to a directory (atomically).

        Parameters
        ----------
        path : the directory to create.
        overwrite : replace an existing directory.
        with_embeddings : False leaves out the copy of the item embeddings
            that some backends keep (e.g. ``lucene``'s re-rank rows), because
            the directory sits next to the checkpoint it was built from (an
            index directory of :func:`~elsa_index.search.build_index`); such a
            directory loads only with ``load(path, checkpoint=...)``.
        """
        self._check_built()
        path = Path(path)
        with atomic_directory(path, overwrite=overwrite, error=BackendError, kind=INDEX_FORMAT) as tmp:
            self._save(tmp, with_embeddings=bool(with_embeddings))
            self._write_manifest(tmp, with_embeddings=bool(with_embeddings))
        self.path_ = path
        return path

    def _write_manifest(self, directory: Path, *, with_embeddings: bool) -> None:
        """Write ``backend.json``, with the digests of every file of ``directory`` (hashed once here, checked by every load)."""
        files = record_files(directory, skip=_UNRECORDED + self._unrecorded(directory))
        tmp = directory / "backend.json.tmp"  # replaced in one step: an index updated in place is never half-described
        write_json(tmp, {
            "format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION, "backend": self.name,
            "elsa_index_version": __version__, "build_params": self.params,
            "search_params": self._search_params, "n_items": self.n_items_, "dims": self.dims_,
            "checkpoint_fingerprint": self.fingerprint_, "build_seconds": self.build_seconds_,
            "with_embeddings": bool(with_embeddings), "files": files,
        })
        os.replace(tmp, directory / "backend.json")

    @classmethod
    def _unrecorded(cls, directory: Path) -> tuple[str, ...]:
        """Relative paths of files in ``directory`` that change while the index is in use (no digests kept)."""
        return ()

    def _save(self, directory: Path, *, with_embeddings: bool = True) -> None:
        """Write the backend's files into ``directory`` (``with_embeddings`` as in :meth:`save`)."""
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | os.PathLike, *, checkpoint=None, mmap: bool = False, verify: bool = True) -> "Backend":
        """Load a directory written by :meth:`save` (``Backend.load`` dispatches on the stored backend name).

        Parameters
        ----------
        path : the backend directory.
        checkpoint : the :class:`~elsa_index.checkpoint.Checkpoint` the index
            was built from (its fingerprint and shape must match); backends that need the
            item embeddings take them from it instead of keeping their own copy.
            Required for directories saved with ``with_embeddings=False``.
        mmap : memory-map large arrays read-only where the backend can (the
            directory must then stay in place while the backend is in use).
        verify : check every file against the size and sha256 recorded in
            ``backend.json`` (and refuse files it does not record) before
            reading any; one streamed read of each file. A directory of format
            1 (no digests) is refused unless ``verify=False``: rebuild it.
            False trusts the files; the arrays are range-checked either way.
        """
        path = Path(path)
        m = read_manifest(path, "backend.json", INDEX_FORMAT, INDEX_FORMAT_VERSION, "backend index", BackendError)
        target = get_backend(m.get("backend", "?"))
        if cls is not Backend and not issubclass(target, cls):
            raise BackendError(f"{path} holds a {m.get('backend')!r} index, not {cls.name!r}")
        for key in ("n_items", "dims"):
            v = m.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BackendError(f"{path}/backend.json: {key} must be a non-negative integer, got {v!r}")
        for key in ("build_params", "search_params"):
            if not isinstance(m.get(key, {}), dict):
                raise BackendError(f"{path}/backend.json: {key} must be a JSON object, got {m[key]!r}")
        if verify:
            if "files" not in m:
                raise BackendError(
                    f"{path} was written by an older elsa-index (backend format {m['format_version']}) and records "
                    "no file digests, so its files cannot be verified; rebuild the index (elsa-index build CKPT "
                    "--out DIR --overwrite), or load it with verify=False only if you trust its files")
            verify_files(path, m["files"], BackendError, manifest="backend.json", exhaustive=True,
                         skip=_UNRECORDED + target._unrecorded(path))
        obj = target(**{**m.get("build_params", {}), **m.get("search_params", {})})
        obj.n_items_, obj.dims_ = m["n_items"], m["dims"]
        obj.fingerprint_ = m.get("checkpoint_fingerprint")
        obj.build_seconds_ = m.get("build_seconds")
        if checkpoint is not None:
            if checkpoint.fingerprint != obj.fingerprint_:
                raise BackendError(
                    f"{path} was built from checkpoint {obj.fingerprint_}, but the checkpoint given is "
                    f"{checkpoint.fingerprint}; pass the checkpoint the index was built from")
            if (checkpoint.n_items, checkpoint.dims) != (obj.n_items_, obj.dims_):
                raise BackendError(
                    f"{path}/backend.json says {obj.n_items_} items x {obj.dims_} dims, but its checkpoint has "
                    f"{checkpoint.n_items} x {checkpoint.dims}; the manifest is corrupted")
        elif not m.get("with_embeddings", True):
            raise BackendError(
                f"{path} was saved without the item embeddings (inside an index directory); open the index with "
                "elsa_index.search.open_index, or pass checkpoint= (the checkpoint it was built from) to load")
        try:
            obj._load(path, checkpoint=checkpoint, mmap=mmap)
        except ElsaIndexError:
            raise
        except Exception as exc:  # corrupted files: report which index
            raise BackendError(f"could not load the {target.name!r} index in {path}: {exc}") from None
        obj._on_search_params()
        obj.path_ = path
        return obj

    def _load(self, directory: Path, *, checkpoint=None, mmap: bool = False) -> None:
        """Read the backend's files from ``directory`` (``checkpoint`` and ``mmap`` as in :meth:`load`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ info

    def info(self) -> dict[str, Any]:
        """What a benchmark needs: parameters, sizes, bytes on disk, versions."""
        out = {
            "backend": self.name, "exact": self.exact, "build_params": dict(self.params),
            "search_params": dict(self._search_params), "n_items": self.n_items_, "dims": self.dims_,
            "build_seconds": self.build_seconds_, "checkpoint_fingerprint": self.fingerprint_,
            "versions": {"elsa_index": __version__, **self._versions()},
        }
        if self.path_ is not None:
            out["path"] = str(self.path_)
            out["bytes_on_disk"] = sum(f.stat().st_size for f in Path(self.path_).rglob("*") if f.is_file())
        return out

    def _versions(self) -> dict[str, str]:
        return {}

    def __repr__(self) -> str:
        state = f"{self.n_items_} items x {self.dims_} dims" if self.n_items_ else "not built"
        return f"<{type(self).__name__} {self.name} {state} {self.params} {self._search_params}>"
