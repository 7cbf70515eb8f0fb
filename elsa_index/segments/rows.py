"""Homepage rows for one user, served through an index: the plain top-k row, then the best segments.

:func:`recommend_segments` encodes the history as ``u = x·A``, ranks the
segments by ``u·v_s`` (ties: lower segment id) and fills one row per segment
from the index, greedily from the top of the page: each row holds the best
members of its segment that are neither in the history nor shown above it,
and a segment with nothing left is skipped. Nothing scores the whole
catalogue: the plain row is :meth:`Index.search
<elsa_index.search.Index.search>` of ``u`` and each segment row is
:meth:`Index.search_within <elsa_index.search.Index.search_within>` of ``u``
among the segment's members not shown yet (item indices, no external-id
round trip): the backend's own restricted search where it has one (Lucene:
a filter clause on the segment's terms, then an exact re-rank), else exact
scores of the members. Every exact path adds ``u·a_j`` in the same order
and breaks ties by the lower item index, so an exact index, Lucene (whenever
its candidates hold the true top-k) and a checkpoint give the same rows. A
checkpoint is served through an exact sparse index built in memory for the
call; pass an :class:`~elsa_index.search.Index` when recommending for many
users.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import numpy as np

from .._checks import check_int
from ..errors import SegmentError, SegmentFallbackWarning
from ..search import build_index
from ._shared import open_source, take_top, user_history, user_vector
from .artefact import Segments

__all__ = ["SegmentRow", "recommend_segments", "serving_index", "TOP_ROW_LABEL"]

TOP_ROW_LABEL = "Recommended for you"


class SegmentRow(NamedTuple):
    """One row of a homepage.

    segment : segment id, -1 for the plain "Recommended for you" row.
    label : the segment's label (``TOP_ROW_LABEL`` for the plain row).
    score : ``u·v_segment`` (NaN for the plain row); in a fallback, the
        segment's total training popularity.
    items : ndarray str (<= k,), external item ids, best first.
    item_scores : ndarray float32, ``u·a_j`` (in a fallback: popularity).
    indices : ndarray int64, item row indices in the checkpoint.
    fallback : True when the history had no known item.
    """

    segment: int
    label: str
    score: float
    items: np.ndarray
    item_scores: np.ndarray
    indices: np.ndarray
    fallback: bool


def serving_index(source):
    """The :class:`~elsa_index.search.Index` that serves rows for ``source``.

    Parameters
    ----------
    source : an Index (returned as it is), a sparse Checkpoint (an exact
        ``sparse`` index is built in memory), or a directory of either.

    Raises
    ------
    SegmentError
        Not one of these, or dense embeddings.
    """
    index, ckpt = open_source(source)
    return index if index is not None else build_index(ckpt, "sparse")


def recommend_segments(
    index_or_checkpoint,
    segments: Segments,
    history_ids: Sequence[str],
    *,
    rows: int = 5,
    k: int = 10,
    exclude_history: bool = True,
    top_row: bool = True,
) -> list[SegmentRow]:
    """Homepage rows for one user: the plain top-k row, then the best segments with their top-k items.

    Parameters
    ----------
    index_or_checkpoint : an :class:`~elsa_index.search.Index`, a sparse
        :class:`~elsa_index.checkpoint.Checkpoint` (served by an exact sparse
        index built for the call), or a directory of either.
    segments : segments of that checkpoint (same fingerprint).
    history_ids : the user's external item ids; unknown ids are ignored with an
        :class:`~elsa_index.errors.UnknownItemsWarning`.
    rows : segment rows wanted (>= 0); fewer when segments run out.
    k : items per row (>= 1); a row holds fewer when its segment runs out.
    exclude_history : never show an item of the history.
    top_row : start with the plain "Recommended for you" row (its items are
        then not repeated in the segment rows).

    Returns
    -------
    list of :class:`SegmentRow`, the plain row first (``segment == -1``), then
    segment rows in descending segment score ``u·v_s`` (ties: lower id).

    Raises
    ------
    SegmentError
        A dense checkpoint, segments of another checkpoint, ``history_ids``
        not a list, or ``rows``/``k`` out of range.

    Notes
    -----
    Rows are filled greedily from the top, each skipping the items shown
    above it, so no item appears twice on the page. The plain row comes from
    ``Index.search(u, k, exclude=history)``; a segment row from
    ``Index.search_within(u, k, <segment members not shown yet>)``. Scores
    are the index's: exact ``u·a_j`` for exact backends and for Lucene's
    re-ranked results (``rerank=False`` leaves Lucene's quantised scores in
    the plain row).

    Fallback: a history with no known item gets a :class:`SegmentFallbackWarning`;
    the plain row is the most popular items, segments are ordered by the total
    training popularity of their items, and rows hold their most popular items
    (``fallback`` is True, scores are popularity counts).
    """
    index, ckpt = open_source(index_or_checkpoint)
    segments.check_checkpoint(ckpt)
    rows = check_int(rows, "rows", 0, error=SegmentError)
    k = check_int(k, "k", 1, error=SegmentError)
    X, hist = user_history(ckpt, history_ids)
    if index is None:
        index = serving_index(ckpt)
    fallback = len(hist) == 0
    if fallback:
        warnings.warn(
            "the history has no item of the catalogue; rows fall back to popular segments and popular items",
            SegmentFallbackWarning, stacklevel=2,
        )
        a = segments.assignment
        seg_scores = np.bincount(a[a >= 0], weights=ckpt.popularity[a >= 0], minlength=segments.n_segments)
        server = _PopularRows(ckpt)
    else:
        u = user_vector(ckpt, X)
        seg_scores = np.asarray((segments.vectors @ u.T).todense(), dtype=np.float32).ravel()
        server = _IndexRows(index, u, hist if exclude_history else None)

    out: list[SegmentRow] = []
    if top_row:
        top, scores = server.top(k)
        out.append(_row(ckpt, -1, TOP_ROW_LABEL, float("nan"), top, scores, fallback))
    for s in np.lexsort((np.arange(segments.n_segments), -seg_scores)):
        if len(out) - top_row >= rows:
            break
        top, scores = server.within(segments.members(int(s)), k)
        if len(top):
            out.append(_row(ckpt, int(s), str(segments.labels[s]), float(seg_scores[s]), top, scores, fallback))
    return out


class _IndexRows:
    """Fills the rows of one page from an index, remembering what the page shows (item rows)."""

    def __init__(self, index, u, hist: np.ndarray | None):
        self.index, self.u = index, u
        self.shown = np.zeros(index.n_items, bool)
        self.hist = hist
        if hist is not None:
            self.shown[hist] = True

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The plain top-k row (history excluded unless asked otherwise)."""
        rec = self.index.search(self.u, k, exclude=None if self.hist is None else [self.hist])
        return self._keep(rec.indices[0], rec.scores[0])

    def within(self, members: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top-k row of a segment: its members not shown yet, best first (empty when none is left)."""
        cand = members[~self.shown[members]]
        if not len(cand):
            return cand, np.zeros(0, np.float32)
        rec = self.index.search_within(self.u, k, cand)
        return self._keep(rec.indices[0], rec.scores[0])

    def _keep(self, ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = ids >= 0
        top = ids[found]
        self.shown[top] = True
        return top, scores[found]


class _PopularRows:
    """Rows of a history without known items: the most popular items, none repeated on the page."""

    def __init__(self, ckpt):
        self.pop = ckpt.popularity
        self.shown = np.zeros(ckpt.n_items, bool)

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.within(np.arange(len(self.pop)), k)

    def within(self, members: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        cand = members[~self.shown[members]]
        top = take_top(cand, self.pop[cand], k)
        self.shown[top] = True
        return top, self.pop[top].astype(np.float32)


def _row(ckpt, segment, label, score, top, scores, fallback) -> SegmentRow:
    return SegmentRow(segment, label, score, ckpt.item_ids.ids[top], np.asarray(scores, np.float32),
                      top.astype(np.int64), bool(fallback))
