"""Query building of the ``lucene`` backend: from signed query vectors to Lucene query text.

A query ``u`` becomes one boosted term per non-zero entry, ``p{d}`` for
``u_d > 0`` and ``n{d}`` for ``u_d < 0``, with boost ``|u_d| / max|u|``
written with 6 decimals (see :mod:`.lucene` for why). A restricted search
adds a required clause of *segment terms* with boost 0: it filters the
matches without changing their scores.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _jvm
from ._lucene_files import FIELD

__all__ = ["thread_parser", "weighted_terms", "filter_terms", "MAX_CLAUSES"]

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


def weighted_terms(dims: np.ndarray, vals: np.ndarray) -> tuple[str, float]:
    """``(text, wmax)``: ``p3^0.500000 n7^1.000000``, boosts ``|u_d| / wmax``; ("", 0) for no entries.

    A Lucene score of this text times ``wmax`` is the score of the unnormalised query.
    """
    if not len(dims):
        return "", 0.0
    w = np.abs(vals)
    wmax = float(w.max())
    fmt = "%." + str(_BOOST_DECIMALS) + "f"
    text = " ".join([("p" if pos else "n") + str(d) + "^" + (fmt % x)
                     for d, pos, x in zip(dims.tolist(), (vals > 0).tolist(), (w / wmax).tolist())])
    return text, wmax


def filter_terms(emb: sp.csr_matrix, candidates: np.ndarray) -> list[str]:
    """The candidates' dominant (dimension, sign) terms, sorted: ``["n7", "p3", ...]``.

    Every candidate with a non-zero row carries its dominant term, so a
    required clause ``+(n7 p3 ...)^0`` (boost 0: it filters without scoring)
    matches every such candidate; other items carrying one of the terms match
    too (the caller drops them).
    """
    rows = emb[candidates]
    terms = set()
    for i in range(len(candidates)):
        a, b = rows.indptr[i], rows.indptr[i + 1]
        if b > a:
            j = a + int(np.argmax(np.abs(rows.data[a:b])))
            if rows.data[j] != 0:  # the checkpoint's rows may hold stored zeros, never indexed
                terms.add(("p" if rows.data[j] > 0 else "n") + str(int(rows.indices[j])))
    return sorted(terms)
