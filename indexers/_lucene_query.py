"""Query building of the ``lucene`` backend: from signed query vectors to Lucene queries.

A query ``u`` becomes one boosted term per non-zero entry, ``p{d}`` for
``u_d > 0`` and ``n{d}`` for ``u_d < 0`` (term id ``2 d`` and ``2 d + 1``),
with boost ``|u_d| / max|u|``. A restricted search adds a filter clause of
*segment terms*: it restricts the matches without changing their scores.

Two forms of the same query: a byte request for the backend's Java class
(:func:`request`, see ``java/elsaindex/ImpactSearch.java``), the float32
boosts as they are; and, where that class is not available, query text for
Lucene's classic ``QueryParser`` (:func:`query_text`), the boosts written
with 6 decimals and the filter a required clause with boost 0.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _jvm
from ._lucene_files import FIELD

__all__ = ["thread_parser", "request", "query_text", "term_ids", "filter_term_ids", "MAX_CLAUSES"]

#: decimals of the normalised boosts (in (0, 1]): an error of at most 5e-7 of the largest, far under the 8-bit
#: impacts' 1/510; 9 decimals made the query text ~20% longer and its parse ~1.5x slower (measured, ML-1M users)
_BOOST_DECIMALS = 6
#: Lucene's default limit on the clauses of one query, nested clauses included (``IndexSearcher.maxClauseCount``)
MAX_CLAUSES = 1024


def thread_parser(rt):
    """The calling thread's Lucene ``QueryParser`` (it is not thread-safe: one per thread)."""
    cache = _jvm.attach_current_thread()
    parser = cache.get("query_parser")
    if parser is None:
        parser = cache["query_parser"] = rt.QueryParser(FIELD, rt.WhitespaceAnalyzer())
    return parser


def term_ids(dims: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Term ids (int32) of non-zero entries: ``2 d`` for ``p{d}`` (positive), ``2 d + 1`` for ``n{d}``."""
    return (2 * np.asarray(dims, np.int64) + (np.asarray(vals) < 0)).astype(np.int32)


def _names(ids: np.ndarray) -> list[str]:
    return [("n" if t & 1 else "p") + str(t >> 1) for t in ids.tolist()]


def request(dims: np.ndarray, vals: np.ndarray, filter_ids: np.ndarray | None = None) -> tuple[bytes, float]:
    """``(bytes, wmax)``: the request of ``ImpactSearch.search`` (little-endian); wmax 0 for no entries.

    Entries must be non-zero. A Lucene score of the request times ``wmax`` is
    the score of the unnormalised query.
    """
    w = np.abs(np.asarray(vals, np.float64))
    wmax = float(w.max()) if len(w) else 0.0
    boosts = (w / wmax if wmax else w).astype("<f4")
    filt = np.zeros(0, "<i4") if filter_ids is None else np.asarray(filter_ids, "<i4")
    parts = (np.array([len(w)], "<i4"), term_ids(dims, vals).astype("<i4"), boosts.view("<i4"),
             np.array([len(filt)], "<i4"), filt)
    return np.concatenate(parts).tobytes(), wmax


def query_text(dims: np.ndarray, vals: np.ndarray, filter_ids: np.ndarray | None = None) -> tuple[str, float]:
    """``(text, wmax)``: ``p3^0.500000 n7^1.000000``, boosts ``|u_d| / wmax``; ("", 0) for no entries.

    With ``filter_ids``, a required clause with boost 0 follows: ``+(n7 p3)^0``.
    A Lucene score of this text times ``wmax`` is the score of the unnormalised query.
    """
    text, wmax = "", 0.0
    if len(dims):
        w = np.abs(vals)
        wmax = float(w.max())
        fmt = "%." + str(_BOOST_DECIMALS) + "f"
        text = " ".join([name + "^" + (fmt % x) for name, x in zip(_names(term_ids(dims, vals)), (w / wmax).tolist())])
    if filter_ids is not None and len(filter_ids):
        text = (text + " " if text else "") + "+(" + " ".join(_names(np.asarray(filter_ids))) + ")^0"
    return text, wmax


def filter_term_ids(emb: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
    """The candidates' dominant (dimension, sign) term ids, sorted and unique (int32).

    Every candidate with a non-zero row carries its dominant term, so a
    filter clause of these terms matches every such candidate; other items
    carrying one of the terms match too (the caller drops them).
    """
    rows = emb[candidates]
    ids = set()
    for i in range(len(candidates)):
        a, b = rows.indptr[i], rows.indptr[i + 1]
        if b > a:
            j = a + int(np.argmax(np.abs(rows.data[a:b])))
            if rows.data[j] != 0:  # the checkpoint's rows may hold stored zeros, never indexed
                ids.add(2 * int(rows.indices[j]) + int(rows.data[j] < 0))
    return np.array(sorted(ids), np.int32)
