"""Approximate in-process backend for signed sparse embeddings: impact-ordered lists, exact candidate scores.

Built for Compressed ELSA catalogues: items with few active dimensions (8-128),
queries with hundreds, values of both signs. Each dimension has two impact
lists (its positive and its negative entries, each by decreasing magnitude);
a query reads only the list that agrees with the sign of each of its terms,
in rounds of decreasing contribution ``|u_d| * |a_jd|`` across all terms, and
scores every item it meets exactly through a forward index (item -> its
entries, items grouped by their dominant signed dimension so that the items
met together sit together). It stops when unseen items, judged by how far
the scores of the items found so far exceeded the contributions they were
found by, can no longer reach the current k-th score (``heap_factor``), or
when its posting budget is spent. See
:mod:`elsa_index.indexers._approx_kernels` for the algorithm.

What is approximate: which items become candidates. Every returned score is
the exact inner product, bit-identical to the ``sparse`` backend's (same
summation order, ties to the lower item index). With ``heap_factor <= 1 /
nnz_max`` (e.g. 1e-6), ``query_share=1``, ``max_postings=0`` and
``posting_share=1`` the results equal the exact top k.

When the exact kernel is faster: ``exact_below`` (an item count) sends
searches over smaller catalogues to the exact backend's blocked kernel
instead (postings made from the forward rows at the first such search;
exact results, same scores and ties; ``info()["search_path"]`` says which).
The default (None) takes the exact path under 100,000 items, and for items
of more than 16 values at any size; ``exact_below=0`` always searches
approximately. Measured one query at a time (k = 100): ML-1M (3,533 items)
0.043 vs 0.144 ms for 16 values per item and 0.26 vs 0.85 ms for 128;
Amazon-Book (24,915 items) 0.165 vs 0.195 ms for 32 and 2.1 vs 10.4 ms for
128; synthetic catalogues of 16 values per item break even at ~100,000
items (0.36 vs 0.34 ms) and the approximate search wins above (0.71 vs
1.32 ms at 1M). Longer rows lose at every size: at 1M items (1,024 dims,
queries of ML-1M users' length) 32 values took 27.8 ms at recall@20 0.997
against exact's 24.4 ms; 100k items of 128 values 37 vs 13.5 ms
(:mod:`elsa_index.eval.studies.synthetic_catalogue`).

Thread safety: searches only read the index (its arrays are read-only); the
scratch arrays (a dense copy of the query and a bitset of the items met) are
per thread.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from elsa_index._checks import check_float, check_int
from elsa_index._io import check_csr, load_array, save_array
from elsa_index.errors import BackendError

from . import _approx_kernels as _k
from .base import Backend
from .requests import Results, padded

logger = logging.getLogger(__name__)

__all__ = ["ApproxSparse"]

#: bytes of one impact-list entry (int32 item + uint8 magnitude code)
_LIST_ENTRY_BYTES = 5


class ApproxSparse(Backend):
    """Approximate top-k by inner product over signed sparse item embeddings.

    Build parameters
    ----------------
    posting_share : share of each impact list kept (its largest magnitudes); 1 keeps every entry.

    Search parameters
    -----------------
    heap_factor : in (0, 1]; stop once ``tau * min(nnz_max, ratio / heap_factor)`` falls to the k-th score,
        where ``tau`` is the contribution threshold reached and ``ratio`` the mean score / contribution of
        the items admitted so far. Smaller reads more (<= 1 / nnz_max: exact). None (default):
        :func:`default_heap_factor` of each query (0.55, lower the more query terms an item shares).
    query_share : in (0, 1]; query terms are taken by decreasing |weight| until this share of the query's
        L1 mass is covered.
    max_postings : posting budget per query (0: none).
    exact_below : catalogues of fewer items are searched exactly (see the module notes); 0: never; None
        (default): under 100,000 items, or items of more than 16 values.
    """

    name = "sparse-approx"
    accepts = "sparse"
    exact = False
    build_params = {"posting_share": 1.0}
    search_params = {"heap_factor": None, "query_share": 1.0, "max_postings": 0, "exact_below": None}
    param_docs = {
        "posting_share": "share of each impact list kept at build time, largest |values| first (0-1]; "
                         "1 keeps every entry",
        "heap_factor": "(0-1]: stop reading postings once the contribution threshold x min(nnz_max, "
                       "ratio / heap_factor) falls to the k-th score (ratio: mean score / finding contribution "
                       "of the items admitted so far); smaller reads more, <= 1/nnz_max is exact; None: per "
                       "query, 0.55 x m^-0.15 with m = mean values per item x query terms / dims (at least 1)",
        "query_share": "(0-1]: query terms are used by decreasing |weight| until this share of the query's "
                       "L1 mass is covered",
        "max_postings": "posting budget per query (integer >= 0; 0 means no budget)",
        "exact_below": "catalogues of fewer items are searched with the exact kernel, faster there (integer "
                       ">= 0; 0: always approximate; None (default): under 100000 items, or items of more than "
                       "16 values, at any size)",
    }

    @classmethod
    def touched_bytes(cls, info: dict, search_params: dict, k: int, posting, n_queries: int):
        """Lower model: the k items returned, each found through one list entry (5 B) and scored from its
        forward row (6 B per stored entry, + 8 B of offset when rows differ in length). The postings actually
        read depend on where the adaptive stop falls; ``search_stats`` reports them."""
        n_items = int(info.get("n_items") or 0)
        entries = info.get("stored_entries")
        if info.get("search_path") == "exact" and posting is not None:
            return (np.asarray(posting, dtype=np.float64) * 0.75,
                    "exact path: postings of the query's dims x 6 B (float32 value, uint16 block-local id)")
        if not n_items or entries is None:
            return np.full(n_queries, np.nan), "n/a"
        offset = 0.0 if info.get("uniform_rows") else 8.0
        row = 6.0 * float(entries) / n_items + offset
        per_query = min(int(k), n_items) * (_LIST_ENTRY_BYTES + row)
        return np.full(n_queries, per_query), ("k x (one list entry 5 B + its forward row, 6 B/entry"
                                               + (")" if not offset else " + 8 B offset)"))

    def info(self) -> dict:
        out = super().info()
        if getattr(self, "fval_", None) is not None:
            out["stored_entries"] = int(len(self.fval_))
            out["uniform_rows"] = bool(self.row_stride_)
            out["heap_factor_in_use"] = self.heap_factor_ if self.heap_factor_ is not None else "per query"
            out["search_path"] = "exact" if self.exact_path_ else "approximate"
        return out

    def __init__(self, **params):
        super().__init__(**params)
        self._local = threading.local()
        self._exact_lock = threading.Lock()
        #: blocked postings of the rows in their original order, for the exact path (made at its first search)
        self._exact_postings = None

    def _check_params(self) -> None:
        check_float(self.params["posting_share"], "posting_share", 0.0, 1.0, low_open=True, error=BackendError)
        check_float(self._search_params["heap_factor"], "heap_factor", 0.0, 1.0, low_open=True, allow_none=True,
                    error=BackendError)
        check_float(self._search_params["query_share"], "query_share", 0.0, 1.0, low_open=True, error=BackendError)
        check_int(self._search_params["max_postings"], "max_postings", 0, error=BackendError,
                  hint=" (0 means no budget)")
        check_int(self._search_params["exact_below"], "exact_below", 0, allow_none=True, error=BackendError,
                  hint=" (catalogues of fewer items are searched exactly; 0: never; None: the default rule)")

    # ------------------------------------------------------------------ build

    def _set_forward(self, embeddings, perm=None) -> None:
        """The forward index: rows in internal order (``perm``: internal -> original; computed when None)."""
        E = sp.csr_matrix(embeddings, dtype=np.float32)
        if not E.has_sorted_indices:  # the shared summation order: ascending dims
            E = E.sorted_indices()
        n, dims = E.shape
        if perm is None:
            perm = _k.item_order(E.indptr.astype(np.int64), E.indices, E.data, n)
        E = E[perm]
        dim_type = np.uint16 if dims <= 65536 else np.int32
        self.perm_ = np.asarray(perm, dtype=np.int64)
        self.inv_ = np.empty_like(self.perm_)
        self.inv_[self.perm_] = np.arange(n, dtype=np.int64)
        self.fptr_ = np.asarray(E.indptr, dtype=np.int64)
        self.fdim_ = np.asarray(E.indices, dtype=dim_type)
        self.fval_ = np.asarray(E.data, dtype=np.float32)
        self.nnz_max_ = int(np.diff(self.fptr_).max()) if n else 0
        self.row_stride_ = _k.uniform_stride(self.fptr_, self.nnz_max_)

    def _build(self, embeddings, *, progress: bool) -> None:
        self._set_forward(embeddings)
        n, dims = embeddings.shape
        self.lptr_, self.lids_, self.lcodes_, scale = _k.build_lists(
            self.fptr_, self.fdim_, self.fval_, n, dims, float(self.params["posting_share"]))
        self.scale_ = np.float64(scale)
        self._freeze()

    def _freeze(self) -> None:
        """Make the index arrays read-only: built, loaded and memory-mapped indexes then share one compiled
        kernel (numba compiles one version per array writability)."""
        for name in ("fptr_", "fdim_", "fval_", "perm_", "inv_", "lptr_", "lids_", "lcodes_"):
            arr = getattr(self, name)
            if arr.flags.writeable:
                arr.flags.writeable = False
        self._exact_postings = None  # made again from these rows by the first exact-path search

    # ----------------------------------------------------------------- search

    def _scratch(self):
        loc = self._local
        qdense = getattr(loc, "qdense", None)
        if qdense is None or qdense.shape[0] != self.dims_ or loc.seen.shape[0] != (self.n_items_ + 63) // 64:
            loc.qdense = np.zeros(self.dims_, np.float32)
            loc.seen = np.zeros((self.n_items_ + 63) // 64, np.uint64)
        return loc.qdense, loc.seen

    @property
    def exact_path_(self) -> bool:
        """Whether searches run the exact kernel: fewer items than ``exact_below``; by default (None) also
        items of more than ``LONG_ROWS`` values."""
        below = self._search_params["exact_below"]
        if below is None:
            return self.n_items_ < DEFAULT_EXACT_BELOW or self.nnz_max_ > LONG_ROWS
        return self.n_items_ < int(below)

    def _search_excluding(self, Q, k: int, ex) -> Results:
        # Both paths skip excluded items themselves (the approximate one counts them as met), so each query
        # asks for k whatever its history: the result of a query never depends on the other queries of a batch.
        ids, scores = self._search(Q, min(k, self.n_items_), ex)
        return padded(ids, scores, k)

    def _search(self, queries, k: int, exclude=None):
        # Validated queries (Backend.as_queries) are float32 CSR with sorted indices, or a float32 array.
        Q = queries if sp.issparse(queries) else sp.csr_matrix(queries)
        if self.exact_path_:
            return self._search_exact(Q, k, exclude)
        qdense, seen = self._scratch()
        p = self._search_params
        forward = (self.fptr_, self.fdim_, self.fval_, self.perm_, self.inv_, self.nnz_max_)
        lists = (self.lptr_, self.lids_, self.lcodes_, self.scale_)
        ids, scores, stats = _k.search_batch(forward, lists, Q, k, qdense, seen, self._heap_factors(Q),
                                             p["query_share"], p["max_postings"], self.row_stride_, exclude)
        total = getattr(self._local, "stats", None)
        self._local.stats = (stats if total is None else total + stats)
        return ids, scores

    def _search_exact(self, Q, k: int, exclude=None):
        """The exact blocked kernel over postings of the rows in their original order (same scores and ties);
        ``exclude`` as :func:`~elsa_index.indexers._kernels.blocked_topk` takes it."""
        from . import _kernels
        from .sparse import BlockedPostings, thread_accumulator

        postings = self._exact_postings
        if postings is None:
            with self._exact_lock:
                if self._exact_postings is None:
                    internal = sp.csr_matrix((self.fval_, self.fdim_, self.fptr_), shape=(self.n_items_, self.dims_))
                    self._exact_postings = BlockedPostings.from_embeddings(internal[self.inv_])
                postings = self._exact_postings
        return _kernels.blocked_topk(postings, Q, k, thread_accumulator(self._local, postings.block_items), exclude)

    @property
    def heap_factor_(self) -> float | None:
        """The heap factor in use: the search parameter, or None when it is chosen per query
        (:func:`default_heap_factor`)."""
        h = self._search_params["heap_factor"]
        return float(h) if h is not None else None

    def _heap_factors(self, Q) -> np.ndarray | float:
        """The search parameter, or :func:`default_heap_factor` of each query (its number of terms)."""
        if self._search_params["heap_factor"] is not None:
            return float(self._search_params["heap_factor"])
        mean_values = len(self.fval_) / max(self.n_items_, 1)
        return default_heap_factor(mean_values, np.diff(Q.indptr), self.dims_)

    def search_stats(self, *, reset: bool = True) -> dict:
        """Postings read and items scored by this thread's searches since the last reset (summed over queries)."""
        stats = getattr(self._local, "stats", None)
        if reset:
            self._local.stats = None
        if stats is None:
            return {"postings": 0, "scored": 0}
        return {"postings": int(stats[0]), "scored": int(stats[1])}

    # ------------------------------------------------------------ persistence

    def _save(self, directory: Path, *, with_embeddings: bool = True) -> None:
        save_array(directory / "lists_indptr.npy", self.lptr_)
        save_array(directory / "lists_items.npy", self.lids_)
        save_array(directory / "lists_codes.npy", self.lcodes_)
        save_array(directory / "lists_scale.npy", np.array([self.scale_], np.float64))
        save_array(directory / "item_order.npy", self.perm_.astype(np.int32 if self.n_items_ < 2**31 else np.int64))
        if with_embeddings:
            save_array(directory / "forward_indptr.npy", self.fptr_)
            save_array(directory / "forward_dims.npy", self.fdim_)
            save_array(directory / "forward_values.npy", self.fval_)
        # else: the forward index is the checkpoint's rows, taken from it at load.

    def _load(self, directory: Path, *, checkpoint=None, mmap: bool = False) -> None:
        n, dims = self.n_items_, self.dims_
        perm = load_array(directory / "item_order.npy", BackendError)
        if perm.dtype not in (np.int32, np.int64) or perm.shape != (n,) or not _is_permutation(perm):
            raise BackendError(f"{directory}/item_order.npy must be a permutation of the {n} item rows (int32)")
        perm = perm.astype(np.int64)
        if (directory / "forward_indptr.npy").exists():
            fptr = load_array(directory / "forward_indptr.npy", BackendError, mmap=mmap)
            fdim = load_array(directory / "forward_dims.npy", BackendError, mmap=mmap)
            fval = load_array(directory / "forward_values.npy", BackendError, mmap=mmap)
            _check_csr_arrays(directory, "forward", fptr, fdim, fval, n, dims, (np.uint16, np.int32), np.float32)
            self.fptr_, self.fdim_, self.fval_ = fptr, fdim, fval
            self.perm_ = perm
            self.inv_ = np.empty_like(perm)
            self.inv_[perm] = np.arange(n, dtype=np.int64)
            self.nnz_max_ = int(np.diff(fptr).max()) if n else 0
            self.row_stride_ = _k.uniform_stride(fptr, self.nnz_max_)
        elif checkpoint is not None and checkpoint.sparse:
            self._set_forward(checkpoint.embeddings, perm)
        else:
            raise BackendError(f"{directory} holds no forward_*.npy; expected a directory written by the "
                               f"{self.name!r} backend, or pass the sparse checkpoint it was built from")
        lptr = load_array(directory / "lists_indptr.npy", BackendError, mmap=mmap)
        lids = load_array(directory / "lists_items.npy", BackendError, mmap=mmap)
        codes = load_array(directory / "lists_codes.npy", BackendError, mmap=mmap)
        scale = load_array(directory / "lists_scale.npy", BackendError)
        _check_csr_arrays(directory, "lists", lptr, lids, codes, 2 * dims, n, (np.int32,), np.uint8)
        if scale.shape != (1,) or not np.isfinite(scale).all() or scale[0] <= 0:
            raise BackendError(f"{directory}/lists_scale.npy must hold one positive number")
        self.lptr_, self.lids_, self.lcodes_, self.scale_ = lptr, lids, codes, np.float64(scale[0])
        self._freeze()


#: the default item threshold of the exact path (``exact_below=None``)
DEFAULT_EXACT_BELOW = 100_000
#: by default, items of more than this many values are searched exactly at any catalogue size
LONG_ROWS = 16


def default_heap_factor(mean_values: float, query_terms, dims: int):
    """The default heap factor of queries of ``query_terms`` terms: ``0.55 * m ** -0.15``, ``m`` at least 1.

    ``m = mean_values * query_terms / dims`` is how many of a query's terms an
    item of ``mean_values`` values shares on average. The more it shares, the
    more an item's score exceeds the one contribution it is found by, so the
    search must read further before it stops. Calibrated at 1M items
    (k=100, retrieval recall@20 >= 0.98 wanted): 16 values per item of 4,096
    dims with 200-term queries (m = 0.8): 0.55 gives 0.994; 16 of 1,024
    dims with 455-term queries (m = 7.1): 0.55 gave 0.906, 0.45 0.985,
    0.39 0.998 (rule: 0.41); 32 of 1,024 with 710-term queries (m = 22):
    0.55 gave 0.72, 0.40 0.983, 0.35 0.998 (rule: 0.35). Works on a scalar
    or an array of term counts.
    """
    m = np.maximum(1.0, float(mean_values) * np.asarray(query_terms, dtype=np.float64) / max(int(dims), 1))
    out = 0.55 * m ** -0.15
    return float(out) if np.ndim(out) == 0 else out


def _is_permutation(perm: np.ndarray) -> bool:
    n = len(perm)
    if n and (int(perm.min()) < 0 or int(perm.max()) >= n):
        return False
    return bool((np.bincount(perm, minlength=n) == 1).all())


def _check_csr_arrays(directory, prefix, indptr, indices, values, n_rows, n_cols, index_types, value_type) -> None:
    """The dtypes the compiled kernels take, then the shared CSR checks (:func:`elsa_index._io.check_csr`: lengths,
    monotone offsets, indices in range), so that no file can make a kernel read outside its arrays."""
    types = [np.dtype(t) for t in index_types]
    if indptr.dtype != np.int64 or indices.dtype not in types or values.dtype != np.dtype(value_type):
        raise BackendError(f"{directory}: {prefix} arrays must be int64 offsets, "
                           f"{' or '.join(t.name for t in types)} indices and {np.dtype(value_type).name} values; "
                           f"got {indptr.dtype}, {indices.dtype} and {values.dtype}")
    check_csr(f"{directory}: {prefix} arrays", values, indices, indptr, (n_rows, n_cols), BackendError,
              real=np.dtype(value_type).kind == "f")