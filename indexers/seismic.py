"""Seismic (``pyseismic-lsr``) approximate index over sparse, signed item embeddings, re-ranked exactly.

Seismic (Bruch, Nardini, Rulli, Venturini, SIGIR 2024) is an inverted index
for learned sparse retrieval: each posting list is pruned to its largest
values, split into blocks of similar items (a clustering per list), and each
block keeps a *summary* vector; a search visits the posting lists of the
query's largest components and skips blocks whose summary's inner product
with the query cannot beat the current top-k (scaled by ``heap_factor``);
items are scored through a forward index of their values.

Signed values
-------------
Seismic needs non-negative values, so each (dimension, sign) pair is its own
component, as in the ``lucene`` backend: ``a_jd > 0`` is component ``2d``,
``a_jd < 0`` is component ``2d + 1``, with value ``|a_jd|``. A query ``u``
becomes the components ``2d`` for ``u_d > 0`` and ``2d + 1`` for ``u_d < 0``
with value ``|u_d|``: an item matches only on *agreeing* signs, and Seismic
ranks items by the positive part of ``u . a_j``; the disagreeing products,
which lower the true score, are invisible to it (sending them as negative
values lowered recall at equal latency on a 1M-item catalogue). Hence the
exact re-rank: Seismic's best ``candidates`` items are re-scored with the
signed float embeddings (:func:`elsa_index.scoring.score_rows`, the scores
every backend shares) and the top ``k`` by the exact inner product are
returned. Items that share no agreeing component with a query are never
returned for it; rows are then padded (ids -1, scores -inf).

What is approximate: the candidate list. Seismic prunes each posting list to
its largest values at build time (``n_postings``, ``max_fraction``),
visits only the posting lists of the query's largest components
(``query_mass``, ``query_cut``), skips blocks by
their (lossy, ``summary_energy``) summaries, and ranks candidates on the
agreeing part of the score; an item missed there is missed for good. The
returned scores are exact.

Build parameters
----------------
n_postings : int >= 1, default 4000. Postings kept per component on average
    (Seismic prunes globally to ``n_postings`` times the number of
    components, keeping the largest values).
max_fraction : float > 0, default 1.5. No posting list keeps more than
    ``max_fraction * n_postings`` postings.
centroid_fraction : float in (0, 1], default 0.2. Blocks per posting list,
    as a fraction of ``n_postings`` (0.2 rather than Seismic's 0.1: on the
    1M-item catalogue, 0.2 with ``summary_energy=0.5`` searched 1.2x faster
    at higher recall, for a 17% larger index).
min_cluster_size : int >= 1, default 2. Smaller blocks are merged into
    others.
summary_energy : float in (0, 1], default 0.5. Share of a block summary's
    L1 mass kept (summaries are pruned, so a block's bound is approximate).
doc_cut : int >= 1, default 15. Item components used by the approximate
    clustering of each posting list.
threads : int >= 0, default 1. Build threads (0: all cores).

Search parameters
-----------------
candidates : int >= 1, default 200. Items Seismic returns per query for the
    exact re-rank; the effective count is ``max(candidates, k_fetched)``
    (``k`` plus the query's excluded items), at most the catalogue.
query_mass : float in (0, 1] or None, default 0.55. Seismic visits the
    posting lists of the query's largest components (by ``|u_d|``) until
    they cover this share of the query's squared norm ``sum u_d^2``; the
    number of lists thus adapts to each query (on the 1M-item synthetic
    catalogue, 200-term queries: 23 lists at the median; ML-1M's 550-term
    user queries: 54). None: ``query_cut`` alone decides.
min_query_cut : int >= 1, default 16. At least this many posting lists per
    query (all of them for shorter queries): a mass share alone visits too
    few lists of a short query (3 of 15 on the test catalogues, recall@10
    0.88; 16 lists: 1.0), while long queries reach it by mass anyway.
query_cut : int >= 1 or None (default). At most this many posting lists
    per query, whatever ``query_mass`` and ``min_query_cut`` ask (with
    ``query_mass`` None: exactly the ``query_cut`` largest components, as
    Seismic's own ``query_cut``). ``query_mass`` and ``query_cut`` both None:
    every list of the query's components.
heap_factor : float > 0, default 0.9. Seismic's block-skipping factor: a
    block is scanned only when its summary's score, divided by
    ``heap_factor``, beats the current ``candidates``-th score; lower values
    scan more blocks (slower, better recall), 1 trusts the (lossy) summaries.
query_terms : int >= 1 or None (default). Send only the ``query_terms``
    largest ``|u_d|`` of each query to Seismic (they also order its
    candidates); None sends all. The re-rank always uses the whole query.

Determinism
-----------
Seismic's build clusters each posting list from randomly drawn centroids
(unseeded in 0.5.4): two builds of one checkpoint differ slightly, and so
may their results. A built or loaded index answers a query the same way
every time, from any thread and in any batch.

Thread safety
-------------
Seismic's search is a read-only method of the Rust index; pyseismic-lsr
0.5.4 holds the GIL while it runs, so concurrent searches from several
Python threads are safe but do not run in parallel (measured: a Python
thread spinning beside a run of searches got a tenth of the time it gets
alone). The re-rank reads the float rows only.

Output
------
Seismic's Rust code prints progress to the process's standard output. The
build and save redirect file descriptor 1 to a temporary file while Seismic
runs and pass what it printed to this module's logger (debug level), so that
the CLI's own output stays clean; output of other threads during that time
goes there too.

Files
-----
``seismic.index.seismic`` (Seismic's own serialisation), ``seismic.json``
(index class, component mapping, counts, versions) and
``embeddings_{data,indices,indptr}.npy`` (the float rows for the re-rank,
CSR; left out when saved inside an index directory, whose checkpoint holds
them). Every file is recorded with its sha256 in ``backend.json`` and
checked at load. Seismic reads its whole file into memory; ``mmap=True``
maps the re-rank rows only.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp

from elsa_index._checks import check_float, check_int
from elsa_index._io import read_json, save_csr, write_json
from elsa_index.errors import BackendError
from elsa_index.scoring import score_rows

from .base import Backend
from .requests import load_rerank_rows, prune, query_entries, ranked, rerank_rows

logger = logging.getLogger(__name__)

__all__ = ["SeismicBackend"]

INDEX_STEM = "seismic"
INDEX_FILE = INDEX_STEM + ".index.seismic"
MANIFEST = "seismic.json"
#: Seismic's standard index stores components as u16; the "LV" (large vocabulary) classes as u32
_U16_COMPONENTS = 1 << 16
_CLASSES = {"SeismicIndex": "SeismicDataset", "SeismicIndexLV": "SeismicDatasetLV"}


def _seismic(cls: type[Backend]):
    """Import pyseismic-lsr's module, or raise BackendError naming the extra to install."""
    missing = cls.missing_dependency()
    if missing:
        raise BackendError(missing)
    return importlib.import_module("seismic")


@contextlib.contextmanager
def _native_output_to_log(what: str) -> Iterator[list[str]]:
    """Send what native code prints to file descriptor 1 to the logger instead (see the module notes).

    Yields a list that holds the captured text once the block has ended.
    """
    sys.stdout.flush()
    captured: list[str] = []
    try:
        saved = os.dup(1)
    except OSError:  # no standard output at all (a closed descriptor): nothing to protect
        captured.append("")
        yield captured
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield captured
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))
            for line in captured[0].splitlines():
                if line.strip():
                    logger.debug("seismic %s: %s", what, line.strip())


def _total_bytes(text: str) -> int | None:
    """The index's bytes in memory from the text of Seismic's ``print_space_usage_byte``."""
    m = re.search(r"Total:\s*(\d+)\s*Bytes", text)
    return int(m.group(1)) if m else None


def _components(embeddings) -> sp.csr_matrix:
    """The item rows as float32 CSR without stored zeros or duplicates, indices sorted (a copy)."""
    emb = sp.csr_matrix(embeddings, dtype=np.float32, copy=True)
    emb.sum_duplicates()
    emb.eliminate_zeros()
    emb.sort_indices()
    return emb


def _lists_to_visit(w: np.ndarray, mass: float | None, floor: int, cap: int | None) -> int:
    """Posting lists to visit for query weights ``w`` (absolute values): as many of the largest as cover ``mass``
    of ``sum w^2``, at least ``floor``, at most ``cap``."""
    n = len(w)
    if mass is not None:
        c = np.cumsum(np.sort(w * w)[::-1])
        n = max(int(np.searchsorted(c, mass * c[-1])) + 1, floor)
    if cap is not None:
        n = min(n, int(cap))
    return max(1, min(n, len(w)))



class SeismicBackend(Backend):
    """Approximate top-k inner products from a Seismic index, re-ranked exactly.

    See the module documentation for the component mapping, what is
    approximate and the parameters.
    """

    name = "seismic"
    accepts = "sparse"
    exact = False
    build_params = {"n_postings": 4000, "max_fraction": 1.5, "centroid_fraction": 0.2, "min_cluster_size": 2,
                    "summary_energy": 0.5, "doc_cut": 15, "threads": 1}
    search_params = {"candidates": 200, "query_mass": 0.55, "min_query_cut": 16, "query_cut": None,
                     "heap_factor": 0.9, "query_terms": None}
    requires = ("seismic",)
    install_hint = 'pip install "elsa-index[seismic]"'
    param_docs = {
        "n_postings": "postings kept per (dimension, sign) component on average, the largest values (default 4000)",
        "max_fraction": "longest posting list, as a multiple of n_postings (default 1.5)",
        "centroid_fraction": "blocks per posting list, as a fraction of n_postings (default 0.2)",
        "min_cluster_size": "smallest block; smaller ones are merged into others (default 2)",
        "summary_energy": "share of each block summary's L1 mass kept (default 0.5)",
        "doc_cut": "item components used by the approximate clustering of each posting list (default 15)",
        "threads": "build threads, 0 = all cores (default 1)",
        "candidates": "items Seismic returns per query for the exact re-rank, at least the results fetched "
                      "(default 200)",
        "query_mass": "visit the lists of the largest query components until they cover this share of the "
                      "query's squared norm (default 0.55; None: query_cut alone)",
        "min_query_cut": "at least this many posting lists visited per query, all of a shorter query's "
                         "(default 16)",
        "query_cut": "at most this many posting lists visited per query (default None = no cap)",
        "heap_factor": "Seismic's block-skipping factor; lower scans more blocks (default 0.9)",
        "query_terms": "send only this many largest query entries to Seismic (default None = all)",
    }

    @classmethod
    def touched_bytes(cls, info: dict, search_params: dict, k: int, posting, n_queries: int):
        """No simple model: Seismic reads a pruned, block-skipped share of the postings."""
        return np.full(n_queries, np.nan), "n/a (pruned, block-skipped postings)"

    def __init__(self, **params):
        super().__init__(**params)
        self._index = None
        self.emb_: sp.csr_matrix | None = None
        self.n_indexed_: int | None = None
        self.index_class_: str | None = None
        self.index_bytes_: int | None = None
        self._names = None  # component id -> Seismic's string name ("42"), built once per index

    # ------------------------------------------------------------ parameters

    def _check_params(self) -> None:
        p, s = self.params, self._search_params
        check_int(p["n_postings"], "n_postings", 1, error=BackendError,
                  hint=" (postings kept per component on average)")
        check_float(p["max_fraction"], "max_fraction", 0, low_open=True, error=BackendError)
        check_float(p["centroid_fraction"], "centroid_fraction", 0, 1, low_open=True, error=BackendError)
        check_int(p["min_cluster_size"], "min_cluster_size", 1, error=BackendError)
        check_float(p["summary_energy"], "summary_energy", 0, 1, low_open=True, error=BackendError)
        check_int(p["doc_cut"], "doc_cut", 1, error=BackendError)
        check_int(p["threads"], "threads", 0, error=BackendError, hint=" (build threads; 0 = all cores)")
        check_int(s["candidates"], "candidates", 1, error=BackendError,
                  hint=" (items Seismic returns per query for the exact re-rank)")
        check_float(s["query_mass"], "query_mass", 0, 1, low_open=True, allow_none=True, error=BackendError)
        check_int(s["query_cut"], "query_cut", 1, allow_none=True, error=BackendError,
                  hint=" (at most this many posting lists visited per query, or None)")
        check_int(s["min_query_cut"], "min_query_cut", 1, error=BackendError,
                  hint=" (at least this many posting lists visited per query)")
        check_float(s["heap_factor"], "heap_factor", 0, low_open=True, error=BackendError)
        check_int(s["query_terms"], "query_terms", 1, allow_none=True, error=BackendError,
                  hint="; expected the number of largest query entries kept, or None for all")

    # ------------------------------------------------------------------ build

    def _build(self, embeddings, *, progress: bool) -> None:
        seismic = _seismic(type(self))
        emb = _components(embeddings)
        n, dims = emb.shape
        n_comp = 2 * dims
        index_class = "SeismicIndex" if n_comp <= _U16_COMPONENTS else "SeismicIndexLV"
        index, n_indexed, nbytes = None, int((np.diff(emb.indptr) > 0).sum()), 0
        if n_indexed:
            comp = 2 * emb.indices.astype(np.int64) + (emb.data < 0)  # ascending within a row, as Seismic needs
            ds = getattr(seismic, _CLASSES[index_class])(dim=n_comp)
            p = self.params
            logger.info("seismic: indexing %d item rows (%d components, %s)", n_indexed, n_comp, index_class)
            try:
                with _native_output_to_log("build") as text:
                    added = ds.add_documents_by_id([str(i) for i in range(n)], comp,
                                                   np.abs(emb.data).astype(np.float32), emb.indptr.astype(np.int64))
                    index = getattr(seismic, index_class).build_from_dataset(
                        ds, n_postings=int(p["n_postings"]), centroid_fraction=float(p["centroid_fraction"]),
                        min_cluster_size=int(p["min_cluster_size"]), summary_energy=float(p["summary_energy"]),
                        max_fraction=float(p["max_fraction"]), doc_cut=int(p["doc_cut"]),
                        num_threads=int(p["threads"]))
                    index.print_space_usage_byte()
            except BaseException as exc:  # pyo3 reports Rust panics as BaseException
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raise BackendError(f"Seismic could not build the index: {exc}") from None
            if added != n_indexed or index.len != n_indexed:
                raise BackendError(f"Seismic indexed {index.len} of {n_indexed} non-empty item rows; "
                                   "the index is incomplete")
            nbytes = _total_bytes(text[0])
        self.close()
        self._index, self.n_indexed_, self.index_class_, self.index_bytes_ = index, n_indexed, index_class, nbytes
        # The re-rank reads the checkpoint's rows themselves (stored zeros add nothing); no second copy is kept.
        self.emb_ = rerank_rows(embeddings)
        self._set_names(n_comp, seismic)

    def _set_names(self, n_comp: int, seismic) -> None:
        self._names = np.arange(n_comp).astype(str).astype(seismic.get_seismic_string())

    def close(self) -> None:
        """Drop the Seismic index (idempotent); the backend cannot search until built or loaded again."""
        self._index = None
        self._names = None

    # ----------------------------------------------------------------- search

    def _search(self, queries, k: int):
        if self._names is None:
            raise BackendError("the 'seismic' index was closed; build or load it again")
        index, names = self._index, self._names
        n = queries.shape[0]
        depth = min(max(int(self._search_params["candidates"]), k), max(self.n_items_, 1))
        mass, cap = self._search_params["query_mass"], self._search_params["query_cut"]
        floor = int(self._search_params["min_query_cut"])
        hf = float(self._search_params["heap_factor"])
        m = self._search_params["query_terms"]
        cand = np.full((n, depth), -1, np.int64)
        for r in range(n):
            dims, vals = prune(*query_entries(queries, r), m)
            if not len(dims) or index is None:
                continue
            comp = 2 * dims.astype(np.int64) + (vals < 0)
            w = np.abs(vals)
            cut = _lists_to_visit(w, mass, floor, cap)
            hits = index.search("q", names[comp], w.astype(np.float32), k=depth, query_cut=cut,
                                heap_factor=hf)
            if hits:
                cand[r, : len(hits)] = self._rows([h[2] for h in hits])
        # Exact signed scores of every query's candidates (the whole query, whatever query_terms kept).
        scores = score_rows(self.emb_, queries, cand)
        ids = np.full((n, k), -1, np.int64)
        out = np.full((n, k), -np.inf, np.float32)
        for r in range(n):
            ok = cand[r] >= 0
            ids[r], out[r] = ranked(cand[r, ok], scores[r, ok], k)
        return ids, out

    def _rows(self, doc_ids: list[str]) -> np.ndarray:
        """Item rows of Seismic's document ids, checked: integers in ``[0, n_items)``, each once."""
        try:
            rows = np.array([int(d) for d in doc_ids], dtype=np.int64)
        except (ValueError, OverflowError):
            raise BackendError("the Seismic index returned a document id that is not an item row number; "
                               "the index is corrupted: rebuild it") from None
        if rows.min() < 0 or rows.max() >= self.n_items_ or len(np.unique(rows)) != len(rows):
            raise BackendError(f"the Seismic index returned item rows outside [0, {self.n_items_}) or twice; "
                               "the index is corrupted: rebuild it")
        return rows

    # ------------------------------------------------------------ persistence

    def _save(self, directory: Path, *, with_embeddings: bool = True) -> None:
        if self._names is None:
            raise BackendError("the 'seismic' index was closed; build or load it again before saving")
        if self._index is not None:
            with _native_output_to_log("save"):
                self._index.save(str(directory / INDEX_STEM))
                # Seismic's save prints a line without its end, which stays in Rust's output buffer and would
                # reach the real standard output later; this print ends it while the output is redirected.
                self._index.print_space_usage_byte()
            if not (directory / INDEX_FILE).is_file():
                raise BackendError(f"Seismic did not write {directory / INDEX_FILE}")
        if with_embeddings:  # else the re-rank rows come from the checkpoint next to it
            save_csr(directory, "embeddings_", self.emb_)
        write_json(directory / MANIFEST, {
            "index_class": self.index_class_, "n_indexed": self.n_indexed_, "index_bytes": self.index_bytes_,
            "components": "2 * dim for positive values, 2 * dim + 1 for negative values (absolute values)",
            "versions": self._versions(),
        })

    def _load(self, directory: Path, *, checkpoint=None, mmap: bool = False) -> None:
        seismic = _seismic(type(self))
        m = read_json(directory / MANIFEST, BackendError)
        index_class, n_indexed = m.get("index_class"), m.get("n_indexed")
        if index_class not in _CLASSES:
            raise BackendError(f"{directory / MANIFEST}: unknown index_class {index_class!r}; "
                               f"expected one of {sorted(_CLASSES)}")
        if isinstance(n_indexed, bool) or not isinstance(n_indexed, int) or not 0 <= n_indexed <= self.n_items_:
            raise BackendError(f"{directory / MANIFEST}: invalid n_indexed {n_indexed!r}")
        shape = (self.n_items_, self.dims_)
        emb = load_rerank_rows(directory, checkpoint, shape, mmap=mmap)
        index = None
        if n_indexed:
            path = directory / INDEX_FILE
            if not path.is_file():
                raise BackendError(f"{directory} lacks {INDEX_FILE}; expected a directory written by the "
                                   "'seismic' backend")
            try:
                index = getattr(seismic, index_class).load(str(path))
            except BaseException as exc:  # pyo3 reports Rust panics as BaseException
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raise BackendError(f"Seismic could not read {path}: {exc}") from None
            if index.len != n_indexed:
                raise BackendError(f"{path} holds {index.len} items; {MANIFEST} says {n_indexed}")
        self.close()
        self._index, self.n_indexed_, self.index_class_ = index, n_indexed, index_class
        self.index_bytes_ = m.get("index_bytes")
        self.emb_ = emb
        self._set_names(2 * self.dims_, seismic)

    # ------------------------------------------------------------------ info

    def info(self) -> dict[str, Any]:
        out = super().info()
        if self.n_indexed_ is not None:
            out["index"] = {"index_class": self.index_class_, "n_indexed": self.n_indexed_,
                            "memory_bytes": self.index_bytes_}
        return out

    def _versions(self) -> dict[str, str]:
        try:
            return {"pyseismic-lsr": metadata.version("pyseismic-lsr")}
        except metadata.PackageNotFoundError:
            return {"pyseismic-lsr": "not installed"}

