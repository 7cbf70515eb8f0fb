"""Discovering segments: dominant signed dimensions, greedy cosine merging, central items, labels.

Compressed ELSA rows ``a_j`` are sparse and signed, so each dimension with a
sign is a posting list of items, and each item has a *dominant* signed
dimension: the entry with the largest ``|value|``, its sign kept. Grouping the
items by that key ``(dim, sign)`` segments the catalogue along the model's own
latent space (as the Compressed ELSA paper observes).

:func:`discover_segments`
    1. Every item with at least one non-zero entry joins the segment of its
       dominant ``(dim, sign)`` (ties on ``|value|``: the lowest dim). Items
       whose row is empty are *unsegmented* (segment ``-1``).
    2. Greedy, deterministic merging by the cosine similarity of segment
       vectors (below). First every segment smaller than ``min_size`` is
       merged into its most similar segment (smallest first); then, while
       there are more than ``merge_to`` segments, the smallest segment is
       merged into its most similar one (merging the globally most similar
       pair instead lets one growing catch-all segment absorb most items).
       Ties in size or similarity go to the first position in ``(dim, sign)``
       order (``+`` before ``-``), so a run is a pure function of the
       checkpoint and the parameters.
    3. Each segment gets a *segment vector*: the L2-normalised sum (equivalently
       mean) of its items' rows, sparse over every dimension its items span;
       its *central items*: the ``n_central`` members with the largest inner
       product with that vector (ties: lower item index); and a *label*: with
       item metadata, its most frequent label tokens (e.g. genres) among the
       central items, otherwise ``"dim 17+"`` from its main key.
    Final segment ids are ordered by size (largest first), then by main key.

Why cosine of segment vectors: two dominant-dimension segments are
near-duplicates when their items are active in the same other dimensions with
the same signs; that is what the cosine of their summed rows measures, and it
is also what the user scores ``u·v`` see. (Item sets are disjoint by
construction, so a Jaccard of members would always be 0.) After merging a and
b the similarity to any c follows in closed form,
``cos(a+b, c) = (|a| cos(a,c) + |b| cos(b,c)) / |a+b|``, so merging needs one
dense ``(m, m)`` float64 matrix for ``m`` initial segments (at most
``2 x dims``) and no re-multiplication.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from .._checks import check_int
from ..data.tables import item_tokens
from ..errors import SegmentError
from ._shared import open_source
from .artefact import Segments

logger = logging.getLogger(__name__)

__all__ = ["discover_segments"]


def discover_segments(
    checkpoint,
    *,
    merge_to: int | None = None,
    min_size: int = 1,
    metadata=None,
    id_col: str = "item_id",
    label_cols: Sequence[str] = ("genres",),
    n_central: int = 10,
    n_label: int = 2,
) -> Segments:
    """Segment the items of a sparse checkpoint by their dominant signed dimension.

    Parameters
    ----------
    checkpoint : a sparse :class:`~elsa_index.checkpoint.Checkpoint`, an
        :class:`~elsa_index.search.Index`, or a checkpoint / index directory.
    merge_to : fold the smallest segment into its most similar one until at most this many remain;
        an integer in ``[1, number of dominant-dimension segments]``; None: no
        target.
    min_size : segments with fewer items are merged into their most similar
        segment first (1: none).
    metadata : item metadata for labels: a pyarrow Table, a pandas DataFrame,
        a mapping of column name to values, or a ``.parquet`` / ``.csv`` path.
    id_col : column of ``metadata`` holding the checkpoint's external item ids.
    label_cols : columns whose tokens make the label (e.g. ``genres``). A
        string cell is split on ``|`` when any cell of its column holds one,
        else on whitespace (ML-1M writes ``"Animation Children's Comedy"``);
        list cells are used as they are.
    n_central : central items kept per segment (also the ones labelled).
    n_label : label tokens per segment, most frequent first (ties: the rarer
        token in the catalogue, then alphabetical).

    Returns
    -------
    Segments

    Raises
    ------
    SegmentError
        A dense checkpoint, a checkpoint with no non-zero entry, ``merge_to``
        or other parameters out of range, metadata without ``id_col`` or a
        label column, or with no id matching the checkpoint.
    """
    ckpt = open_source(checkpoint)[1]
    min_size = check_int(min_size, "min_size", 1, error=SegmentError)
    n_central = check_int(n_central, "n_central", 1, error=SegmentError)
    n_label = check_int(n_label, "n_label", 1, error=SegmentError)
    if isinstance(label_cols, str):
        label_cols = (label_cols,)
    label_cols = tuple(label_cols)
    tokens = None if metadata is None else item_tokens(metadata, ckpt.item_ids, id_col=id_col, label_cols=label_cols,
                                                        error=SegmentError)

    emb = ckpt.embeddings
    n = ckpt.n_items
    dim, sign = _dominant_keys(emb)
    items = np.flatnonzero(sign != 0)
    if not len(items):
        raise SegmentError("every embedding row is empty; segments need items with at least one non-zero entry")
    codes, init = np.unique(2 * dim[items] + (sign[items] < 0), return_inverse=True)
    m = len(codes)
    if merge_to is not None:
        merge_to = check_int(merge_to, "merge_to", 1, error=SegmentError)
        if merge_to > m:
            raise SegmentError(
                f"merge_to={merge_to} is out of range: this checkpoint has {m} dominant-dimension segments, "
                f"so merge_to must be in [1, {m}] (or None for no merging)"
            )
    emb64 = emb.astype(np.float64)
    P = sp.csr_matrix((np.ones(len(items)), (init, items)), shape=(m, n))
    sizes0 = np.bincount(init, minlength=m).astype(np.int64)
    group, n_merges = _greedy_merge(P @ emb64, sizes0, merge_to, min_size)

    # Final segments: main key = the constituent with the most items (ties: first in code order).
    reps, final_of_init = np.unique(group, return_inverse=True)
    n_seg = len(reps)
    sizes = np.bincount(final_of_init, weights=sizes0, minlength=n_seg).astype(np.int64)
    key_order = np.lexsort((np.arange(m), -sizes0, final_of_init))  # by segment, size desc, code
    main = key_order[np.searchsorted(final_of_init[key_order], np.arange(n_seg))]
    seg_order = np.lexsort((codes[main], -sizes))
    rank = np.empty(n_seg, np.int64)
    rank[seg_order] = np.arange(n_seg)
    seg_of_init = rank[final_of_init]
    assignment = np.full(n, -1, np.int64)
    assignment[items] = seg_of_init[init]

    key_order = np.lexsort((np.arange(m), -sizes0, seg_of_init))
    key_codes = codes[key_order]
    key_indptr = np.concatenate([[0], np.cumsum(np.bincount(seg_of_init, minlength=n_seg))])

    # Segment vectors: normalised sums of the members' rows.
    Pf = sp.csr_matrix((np.ones(len(items)), (assignment[items], items)), shape=(n_seg, n))
    sums = sp.csr_matrix(Pf @ emb64)
    norms = np.sqrt(np.asarray(sums.multiply(sums).sum(axis=1)).ravel())
    vectors = sp.csr_matrix(sp.diags(np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)) @ sums)
    vectors = vectors.astype(np.float32)
    vectors.eliminate_zeros()
    vectors.sort_indices()

    # Central items: members by inner product with their segment vector.
    seg_items = assignment[items]
    cscore = np.asarray(emb[items].multiply(vectors[seg_items]).sum(axis=1), dtype=np.float32).ravel()
    order = np.lexsort((items, -cscore, seg_items))
    starts = np.searchsorted(seg_items[order], np.arange(n_seg))
    pos_in_seg = np.arange(len(order)) - starts[seg_items[order]]
    keep = order[pos_in_seg < n_central]
    central_indices, central_scores = items[keep], cscore[keep]
    central_indptr = np.concatenate([[0], np.cumsum(np.minimum(sizes[seg_order], n_central))])

    labels, coverage = _labels(tokens, central_indptr, central_indices, key_codes, key_indptr, n_label)
    info = {"n_initial_segments": int(m), "n_merges": int(n_merges), "n_segmented_items": int(len(items))}
    if tokens is not None:
        info["metadata_coverage"] = coverage
    params = {"merge_to": merge_to, "min_size": min_size, "n_central": n_central, "n_label": n_label,
              "merge_rule": "smallest segment into its most similar (cosine of segment vectors)", "id_col": id_col if metadata is not None else None,
              "label_cols": list(label_cols) if metadata is not None else None}
    logger.info("%d dominant-dimension segments, %d after %d merges", m, n_seg, n_merges)
    return Segments(
        item_ids=ckpt.item_ids, assignment=assignment, vectors=vectors, key_indptr=key_indptr,
        key_dims=key_codes // 2, key_signs=np.where(key_codes % 2 == 1, -1, 1), key_sizes=sizes0[key_order],
        central_indptr=central_indptr, central_indices=central_indices, central_scores=central_scores,
        labels=labels, fingerprint=ckpt.fingerprint, params=params, info=info,
    )


def _dominant_keys(emb: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Dominant dim and sign (+1/-1; 0 for a row without non-zero entries) of each row."""
    n = emb.shape[0]
    dim = np.full(n, -1, np.int64)
    sign = np.zeros(n, np.int8)
    absd = np.abs(emb.data)
    if not len(absd):
        return dim, sign
    lens = np.diff(emb.indptr)
    rows = np.flatnonzero(lens > 0)
    row_of = np.repeat(np.arange(n), lens)
    rowmax = np.zeros(n, absd.dtype)
    rowmax[rows] = np.maximum.reduceat(absd, emb.indptr[rows])
    hit = np.flatnonzero((absd == rowmax[row_of]) & (absd > 0))
    # Indices are sorted within rows, so the first maximum is the lowest dim.
    r, first = np.unique(row_of[hit], return_index=True)
    pos = hit[first]
    dim[r] = emb.indices[pos]
    sign[r] = np.where(emb.data[pos] > 0, 1, -1)
    return dim, sign


def _greedy_merge(sums: sp.spmatrix, sizes: np.ndarray, merge_to: int | None, min_size: int) -> tuple[np.ndarray, int]:
    """Merge segments greedily by cosine; returns the surviving position of each initial segment and the merge count."""
    m = sums.shape[0]
    group = np.arange(m)
    if m == 1 or (min_size <= 1 and (merge_to is None or merge_to >= m)):
        return group, 0
    sums = sp.csr_matrix(sums, dtype=np.float64)
    norms = np.sqrt(np.asarray(sums.multiply(sums).sum(axis=1)).ravel())
    unit = sp.diags(1.0 / norms) @ sums  # every segment sum is non-zero on its own key
    S = np.asarray((unit @ unit.T).todense(), dtype=np.float64)
    np.fill_diagonal(S, -np.inf)
    sizes = sizes.astype(np.int64).copy()
    alive = np.ones(m, bool)
    best = np.argmax(S, axis=1)
    bestval = S[np.arange(m), best]
    n_alive, n_merges = m, 0

    def merge(i: int, j: int) -> None:
        a, b = min(i, j), max(i, j)
        sq = norms[a] ** 2 + norms[b] ** 2 + 2 * norms[a] * norms[b] * S[a, b]
        new_norm = math.sqrt(max(sq, 0.0))
        with np.errstate(invalid="ignore"):
            row = (norms[a] * S[a] + norms[b] * S[b]) / new_norm if new_norm > 1e-12 else np.zeros(m)
        row[~alive] = -np.inf
        row[a] = row[b] = -np.inf
        S[b, :] = -np.inf
        S[:, b] = -np.inf
        S[a, :] = row
        S[:, a] = row
        alive[b] = False
        bestval[b] = -np.inf
        norms[a], sizes[a] = new_norm, sizes[a] + sizes[b]
        group[group == b] = a
        stale = alive & ((best == a) | (best == b))
        stale[a] = True
        for r in np.flatnonzero(stale):
            best[r] = np.argmax(S[r])
            bestval[r] = S[r, best[r]]
        other = alive & ~stale
        better = other & ((row > bestval) | ((row == bestval) & (a < best)))
        best[better] = a
        bestval[better] = row[better]

    while n_alive > 1:
        # Always fold the smallest segment into its most similar one: merging the
        # globally most similar pair instead lets one growing segment, whose mean
        # direction resembles everything, swallow most of the catalogue.
        small = np.flatnonzero(alive & (sizes < min_size))
        if not len(small) and merge_to is not None and n_alive > merge_to:
            small = np.flatnonzero(alive)
        if not len(small):
            break
        i = small[np.argmin(sizes[small])]  # smallest; ties: first position
        j = best[i]
        merge(int(i), int(j))
        n_alive -= 1
        n_merges += 1
    return group, n_merges


def _key_label(codes: np.ndarray) -> str:
    d, neg = int(codes[0]) // 2, int(codes[0]) % 2
    label = f"dim {d}{'-' if neg else '+'}"
    return label if len(codes) == 1 else f"{label} & {len(codes) - 1} more"


def _labels(tokens, central_indptr, central_indices, key_codes, key_indptr, n_label) -> tuple[np.ndarray, float]:
    n_seg = len(central_indptr) - 1
    defaults = [_key_label(key_codes[key_indptr[s] : key_indptr[s + 1]]) for s in range(n_seg)]
    if tokens is None:
        return np.asarray(defaults, dtype=str), 0.0
    known = [t for t in tokens if t is not None]
    freq = Counter(x for t in known for x in t)
    labels = []
    for s in range(n_seg):
        count: Counter = Counter()
        for i in central_indices[central_indptr[s] : central_indptr[s + 1]]:
            if tokens[i] is not None:
                count.update(tokens[i])
        if not count:
            labels.append(defaults[s])
            continue
        top = sorted(count, key=lambda t: (-count[t], freq[t], t))[:n_label]
        labels.append(", ".join(top))
    return np.asarray(labels, dtype=str), len(known) / max(len(tokens), 1)
