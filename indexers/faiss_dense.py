"""FAISS backends over dense item embeddings: exact Flat, HNSW graph and IVF lists.

All three score by inner product (``METRIC_INNER_PRODUCT``). Rows of a dense
ELSA checkpoint are unit-norm, so for any (unnormalised) user vector ``u`` the
inner-product ranking equals the cosine ranking, which is what HNSW graphs and
spherical k-means lists approximate well. Queries are never normalised: the
scores returned are inner products as faiss computes them (for ``faiss-flat``
the true ones, up to float32 rounding). Sparse query matrices are densified.

``faiss`` is an optional dependency (``pip install 'elsa-index[faiss]'``); it
is imported only when an index is built, searched, saved or loaded.

Backends
--------
``faiss-flat``
    ``IndexFlatIP``: brute force, exact.
``faiss-hnsw``
    ``IndexHNSWFlat``; build parameters ``M`` and ``ef_construction``, search
    parameter ``ef_search`` (widened per call to at least the number of
    results fetched, ``k`` plus the longest exclusion list, as hnswlib does).
``faiss-ivf``
    ``IndexIVFFlat`` with an ``IndexFlatIP`` coarse quantizer trained by
    spherical k-means; build parameters ``nlist`` and ``train_seed``, search
    parameter ``nprobe`` (clipped to ``nlist``).

Threads
-------
Every backend has the search parameter ``threads`` (default 1): the OpenMP
thread count used by faiss (and by the BLAS it calls) while building and
searching. faiss otherwise uses all cores, which makes timings depend on the
machine and oversubscribes cores when a server calls ``search`` from several
threads. The count is set with ``faiss.omp_set_num_threads`` just before the
faiss call and restored right after. With the libgomp runtime bundled in the
``faiss-cpu`` Linux wheels this setting belongs to the calling OS thread; other
OpenMP runtimes may treat it as process-global, in which case overlapping
calls with different ``threads`` values (from this or any other faiss user in
the process) can change each other's parallelism -- never their results.

Thread safety
-------------
Searches only read the faiss index, and per-call settings (``ef_search``,
``nprobe``) are passed to ``index.search`` as ``SearchParametersHNSW`` /
``SearchParametersIVF`` objects instead of being written into the index, so
concurrent ``search`` calls on one backend are safe. ``build`` and
``set_search_params`` must not overlap with searches (see :mod:`.base`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp

from elsa_index._checks import check_int
from elsa_index._memory import check_fits
from elsa_index.errors import BackendError

from ._faiss_checks import check_hnsw, check_ivf, check_vectors
from .base import Backend

logger = logging.getLogger(__name__)

__all__ = ["FaissFlat", "FaissHNSW", "FaissIVF", "default_nlist"]

INDEX_FILE = "faiss.index"
INSTALL_HINT = 'pip install "elsa-index[faiss]"'
_THREADS_DOC = "OpenMP threads used by faiss while building and searching (default 1)"
#: faiss k-means asks for at least this many training points per centroid.
MIN_POINTS_PER_CENTROID = 39


def _faiss():
    """Import faiss, or raise an BackendError with the install hint."""
    try:
        import faiss
    except ImportError as exc:
        raise BackendError(
            f"the faiss backends need the faiss library, which could not be imported ({exc}); "
            f"install it with: {INSTALL_HINT}  (or: pip install 'faiss-cpu>=1.8')"
        ) from None
    return faiss


@contextlib.contextmanager
def _omp_threads(faiss, n: int) -> Iterator[None]:
    """Run the body with ``n`` OpenMP threads in faiss, then restore the previous count."""
    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(n))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(prev)


def default_nlist(n_items: int) -> int:
    """Default number of IVF lists: about ``4 * sqrt(n_items)``, at most ``n_items // 39``, at least 1.

    The cap keeps the 39 training points per centroid that faiss k-means asks
    for (every item is a training point), so small catalogues get few lists
    (a 300-item catalogue gets 7; 1M items get 4,000).
    """
    n = int(n_items)
    return int(max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID)))


def _check_int(name: str, value: Any, low: int, *, allow_none: bool = False, hint: str = "") -> None:
    check_int(value, name, low, allow_none=allow_none, error=BackendError, hint=f" {hint}" if hint else "")


#: upper bounds of integer parameters that faiss keeps in C ints or uses to size buffers
MAX_THREADS = 1024
MAX_HNSW_M = 1 << 16
MAX_EF = 1 << 24


def _check_at_most(name: str, value: Any, high: int, hint: str) -> None:
    """``value`` (an int already checked, or None) at most ``high``."""
    if value is not None and value > high:
        raise BackendError(f"{name} must be an integer <= {high:,} {hint}, got {value!r}")


class _FaissBackend(Backend):
    """Shared build/search/persistence of the faiss backends (not registered).

    Subclasses implement ``_new_index(faiss, dims, n_items)`` and, if the index
    takes per-call settings, ``_search_parameters(faiss, k)``.
    """

    accepts = "dense"
    requires = ("faiss",)
    install_hint = INSTALL_HINT
    #: the faiss index class this backend writes, checked on load
    _faiss_class = ""

    def __init_subclass__(cls, **kwargs):
        # Every faiss backend has the search parameter ``threads``; subclasses declare only their own.
        super().__init_subclass__(**kwargs)
        cls.search_params = {**cls.search_params, "threads": 1}
        cls.param_docs = {**cls.param_docs, "threads": _THREADS_DOC}

    # ------------------------------------------------------------ parameters

    def _check_params(self) -> None:
        _check_int("threads", self._search_params["threads"], 1, hint="(OpenMP threads used by faiss)")
        _check_at_most("threads", self._search_params["threads"], MAX_THREADS,
                       "(OpenMP threads; more than the machine's cores only slows faiss down)")

    def _threads(self) -> int:
        return int(self._search_params["threads"])

    # ------------------------------------------------------------------ build

    def _new_index(self, faiss, dims: int, n_items: int):
        raise NotImplementedError

    def _train(self, faiss, index, X: np.ndarray) -> None:
        """Hook: train the index on the item vectors (IVF)."""

    def _build(self, embeddings, *, progress: bool) -> None:
        faiss = _faiss()
        X = np.ascontiguousarray(embeddings, dtype=np.float32)
        n, d = X.shape
        index = self._new_index(faiss, d, n)
        with _omp_threads(faiss, self._threads()):
            self._train(faiss, index, X)
            index.add(X)
        self.index_ = index
        logger.info("built %s over %d items x %d dims with %s", self.name, n, d, self.params)

    # ----------------------------------------------------------------- search

    def _search_parameters(self, faiss, k: int):
        """Per-call faiss SearchParameters, or None."""
        return None

    def _search(self, queries, k: int):
        faiss = _faiss()
        Q = queries.toarray() if sp.issparse(queries) else queries
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        params = self._search_parameters(faiss, k)
        with _omp_threads(faiss, self._threads()):
            if params is None:
                scores, ids = self.index_.search(Q, k)
            else:
                scores, ids = self.index_.search(Q, k, params=params)
        ids = np.asarray(ids, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        if ids.size and ids.max() >= self.n_items_:  # ids index the id table: never past its end
            raise BackendError(f"the {self.name!r} index returned item ids up to {int(ids.max())}, outside "
                               f"[0, {self.n_items_}); the index is corrupted: rebuild it")
        missing = ids < 0  # faiss found fewer than k items (IVF lists too short, HNSW unreached)
        if missing.any():
            ids = ids.copy()
            scores = scores.copy()
            ids[missing] = -1
            scores[missing] = -np.inf
        return ids, scores

    # ------------------------------------------------------------ persistence

    def _save(self, directory: Path, *, with_embeddings: bool = True) -> None:
        faiss = _faiss()  # the vectors live inside the faiss index; nothing is shared with the checkpoint
        faiss.write_index(self.index_, str(directory / INDEX_FILE))

    def _load(self, directory: Path, *, checkpoint=None, mmap: bool = False) -> None:
        faiss = _faiss()
        file = directory / INDEX_FILE
        if not file.is_file():
            raise BackendError(f"{directory} lacks {INDEX_FILE}; expected a directory written by the {self.name!r} backend")
        try:
            index = faiss.read_index(str(file))
        except Exception as exc:  # faiss raises RuntimeError with a C++ message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"{file} is not a readable faiss index (corrupted or truncated?): {first}") from None
        got = type(index).__name__
        if got != self._faiss_class:
            raise BackendError(f"{file} holds a faiss {got}; the {self.name!r} backend expects {self._faiss_class}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise BackendError(f"{file} uses faiss metric {index.metric_type}; expected inner product")
        if (index.ntotal, index.d) != (self.n_items_, self.dims_):
            raise BackendError(
                f"{file} holds {index.ntotal} vectors of {index.d} dims; the manifest says "
                f"{self.n_items_} items of {self.dims_} dims"
            )
        check_vectors(faiss, index, file, index.ntotal, index.d)
        self._check_structure(faiss, index, file)
        self.index_ = index
        self._after_load(index)

    def _check_structure(self, faiss, index, file: Path) -> None:
        """Hook: range-check the index's own arrays (graph links, list ids) so faiss never reads outside them."""

    def _after_load(self, index) -> None:
        """Hook: restore fitted state from a loaded index."""

    # ------------------------------------------------------------------ info

    def _versions(self) -> dict[str, str]:
        try:
            return {"faiss": _faiss().__version__}
        except BackendError:
            return {"faiss": "not installed"}


class FaissFlat(_FaissBackend):
    """Exact top-k by inner product with faiss ``IndexFlatIP``.

    Search parameters
    -----------------
    threads : int >= 1, default 1. OpenMP threads used by faiss.
    """

    name = "faiss-flat"
    exact = True
    build_params: dict[str, Any] = {}
    _faiss_class = "IndexFlatIP"

    @classmethod
    def touched_bytes(cls, info: dict, search_params: dict, k: int, posting, n_queries: int):
        """Every vector: ``n_items * dims * 4`` bytes."""
        n_items, dims = int(info.get("n_items") or 0), int(info.get("dims") or 0)
        return np.full(n_queries, float(n_items) * dims * 4), "all vectors (n x dims x 4 B)"

    def _new_index(self, faiss, dims: int, n_items: int):
        return faiss.IndexFlatIP(dims)


class FaissHNSW(_FaissBackend):
    """Approximate top-k by inner product with faiss ``IndexHNSWFlat``.

    Build parameters
    ----------------
    M : int >= 2, default 32. Graph neighbours per node (more: better recall,
        more memory, slower build).
    ef_construction : int >= 1, default 200. Candidate list size while building.

    Search parameters
    -----------------
    ef_search : int >= 1, default 64. Candidate list size while searching;
        each call uses ``max(ef_search, k_fetched)``. Measured with M=32 on
        dense 64-dim ELSA checkpoints (1,000 held-out users, top-20, no
        exclusions): retrieval recall@20 0.9997 on ML-1M (3.5k items) and
        0.994 on Amazon-Book (25k items) at 64, against 0.995 / 0.976 at
        32 and 0.969 / 0.935 at 16; 64 leaves a margin for larger catalogues.
    threads : int >= 1, default 1. OpenMP threads used by faiss.

    The graph is deterministic when built with ``threads=1``; with more
    threads, insertion order races make it (slightly) differ between builds.
    """

    name = "faiss-hnsw"
    exact = False
    build_params = {"M": 32, "ef_construction": 200}
    search_params = {"ef_search": 64}
    param_docs = {
        "M": "graph neighbours per node (default 32; more: better recall, more memory, slower build)",
        "ef_construction": "candidate list size while building (default 200)",
        "ef_search": "candidate list size while searching, at least the results fetched (default 64)",
    }
    _faiss_class = "IndexHNSWFlat"

    @classmethod
    def touched_bytes(cls, info: dict, search_params: dict, k: int, posting, n_queries: int):
        """About ``max(ef_search, k) * 2M`` level-0 distance computations, each a vector and a neighbour id (an estimate)."""
        M = {**cls.build_params, **(info.get("build_params") or {})}["M"]
        ef = {**cls.search_params, **(search_params or {})}["ef_search"]
        dims = int(info.get("dims") or 0)
        visits = max(float(ef), float(k)) * 2 * float(M)
        return np.full(n_queries, visits * (dims * 4 + 4)), "~max(ef,k) x 2M vectors (estimate)"

    def _check_params(self) -> None:
        super()._check_params()
        _check_int("M", self.params["M"], 2, hint="(graph neighbours per node; typical 16-64)")
        _check_int("ef_construction", self.params["ef_construction"], 1, hint="(typical 40-500)")
        _check_int("ef_search", self._search_params["ef_search"], 1, hint="(typical 16-512)")
        # faiss stores these as C ints and sizes per-node and per-query buffers by them.
        _check_at_most("M", self.params["M"], MAX_HNSW_M, "(graph neighbours per node; typical 16-64)")
        for name, value in (("ef_construction", self.params["ef_construction"]),
                            ("ef_search", self._search_params["ef_search"])):
            _check_at_most(name, value, MAX_EF, "(candidate list size; typical 16-512)")

    def _check_graph_memory(self, dims: int, n_items: int) -> None:
        """Refuse, before faiss allocates, a graph that cannot fit: level 0 holds 2M int32 ids per node
        (upper levels add about 1/M of that), next to the vectors themselves."""
        M = int(self.params["M"])
        need = float(n_items) * (2 * M * 4 * 1.1 + dims * 4) + float(self.params["ef_construction"]) * 16
        check_fits(need, f"an HNSW graph with M={M} over {n_items} items x {dims} dims", error=BackendError,
                   hint="lower M (typical 16-64)")

    def _new_index(self, faiss, dims: int, n_items: int):
        self._check_graph_memory(dims, n_items)
        index = faiss.IndexHNSWFlat(dims, int(self.params["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(self.params["ef_construction"])
        return index

    def _check_structure(self, faiss, index, file: Path) -> None:
        storage = faiss.downcast_index(index.storage)
        check_vectors(faiss, storage, file, index.ntotal, index.d)
        check_hnsw(faiss, index.hnsw, index.ntotal, file)

    def _search_parameters(self, faiss, k: int):
        # faiss keeps only efSearch candidates, so a list shorter than the k
        # results fetched (k plus the longest exclusion list) would cut them.
        return faiss.SearchParametersHNSW(efSearch=max(int(self._search_params["ef_search"]), int(k)))


class FaissIVF(_FaissBackend):
    """Approximate top-k by inner product with faiss ``IndexIVFFlat``.

    Build parameters
    ----------------
    nlist : int >= 1 or None (default). Number of inverted lists (k-means
        centroids); None picks :func:`default_nlist` (about ``4*sqrt(n_items)``,
        capped at ``n_items // 39`` so k-means has 39 points per centroid).
        An explicit value must not exceed ``n_items``; above ``n_items // 39``
        training is allowed with a logged warning (faiss also prints one).
    train_seed : int >= 0, default 1234. Seed of the k-means initialisation.

    Search parameters
    -----------------
    nprobe : int >= 1, default 32. Lists scanned per query, clipped to
        ``nlist``; ``nprobe >= nlist`` scans everything and is exact. With
        the default ``nlist``, retrieval recall@20 on the checkpoints above
        was 0.990 (ML-1M, nlist 90) and 0.950 (Amazon-Book, nlist 631) at
        32, 0.967 / 0.918 at 16. Recall at a fixed nprobe falls as nlist
        grows with the catalogue: sweep it for large ones.
    threads : int >= 1, default 1. OpenMP threads used by faiss.

    The effective ``nlist`` of a built index is ``nlist_`` and is reported by
    :meth:`info` under ``"index"``.
    """

    name = "faiss-ivf"
    exact = False
    build_params = {"nlist": None, "train_seed": 1234}
    search_params = {"nprobe": 32}
    param_docs = {
        "nlist": "inverted lists (k-means centroids); None: about 4*sqrt(n_items), at least 39 items per list",
        "train_seed": "seed of the k-means initialisation (default 1234)",
        "nprobe": "lists scanned per query, clipped to nlist (default 32)",
    }
    _faiss_class = "IndexIVFFlat"

    @classmethod
    def touched_bytes(cls, info: dict, search_params: dict, k: int, posting, n_queries: int):
        """The centroids plus ``nprobe / nlist`` of the vectors and their 8-byte ids.

        ``nlist`` is the build parameter, else the built index's
        (``info["index"]["nlist"]``); NaN when neither is known.
        """
        n_items, dims = int(info.get("n_items") or 0), int(info.get("dims") or 0)
        nlist = (info.get("build_params") or {}).get("nlist") or (info.get("index") or {}).get("nlist")
        if not nlist:
            return np.full(n_queries, np.nan), "n/a (nlist unknown)"
        nprobe = {**cls.search_params, **(search_params or {})}["nprobe"]
        frac = min(1.0, float(nprobe) / float(nlist))
        b = float(nlist) * dims * 4 + frac * n_items * (dims * 4 + 8)
        return np.full(n_queries, b), "centroids + nprobe/nlist of the vectors"

    def _check_params(self) -> None:
        super()._check_params()
        _check_int("nlist", self.params["nlist"], 1, allow_none=True, hint="or None for about 4*sqrt(n_items)")
        _check_int("train_seed", self.params["train_seed"], 0)
        _check_int("nprobe", self._search_params["nprobe"], 1, hint="(lists scanned per query, at most nlist)")

    def _new_index(self, faiss, dims: int, n_items: int):
        nlist = self.params["nlist"]
        if nlist is None:
            nlist = default_nlist(n_items)
        nlist = int(nlist)
        if nlist > n_items:
            raise BackendError(
                f"nlist must be at most the number of items ({n_items}) because k-means trains on the items; "
                f"got nlist={nlist} (default for this catalogue: {default_nlist(n_items)})"
            )
        if nlist * MIN_POINTS_PER_CENTROID > n_items:
            logger.warning(
                "nlist=%d leaves k-means %.1f training points per list (faiss asks for %d); lists will be uneven. "
                "The default for %d items would be %d",
                nlist, n_items / nlist, MIN_POINTS_PER_CENTROID, n_items, default_nlist(n_items),
            )
        quantizer = faiss.IndexFlatIP(dims)
        index = faiss.IndexIVFFlat(quantizer, dims, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(self.params["train_seed"])
        index.cp.spherical = True  # centroids on the unit sphere, like the item rows
        self.nlist_ = nlist
        return index

    def _train(self, faiss, index, X: np.ndarray) -> None:
        index.train(X)

    def _check_structure(self, faiss, index, file: Path) -> None:
        check_ivf(faiss, index, file)

    def _after_load(self, index) -> None:
        self.nlist_ = int(index.nlist)

    def _on_search_params(self) -> None:
        nlist = getattr(self, "nlist_", None)
        if nlist is not None and self._search_params["nprobe"] > nlist:
            logger.debug("nprobe=%d exceeds nlist=%d; every list is scanned", self._search_params["nprobe"], nlist)

    def _search_parameters(self, faiss, k: int):
        nprobe = min(int(self._search_params["nprobe"]), self.nlist_)
        return faiss.SearchParametersIVF(nprobe=nprobe)

    def info(self) -> dict[str, Any]:
        out = super().info()
        if getattr(self, "nlist_", None) is not None:
            out["index"] = {"nlist": self.nlist_}
        return out


# ------------------------------------------------------- structural checks
#
# faiss reads an index file without checking that its arrays are consistent
# (a neighbour id past the end of the graph, a list id past the catalogue):
# searching such an index would read outside faiss's arrays. These checks
# run on every load, whether or not the file digests were verified.
