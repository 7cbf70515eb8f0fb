"""Synthetic catalogues that look like real Compressed ELSA output, at any size.

:func:`fit_catalogue_stats` measures a trained sparse checkpoint (and,
optionally, real user queries): the width, the number of active dimensions
per item, how items spread over the dimensions (the share of all postings
each dimension holds, so posting-list lengths keep their skew), the
distribution of the signed values, the users' history lengths, and the
number and values of query terms. :func:`make_sparse_catalogue` then draws N
items with those statistics; :func:`make_queries` draws queries (and the
histories they exclude); :func:`make_dense_counterpart` gives dense vectors of
a chosen width for FAISS with the same neighbourhood structure.

Generative model
----------------
* item ``j``: ``nnz_j`` drawn from the fitted nnz distribution; its active
  dimensions drawn without replacement with probability proportional to the
  fitted dimension shares (sequential weighted sampling); values drawn from
  the fitted signed-value quantiles; the row L2-normalised (as ELSA's rows).
* query: ``t`` terms, ``t`` drawn from the fitted term-count distribution
  rescaled to the requested median; dimensions drawn like an item's; values
  from the fitted query-value quantiles (relative to the query's largest
  magnitude; scale does not change a ranking).
* history (excluded from the results): ``h`` items, ``h`` from the fitted
  history lengths, drawn uniformly among the postings of the query's
  dimensions, so they are items that share dimensions with the query, as a
  real user's items share dimensions with the sum of their embeddings.
* dense counterpart: a fixed Gaussian random projection of the sparse rows to
  ``width`` dimensions, rows L2-normalised; queries projected the same way.

Everything is vectorised numpy, in row blocks, so 1M items of 16 active
dimensions take a few seconds and a few hundred MB.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp

from elsa_index.errors import ElsaIndexError

logger = logging.getLogger(__name__)

__all__ = [
    "CatalogueStats",
    "fit_catalogue_stats",
    "make_sparse_catalogue",
    "make_queries",
    "make_dense_counterpart",
    "posting_bytes",
]

_N_QUANTILES = 1001
_BLOCK_ROWS = 131_072


@dataclass
class CatalogueStats:
    """Statistics of a sparse embedding catalogue and its queries.

    Attributes
    ----------
    dims : width of the sparse space.
    nnz_values, nnz_probs : distribution of active dimensions per item.
    dim_share : float64 (dims,), share of all postings in each dimension (sums to 1).
    value_quantiles : float64 (Q,), quantiles of the signed item values
        (rows L2-normalised), at probabilities ``linspace(0, 1, Q)``.
    history_lengths : int64 sample of history lengths (may be empty).
    query_terms : int64 sample of query term counts (may be empty).
    query_value_quantiles : float64 (Q,), quantiles of query values divided by
        the query's largest magnitude (may be empty).
    source : description of what was fitted (kind, n_items, fingerprint).
    """

    dims: int
    nnz_values: np.ndarray
    nnz_probs: np.ndarray
    dim_share: np.ndarray
    value_quantiles: np.ndarray
    history_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    query_terms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    query_value_quantiles: np.ndarray = field(default_factory=lambda: np.zeros(0))
    source: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Headline numbers for a report."""
        share = np.sort(self.dim_share)[::-1]
        top = max(1, len(share) // 100)
        out = {
            "dims": int(self.dims),
            "nnz_mean": float(np.dot(self.nnz_values, self.nnz_probs)),
            "top1pct_dims_share": float(share[:top].sum()),
            "active_dims": int((self.dim_share > 0).sum()),
            "abs_value_median": float(np.median(np.abs(self.value_quantiles))),
            "negative_fraction": float(np.mean(self.value_quantiles < 0)),
        }
        if len(self.history_lengths):
            out["history_median"] = float(np.median(self.history_lengths))
        if len(self.query_terms):
            out["query_terms_median"] = float(np.median(self.query_terms))
        out.update({f"source_{k}": v for k, v in self.source.items()})
        return out

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "CatalogueStats":
        return cls(
            dims=int(d["dims"]), nnz_values=np.asarray(d["nnz_values"], np.int64),
            nnz_probs=np.asarray(d["nnz_probs"], np.float64), dim_share=np.asarray(d["dim_share"], np.float64),
            value_quantiles=np.asarray(d["value_quantiles"], np.float64),
            history_lengths=np.asarray(d.get("history_lengths", []), np.int64),
            query_terms=np.asarray(d.get("query_terms", []), np.int64),
            query_value_quantiles=np.asarray(d.get("query_value_quantiles", []), np.float64),
            source=dict(d.get("source", {})),
        )


def fit_catalogue_stats(embeddings, histories: sp.spmatrix | None = None, *, source: dict | None = None,
                        n_quantiles: int = _N_QUANTILES) -> CatalogueStats:
    """Fit :class:`CatalogueStats` from sparse item embeddings and (optionally) user histories.

    Parameters
    ----------
    embeddings : scipy sparse (n_items, dims), e.g. ``Checkpoint.embeddings`` of Compressed ELSA.
    histories : binary sparse (n_users, n_items), e.g. the held-out users' fold-in
        histories; gives history lengths and the query statistics (``x·A``).
    source : stored as ``stats.source``.
    n_quantiles : resolution of the value distributions.

    Raises
    ------
    ElsaIndexError
        Dense or empty embeddings, histories of the wrong width.
    """
    if not sp.issparse(embeddings):
        raise ElsaIndexError("fit_catalogue_stats needs sparse (Compressed ELSA) embeddings, got a dense array")
    E = sp.csr_matrix(embeddings, dtype=np.float32)
    n, dims = E.shape
    if E.nnz == 0:
        raise ElsaIndexError("the embeddings have no stored entries; nothing to fit")
    nnz = np.diff(E.indptr)
    vals, counts = np.unique(nnz[nnz > 0], return_counts=True)
    share = np.bincount(E.indices, minlength=dims).astype(np.float64)
    share /= share.sum()
    probs = np.linspace(0.0, 1.0, n_quantiles)
    stats = CatalogueStats(
        dims=dims, nnz_values=vals.astype(np.int64), nnz_probs=counts / counts.sum(), dim_share=share,
        value_quantiles=np.quantile(E.data.astype(np.float64), probs), source=dict(source or {}),
    )
    stats.source.setdefault("n_items", int(n))
    if histories is not None:
        H = sp.csr_matrix(histories, dtype=np.float32)
        if H.shape[1] != n:
            raise ElsaIndexError(f"histories have {H.shape[1]} item columns; the embeddings have {n} items")
        lengths = np.diff(H.indptr)
        H = H[lengths > 0]
        stats.history_lengths = lengths[lengths > 0].astype(np.int64)
        if H.shape[0]:
            U = sp.csr_matrix(H @ E)
            U.eliminate_zeros()
            terms = np.diff(U.indptr)
            stats.query_terms = terms[terms > 0].astype(np.int64)
            rows = np.repeat(np.arange(U.shape[0]), terms)
            scale = np.zeros(U.shape[0])
            np.maximum.at(scale, rows, np.abs(U.data))
            rel = U.data / np.where(scale[rows] > 0, scale[rows], 1.0)
            stats.query_value_quantiles = np.quantile(rel.astype(np.float64), probs)
    return stats


# ----------------------------------------------------------------- sampling


def _sample_dims(rng: np.random.Generator, cdf: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Distinct dimensions per row, ``counts[r]`` of them, weighted, in draw order.

    Returns an (R, max(counts)) int64 array padded with -1. Sequential weighted
    sampling without replacement: draw with replacement, keep first
    occurrences in draw order, redraw the rows still short (with more
    candidates).
    """
    R = len(counts)
    W = int(counts.max(initial=0))
    out = np.full((R, max(W, 1)), -1, np.int64)
    if W == 0:
        return out[:, :0]
    todo = np.arange(R)
    width = 2 * W + 8
    for _ in range(12):
        if len(todo) == 0:
            break
        draws = np.searchsorted(cdf, rng.random((len(todo), width)) * cdf[-1], side="right")
        np.minimum(draws, len(cdf) - 1, out=draws)
        order = np.argsort(draws, axis=1, kind="stable")
        s = np.take_along_axis(draws, order, axis=1)
        dup_sorted = np.zeros_like(s, dtype=bool)
        dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
        dup = np.empty_like(dup_sorted)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        keep = ~dup
        rank = np.cumsum(keep, axis=1)
        need = counts[todo][:, None]
        sel = keep & (rank <= need)
        got = sel.sum(axis=1)
        full = got == counts[todo]
        rows_ok = todo[full]
        if len(rows_ok):
            # Row-major order keeps each row's draws in draw order.
            vals = draws[full][sel[full]]
            pos = np.arange(W)[None, :] < counts[rows_ok][:, None]
            block = np.full((len(rows_ok), W), -1, np.int64)
            block[pos] = vals
            out[rows_ok] = block
        todo = todo[~full]
        width *= 2
    if len(todo):  # extremely concentrated shares: exact Gumbel top-k for the rest
        logp = np.log(np.maximum(np.diff(np.r_[0.0, cdf]), 1e-300))
        for r in todo:
            g = logp - np.log(rng.standard_exponential(len(logp)))
            c = int(counts[r])
            out[r, :c] = np.argsort(-g)[:c]
    return out


def _rows_to_csr(dims_arr: np.ndarray, counts: np.ndarray, values: np.ndarray, width: int) -> sp.csr_matrix:
    """CSR from padded per-row dimension arrays (sorted within rows) and flat values."""
    pad = dims_arr < 0
    key = np.where(pad, np.iinfo(np.int64).max, dims_arr)
    key.sort(axis=1)
    mask = np.arange(dims_arr.shape[1])[None, :] < counts[:, None]
    cols = key[mask]
    indptr = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    m = sp.csr_matrix((values.astype(np.float32), cols.astype(np.int32), indptr), shape=(len(counts), width))
    return m


def _normalise_rows(m: sp.csr_matrix) -> None:
    sq = np.add.reduceat(m.data.astype(np.float64) ** 2, m.indptr[:-1]) if m.nnz else np.zeros(m.shape[0])
    counts = np.diff(m.indptr)
    norms = np.sqrt(np.where(counts > 0, sq, 1.0))
    norms[norms == 0] = 1.0
    m.data /= np.repeat(norms, counts).astype(np.float32)


def _shares_for(stats: CatalogueStats, dims: int | None, rng: np.random.Generator) -> np.ndarray:
    if dims is None or dims == stats.dims:
        return stats.dim_share
    # Keep the rank-share curve (skew) on a new width, dimensions in random order.
    curve = np.sort(stats.dim_share)[::-1]
    x_old = np.linspace(0.0, 1.0, len(curve))
    share = np.interp(np.linspace(0.0, 1.0, dims), x_old, curve)
    share = rng.permutation(share)
    return share / share.sum()


def _draw_counts(rng, values, probs, n, cap) -> np.ndarray:
    c = rng.choice(values, size=n, p=probs)
    return np.clip(c, 1, cap).astype(np.int64)


def make_sparse_catalogue(stats: CatalogueStats, n_items: int, *, seed: int = 0, dims: int | None = None) -> sp.csr_matrix:
    """Draw ``n_items`` sparse item embeddings with the fitted statistics.

    Parameters
    ----------
    stats : from :func:`fit_catalogue_stats`.
    n_items : rows to draw (>= 1).
    seed : the same stats, size and seed always give the same catalogue.
    dims : width (default: the fitted one); the skew of the dimension shares is kept.

    Returns
    -------
    scipy CSR float32 (n_items, dims), sorted indices, L2-normalised rows.
    """
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 1:
        raise ElsaIndexError(f"n_items must be a positive integer, got {n_items!r}")
    rng = np.random.default_rng(seed)
    share = _shares_for(stats, dims, rng)
    width = len(share)
    cdf = np.cumsum(share)
    blocks = []
    for start in range(0, int(n_items), _BLOCK_ROWS):
        r = min(_BLOCK_ROWS, int(n_items) - start)
        counts = _draw_counts(rng, stats.nnz_values, stats.nnz_probs, r, width)
        d = _sample_dims(rng, cdf, counts)
        vals = np.interp(rng.random(int(counts.sum())), np.linspace(0, 1, len(stats.value_quantiles)),
                         stats.value_quantiles)
        vals[vals == 0] = np.finfo(np.float32).tiny  # an active dimension stays active
        blocks.append(_rows_to_csr(d, counts, vals, width))
    m = sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]
    m.indices = m.indices.astype(np.int32, copy=False)
    _normalise_rows(m)
    m.has_sorted_indices = True
    return m


def make_queries(stats: CatalogueStats, catalogue: sp.csr_matrix, n_queries: int, *, query_terms: int | None = None,
                 history_cap: float = 0.1, seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Draw sparse queries and the histories they exclude.

    Parameters
    ----------
    stats : fitted statistics (``query_terms`` / ``history_lengths`` samples are used when present).
    catalogue : the items (CSR (n_items, dims)), for the histories.
    n_queries : queries to draw.
    query_terms : median terms per query; the fitted distribution is rescaled
        to it (default: the fitted median; 200 when nothing was fitted).
    history_cap : longest history as a fraction of the catalogue.
    seed : the same inputs always give the same queries.

    Returns
    -------
    queries : CSR float32 (n_queries, dims), sorted indices.
    histories : CSR bool (n_queries, n_items), the items to exclude per query.
    """
    rng = np.random.default_rng(seed + 7919)
    n_items, width = catalogue.shape
    share = np.bincount(catalogue.indices, minlength=width).astype(np.float64)
    share /= share.sum()
    cdf = np.cumsum(share)
    fitted = stats.query_terms if len(stats.query_terms) else np.asarray([query_terms or 200])
    target = float(query_terms) if query_terms else float(np.median(fitted))
    terms = rng.choice(fitted, size=n_queries).astype(np.float64) * (target / max(np.median(fitted), 1.0))
    terms = np.clip(np.rint(terms), 1, int((share > 0).sum())).astype(np.int64)
    d = _sample_dims(rng, cdf, terms)
    vq = stats.query_value_quantiles if len(stats.query_value_quantiles) else stats.value_quantiles
    vals = np.interp(rng.random(int(terms.sum())), np.linspace(0, 1, len(vq)), vq)
    vals[vals == 0] = 1e-6
    Q = _rows_to_csr(d, terms, vals, width)
    # Histories: uniform among the postings of each query's dimensions.
    lengths = stats.history_lengths if len(stats.history_lengths) else np.asarray([30])
    h = rng.choice(lengths, size=n_queries)
    h = np.clip(h, 1, max(1, int(history_cap * n_items))).astype(np.int64)
    post = sp.csc_matrix(catalogue)
    plen = np.diff(post.indptr)
    rows, cols = [], []
    for r in range(n_queries):
        qd = Q.indices[Q.indptr[r] : Q.indptr[r + 1]]
        lens = plen[qd]
        total = int(lens.sum())
        if total == 0:
            continue
        cum = np.cumsum(lens)
        u = rng.integers(0, total, size=int(h[r]))
        which = np.searchsorted(cum, u, side="right")
        offset = u - (cum[which] - lens[which])
        items = np.unique(post.indices[post.indptr[qd[which]] + offset])
        rows.append(np.full(len(items), r)), cols.append(items)
    rr = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cc = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    H = sp.csr_matrix((np.ones(len(rr), bool), (rr, cc)), shape=(n_queries, n_items))
    H.sort_indices()
    return Q, H


def make_dense_counterpart(catalogue: sp.csr_matrix, queries: sp.csr_matrix, width: int, *,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dense vectors of ``width`` dimensions with the sparse catalogue's neighbourhoods.

    A Gaussian random projection ``R`` (dims x width) maps items to
    ``normalise(a_j R)`` and queries to ``u R``; inner products are kept
    approximately (Johnson-Lindenstrauss), so near neighbours stay near.

    Returns
    -------
    items : float32 (n_items, width), L2-normalised rows.
    queries : float32 (n_queries, width).
    """
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ElsaIndexError(f"width must be a positive integer, got {width!r}")
    rng = np.random.default_rng(seed + 104729)
    R = (rng.standard_normal((catalogue.shape[1], int(width))) / np.sqrt(width)).astype(np.float32)
    items = np.empty((catalogue.shape[0], int(width)), np.float32)
    for start in range(0, catalogue.shape[0], _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, catalogue.shape[0])
        block = np.asarray(catalogue[start:stop] @ R, dtype=np.float32)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        items[start:stop] = block / np.where(norms > 0, norms, 1.0)
    q = np.asarray(sp.csr_matrix(queries, dtype=np.float32) @ R, dtype=np.float32)
    return items, q


def posting_bytes(embeddings, queries, *, bytes_per_posting: int = 8) -> np.ndarray:
    """Bytes of the posting lists each query touches in an inverted index.

    Parameters
    ----------
    embeddings : sparse (n_items, dims) item embeddings.
    queries : sparse (n, dims) queries.
    bytes_per_posting : 8 = a float32 value plus an int32 item id (the exact backend's layout).

    Returns
    -------
    float64 (n,): ``bytes_per_posting * sum over the query's dims of |postings(d)|``.
    """
    E = sp.csr_matrix(embeddings)
    plen = np.bincount(E.indices, minlength=E.shape[1]).astype(np.float64)
    Q = sp.csr_matrix(queries)
    B = sp.csr_matrix((np.ones(Q.nnz), Q.indices, Q.indptr), shape=Q.shape)
    return np.asarray(B @ plen, dtype=np.float64).ravel() * bytes_per_posting
