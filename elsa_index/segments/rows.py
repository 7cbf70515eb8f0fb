"""Homepage rows for one user, served through an index: the plain top-k row, then the best segments.

:func:`recommend_segments` encodes the history as ``u = x·A``, ranks the
segments by ``u·v_s`` (ties: lower segment id) and fills one row per segment
from the index, greedily from the top of the page: each row holds the best
members of its segment that are neither in the history nor shown above it,
and a segment with nothing left is skipped. Nothing scores the whole
catalogue; each row asks the backend for candidates within its segment:

* a backend with ``search_within(query, k, *, candidates) -> Results``
  (Lucene: a required filter clause on the segment's terms) is asked for the
  row's top-k among the candidates;
* any other backend is asked through :meth:`Index.recommend
  <elsa_index.search.Index.recommend>` with ``allow=`` the candidates.

The candidates a backend returns are re-scored exactly (``u·a_j`` in
float32, see ``_shared``) and ranked by those scores (ties: lower item
index), so every backend yields the same rows. A checkpoint is served
through an exact sparse index built in memory for the call; pass an
:class:`~elsa_index.search.Index` when recommending for many users.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import numpy as np

from .._checks import check_int
from ..errors import SegmentError, SegmentFallbackWarning
from ._shared import exact_scores, history_indices, history_matrix, open_source, user_vector
from .artefact import Segments

__all__ = ["SegmentRow", "recommend_segments", "serving_index", "TOP_ROW_LABEL"]

TOP_ROW_LABEL = "Recommended for you"

# Candidates fetched per row beyond k: exact backends sum ``u·a_j`` in their
# own order, so their k-th and (k+1)-th items may swap by a rounding error;
# the exact re-scoring then picks the same k as the reference order.
_EXTRA_FETCH = 10


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
    from ..search import build_index

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
    ``Index.recommend(history, k)``; a segment row from the backend's
    ``search_within`` when it has one (it must return at least the top-k
    candidates by ``u·a_j``, e.g. over-fetch and re-rank exactly), else from
    ``Index.recommend(history, k, allow=<segment members not shown yet>)``.
    Either way the returned items are re-scored exactly here.

    Fallback: a history with no known item gets a :class:`SegmentFallbackWarning`;
    the plain row is the most popular items, segments are ordered by the total
    training popularity of their items, and rows hold their most popular items
    (``fallback`` is True, scores are popularity counts).
    """
    index, ckpt = open_source(index_or_checkpoint)
    segments.check_checkpoint(ckpt)
    rows = check_int(rows, "rows", 0, error=SegmentError)
    k = check_int(k, "k", 1, error=SegmentError)
    hist = history_indices(ckpt, history_ids)
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
    else:
        u = user_vector(ckpt, hist)
        seg_scores = np.asarray((segments.vectors @ u.T).todense(), dtype=np.float32).ravel()
    server = _RowServer(index, hist, None if fallback else u, exclude_history)

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


class _RowServer:
    """Fills the rows of one page from an index, remembering what the page shows."""

    def __init__(self, index, hist: np.ndarray, u, exclude_history: bool):
        self.index, self.ckpt, self.u = index, index.checkpoint, u
        self.X = history_matrix(self.ckpt, hist)
        self.shown = np.zeros(self.ckpt.n_items, bool)
        if exclude_history:
            self.shown[hist] = True
        self.exclude_history = exclude_history
        # A popularity fallback has no user vector to send to a backend.
        self.hook = None if u is None else getattr(index.backend, "search_within", None)

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The plain top-k row."""
        fetch = min(k + _EXTRA_FETCH, self.ckpt.n_items)
        rec = self.index.recommend(self.X, fetch, exclude_history=self.exclude_history)
        return self._rank(rec.indices[0], k)

    def within(self, members: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top-k row of a segment: its members not shown yet, best first (empty when none is left)."""
        cand = members[~self.shown[members]]
        if not len(cand):
            return cand, np.zeros(0, np.float32)
        if self.hook is not None:
            res = self.hook(self.u, min(k, len(cand)), candidates=cand)
            got = np.asarray(res.ids, dtype=np.int64).ravel()
            got = np.intersect1d(got[got >= 0], cand)
        else:
            fetch = min(k + _EXTRA_FETCH, len(cand))
            rec = self.index.recommend(self.X, fetch, exclude_history=False,
                                       allow=self.ckpt.item_ids.ids[cand].tolist())
            got = rec.indices[0]
        return self._rank(got, k)

    def _rank(self, got: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        got = np.unique(got[got >= 0])
        got = got[~self.shown[got]]
        if self.u is None:
            scores = self.ckpt.popularity[got].astype(np.float32)
        else:
            scores = exact_scores(self.ckpt, self.u, got)
        order = np.lexsort((got, -scores))[:k]
        top = got[order]
        self.shown[top] = True
        return top, scores[order]


def _row(ckpt, segment, label, score, top, scores, fallback) -> SegmentRow:
    return SegmentRow(segment, label, score, ckpt.item_ids.ids[top], np.asarray(scores, np.float32),
                      top.astype(np.int64), bool(fallback))
