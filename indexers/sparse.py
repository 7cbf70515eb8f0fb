"""Exact in-process backend: inner products, the reference for every other backend.

Sparse checkpoints are stored as an inverted index split into blocks of
consecutive items (:class:`BlockedPostings`: one posting list of (block-local
item id, value) per dimension and item block), so a sparse query touches only
the postings of its active dimensions. Queries are scored by a compiled
term-at-a-time kernel (``_kernels``, numba) block by block, with a
cache-sized accumulator per thread; dense queries against a sparse index are
scored by the same kernel as queries with every dimension active. Dense
checkpoints are scored with a dense matrix product. Signed values, no
approximation; ties are broken by the lower item index.

Index directory (sparse checkpoints): ``postings_indptr.npy`` (int64,
``dims * n_blocks + 1``), ``postings_indices.npy`` (uint16 block-local ids),
``postings_data.npy`` (float32); ``backend.json`` records ``block_items`` in
its build parameters, which marks this layout. Directories written before
the blocked layout (plain ``dims x n_items`` postings with int32 ids, no
``block_items``) still load: they are converted in memory (not memory-mapped;
rebuild them to map them again).

Thread safety: searches only read the index; each thread has its own
accumulator, so concurrent calls are safe.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from elsa_index._checks import check_int
from elsa_index._io import load_array, load_csr, save_array
from elsa_index.errors import BackendError
from elsa_index.topk import topk_unchecked

from .base import Backend
from .requests import Results, padded

logger = logging.getLogger(__name__)

__all__ = ["ExactSparse", "BlockedPostings"]

#: largest block: block-local item ids are uint16
MAX_BLOCK_ITEMS = 65536
#: smallest block accepted as a build parameter (the row pointers grow as dims x n_items / block_items)
MIN_BLOCK_ITEMS = 1024
KERNELS = ("blocked", "reference")


def _kernels():
    # Imported on first use: numba costs ~50 MB and ~1 s to import, which dense checkpoints and
    # processes that only list the backends never pay.
    from . import _kernels as kernels

    return kernels


@functools.lru_cache(maxsize=None)
def _have_numba() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


class BlockedPostings:
    """Postings split into blocks of consecutive items: the layout of :func:`blocked_topk`.

    A CSR-like matrix of ``dims * n_blocks`` rows: row ``d * n_blocks + b``
    lists the items of block b active in dimension d, as block-local ids
    (``item - b * block_items``, uint16, ascending) with their float32 values.
    Rows are dimension-major, so dimension d's entries are one contiguous
    range (``indptr[d * n_blocks]`` to ``indptr[(d + 1) * n_blocks]``) in item
    order, and ``data`` is ordered exactly as in the plain ``dims x n_items``
    postings. (scipy's sparse matrices hold int32/int64 ids only, so the three
    arrays are kept as they are.)

    Parameters
    ----------
    indptr : int64 (dims * n_blocks + 1,) row starts.
    indices : uint16 (nnz,) block-local item ids.
    data : float32 (nnz,) values.
    n_items, dims, block_items : the catalogue and the block size
        (``n_blocks = ceil(n_items / block_items)``, at least 1).
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_items: int, dims: int,
                 block_items: int):
        self.indptr = indptr
        self.indices = indices
        self.data = data
        self.n_items = int(n_items)
        self.dims = int(dims)
        self.block_items = int(block_items)
        self.n_blocks = n_blocks(self.n_items, self.block_items)

    @classmethod
    def from_embeddings(cls, embeddings, block_items: int = MAX_BLOCK_ITEMS) -> "BlockedPostings":
        """Blocked postings of sparse item embeddings (n_items x dims, any scipy sparse format)."""
        postings = sp.csr_matrix(embeddings.T, dtype=np.float32)
        postings.sort_indices()
        return cls.from_postings(postings, embeddings.shape[0], block_items)

    @classmethod
    def from_postings(cls, postings, n_items: int, block_items: int = MAX_BLOCK_ITEMS) -> "BlockedPostings":
        """Blocked postings from plain ones (CSR dims x n_items with sorted indices; not modified)."""
        if not 1 <= block_items <= MAX_BLOCK_ITEMS:
            raise ValueError(f"block_items must be in [1, {MAX_BLOCK_ITEMS}], got {block_items}")
        if not postings.has_sorted_indices:
            postings = postings.sorted_indices()
        dims = postings.shape[0]
        nb = n_blocks(n_items, block_items)
        items = np.asarray(postings.indices)
        block = items // block_items
        # Row of each entry: its dim's first row plus its block. Entries are sorted by (dim, item), hence by row.
        row = np.repeat(np.arange(dims, dtype=np.int64) * nb, np.diff(postings.indptr)) + block
        indptr = np.zeros(dims * nb + 1, np.int64)
        np.cumsum(np.bincount(row, minlength=dims * nb), out=indptr[1:])
        del row
        local = (items - block * block_items).astype(np.uint16)
        return cls(indptr, local, np.asarray(postings.data, dtype=np.float32), n_items, dims, block_items)

    @classmethod
    def load(cls, directory: Path, n_items: int, dims: int, block_items: int, *, mmap: bool = False):
        """Read ``postings_*.npy`` from ``directory`` and check them, so no file can make the kernel read or
        write outside its arrays; raises BackendError naming the file and what is wrong."""
        indptr = load_array(directory / "postings_indptr.npy", BackendError, mmap=mmap)
        indices = load_array(directory / "postings_indices.npy", BackendError, mmap=mmap)
        data = load_array(directory / "postings_data.npy", BackendError, mmap=mmap)
        nb = n_blocks(n_items, block_items)
        what = f"{directory}: postings_ arrays"
        if data.ndim != 1 or indices.ndim != 1 or indptr.ndim != 1:
            raise BackendError(f"{what} must be 1-D")
        if data.dtype.kind != "f" or indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
            raise BackendError(f"{what} have dtypes {data.dtype}/{indices.dtype}/{indptr.dtype}; "
                               "expected float32/uint16/int64")
        if len(indptr) != dims * nb + 1 or len(data) != len(indices) or indptr[0] != 0 or indptr[-1] != len(data):
            raise BackendError(
                f"{what} are inconsistent with {dims} dims x {nb} blocks of {block_items} items "
                f"({len(indptr)} pointers, {len(data)} values)")
        if len(indptr) > 1 and (np.diff(indptr) < 0).any():
            raise BackendError(f"{what}: indptr is not monotone")
        last = n_items - (nb - 1) * block_items  # items in the last block
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= block_items):
            raise BackendError(f"{what}: column indices outside [0, {block_items}) (block-local item ids)")
        tail = indptr[np.arange(dims, dtype=np.int64) * nb + nb - 1], indptr[np.arange(dims, dtype=np.int64) * nb + nb]
        if last < block_items and any(int(indices[a:b].max(initial=0)) >= last for a, b in zip(*tail) if b > a):
            raise BackendError(f"{what}: column indices outside [0, {last}) in the last block")
        if data.size and not np.isfinite(data).all():
            raise BackendError(f"{what}: values contain NaN or inf")
        if data.dtype != np.float32 or indices.dtype != np.uint16 or indptr.dtype != np.int64:
            raise BackendError(f"{what} have dtypes {data.dtype}/{indices.dtype}/{indptr.dtype}; "
                               "expected float32/uint16/int64")
        return cls(indptr, indices, data, n_items, dims, block_items)

    def to_postings(self):
        """The plain postings (scipy CSR dims x n_items, int32 item ids), sharing the value array."""
        first = (np.arange(self.dims * self.n_blocks, dtype=np.int64) % self.n_blocks) * self.block_items
        items = np.repeat(first.astype(np.int32), np.diff(self.indptr))  # first item of each entry's block
        items += self.indices  # in place: no second array of nnz ids
        return sp.csr_matrix((self.data, items, np.asarray(self.indptr[:: self.n_blocks], dtype=np.int64)),
                             shape=(self.dims, self.n_items), copy=False)

    @property
    def nnz(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.indices.nbytes + self.indptr.nbytes)


def n_blocks(n_items: int, block_items: int) -> int:
    """Number of item blocks (at least one, so an empty catalogue still has a valid layout)."""
    return max(1, -(-int(n_items) // int(block_items)))


class ExactSparse(Backend):
    """Exact top-k by inner product over sparse (or dense) item embeddings.

    Build parameters
    ----------------
    block_items : items per block of the blocked postings (sparse checkpoints).

    Search parameters
    -----------------
    batch_size : queries scored at once by the dense matrix product (bounds memory to batch_size x n_items floats).
    kernel : "blocked" (default) or "reference" (the unblocked kernel, for comparison).
    """

    name = "sparse"
    accepts = "any"
    exact = True
    build_params = {"block_items": MAX_BLOCK_ITEMS}
    search_params = {"batch_size": 256, "kernel": "blocked"}
    param_docs = {
        "block_items": f"items per block of the postings (sparse checkpoints; {MIN_BLOCK_ITEMS}-{MAX_BLOCK_ITEMS}): "
                       "each block's scores are summed in an accumulator of block_items floats (256 KiB at the "
                       "default, held in the core's L2 cache) and item ids are stored in 2 bytes",
        "batch_size": "queries scored at once by the dense matrix product (dense checkpoints; bounds memory to "
                      "batch_size x n_items floats)",
        "kernel": "sparse queries: 'blocked' (cache-blocked postings, the default) or 'reference' (one accumulator "
                  "of n_items floats, the original kernel, kept for comparison; builds plain postings in memory, "
                  "+4 bytes per posting)",
    }

    @classmethod
    def touched_bytes(cls, info: dict, search_params: dict, k: int, posting, n_queries: int):
        """Sparse checkpoints: the postings of the query's dims (6 B each, 8 B with the reference kernel); dense: every vector (n x dims x 4 B)."""
        if posting is not None:
            if search_params.get("kernel", "blocked") == "reference":
                return np.asarray(posting, dtype=np.float64), "postings of the query's dims x 8 B"
            return (np.asarray(posting, dtype=np.float64) * 0.75,
                    "postings of the query's dims x 6 B (float32 value, uint16 block-local id)")
        n_items, dims = int(info.get("n_items") or 0), int(info.get("dims") or 0)
        return np.full(n_queries, float(n_items) * dims * 4), "all vectors (n x dims x 4 B)"

    def __init__(self, **params):
        super().__init__(**params)
        self._local = threading.local()
        self.postings_: BlockedPostings | None = None
        self.dense_: np.ndarray | None = None
        self._plain_ = None  # plain postings (dims x n_items), only for kernel="reference" or without numba

    def _check_params(self) -> None:
        check_int(self.params["block_items"], "block_items", MIN_BLOCK_ITEMS, MAX_BLOCK_ITEMS, error=BackendError)
        check_int(self._search_params["batch_size"], "batch_size", 1, error=BackendError)
        kernel = self._search_params["kernel"]
        if not isinstance(kernel, str) or kernel not in KERNELS:
            raise BackendError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")

    def _on_search_params(self) -> None:
        if self.postings_ is None:
            self._plain_ = None
        elif self._search_params["kernel"] == "reference" or not _have_numba():
            if self._plain_ is None:
                self._plain_ = self.postings_.to_postings()
        else:
            self._plain_ = None  # the blocked kernel does not need them

    def _build(self, embeddings, *, progress: bool) -> None:
        self._plain_ = None
        if sp.issparse(embeddings):
            self.postings_ = BlockedPostings.from_embeddings(embeddings, int(self.params["block_items"]))
            self.dense_ = None
        else:
            self.postings_ = None
            self.dense_ = np.ascontiguousarray(embeddings, dtype=np.float32)

    def _scores(self, Q) -> np.ndarray:
        if self._plain_ is not None:
            if sp.issparse(Q):
                return (Q @ self._plain_).toarray()  # sparse x sparse: only the query's posting lists
            return np.asarray((self._plain_.T @ Q.T).T, dtype=np.float32)
        if sp.issparse(Q):
            return np.asarray(Q @ self.dense_.T, dtype=np.float32)
        return Q @ self.dense_.T

    def _acc(self, size: int) -> np.ndarray:
        return thread_accumulator(self._local, size)

    def _search_excluding(self, Q, k: int, ex) -> Results:
        if self.postings_ is not None and _have_numba() and self._search_params["kernel"] == "blocked":
            # The blocked kernel skips excluded items itself, so it fetches k whatever the exclusions.
            ids, scores = _kernels().blocked_topk(self.postings_, Q if sp.issparse(Q) else sp.csr_matrix(Q),
                                                  min(k, self.n_items_), self._acc(self.postings_.block_items), ex)
            return padded(ids, scores, k)
        return super()._search_excluding(Q, k, ex)

    def _search(self, queries, k: int):
        if self.postings_ is not None and _have_numba():
            # Dense queries go through the kernel as queries with every dim active: same scores, same order.
            Q = queries if sp.issparse(queries) else sp.csr_matrix(queries)
            if self._search_params["kernel"] == "reference":
                return _kernels().sparse_topk(self._plain_, Q, k, self._acc(self.n_items_))
            return _kernels().blocked_topk(self.postings_, Q, k, self._acc(self.postings_.block_items))
        n = queries.shape[0]
        ids = np.empty((n, k), np.int64)
        scores = np.empty((n, k), np.float32)
        step = int(self._search_params["batch_size"])
        for start in range(0, n, step):
            stop = min(n, start + step)
            S = np.asarray(self._scores(queries[start:stop]), dtype=np.float32)
            ids[start:stop], scores[start:stop] = topk_unchecked(S, k, None, copy=False)
        return ids, scores

    def _save(self, directory: Path, *, with_embeddings: bool = True) -> None:
        if self.postings_ is not None:
            p = self.postings_
            save_array(directory / "postings_indptr.npy", np.asarray(p.indptr, dtype=np.int64))
            save_array(directory / "postings_indices.npy", np.asarray(p.indices, dtype=np.uint16))
            save_array(directory / "postings_data.npy", np.asarray(p.data, dtype=np.float32))
        elif with_embeddings:
            save_array(directory / "embeddings.npy", self.dense_)
        # else: a dense index inside an index directory scores with its checkpoint's array.

    def _load(self, directory: Path, *, checkpoint=None, mmap: bool = False) -> None:
        shape = (self.n_items_, self.dims_)
        self._plain_ = None
        if (directory / "postings_data.npy").exists():
            if _blocked_layout(directory):
                self.postings_ = BlockedPostings.load(directory, self.n_items_, self.dims_,
                                                      int(self.params["block_items"]), mmap=mmap)
            else:
                # Written before the blocked layout: plain postings (dims x n_items), converted in memory.
                plain = load_csr(directory, "postings_", (self.dims_, self.n_items_), BackendError, mmap=mmap)
                logger.warning("%s holds the older unblocked sparse layout; converted in memory (%d postings). "
                               "Rebuild the index to memory-map it and to load it faster", directory, plain.nnz)
                self.postings_ = BlockedPostings.from_postings(plain, self.n_items_, int(self.params["block_items"]))
            self.dense_ = None
            return
        if (directory / "embeddings.npy").exists():
            dense = load_array(directory / "embeddings.npy", BackendError, mmap=mmap)
        elif checkpoint is not None and not checkpoint.sparse:
            dense = checkpoint.embeddings
        else:
            raise BackendError(f"{directory} holds neither postings_*.npy nor embeddings.npy; "
                               "expected a directory written by the 'sparse' backend")
        if dense.shape != shape or dense.dtype != np.float32:
            raise BackendError(f"{directory}: embeddings have {dense.dtype} {dense.shape}, expected float32 {shape}")
        if dense.size and not np.isfinite(dense).all():
            raise BackendError(f"{directory}: embeddings contain NaN or inf values; expected finite weights")
        self.postings_ = None
        self.dense_ = dense


def _blocked_layout(directory: Path) -> bool:
    """Whether ``backend.json`` marks the blocked postings (its build parameters record ``block_items``)."""
    try:
        manifest = json.loads((directory / "backend.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # Backend.load has read it already; a directory without one is a new one
        return True
    params = manifest.get("build_params") if isinstance(manifest, dict) else None
    return not isinstance(params, dict) or "block_items" in params


def thread_accumulator(local: threading.local, size: int) -> np.ndarray:
    """The calling thread's zeroed float32 accumulator of ``size`` floats for the exact kernels (which leave it
    zeroed), kept in ``local``, one per size in use."""
    accs = getattr(local, "accs", None)
    if accs is None:
        accs = local.accs = {}
    acc = accs.get(size)
    if acc is None:
        acc = accs[size] = np.zeros(size, np.float32)
    return acc
