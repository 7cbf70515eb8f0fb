"""Why a user gets their rows and where an item sits: active dimensions mapped to segments.

:func:`explain_user` splits the total score of a user's plain top-k into the
contributions ``u_d * sum_j a_jd`` of the active dimensions of ``u = x·A``
and maps each dimension to a segment (the owner of its ``(dim, sign)`` key,
else the segment vector leaning furthest that way); :func:`explain_item`
lists an item's active dimensions and its segment. Scores are the exact
``u·a_j`` the rows are ranked by.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import numpy as np

from .._checks import check_int
from ..errors import SegmentError, SegmentFallbackWarning
from ._shared import open_source, take_top, user_history, user_vector
from .artefact import Segments

__all__ = ["DimContribution", "UserExplanation", "ItemExplanation", "explain_user", "explain_item"]


class DimContribution(NamedTuple):
    """An active dimension of the user vector and what it adds to the recommendations.

    dim, sign : the dimension and the sign of the user's value in it.
    user_value : ``u_d``.
    contribution : ``u_d * sum of a_jd`` over the recommended items j.
    share : ``contribution`` over the recommended items' total score.
    segment : the segment it maps to: the owner of the key ``(dim, sign)``,
        else the segment whose vector leans furthest the same way in ``dim``,
        else -1.
    label : that segment's label ("" for -1).
    via : ``"key"``, ``"vector"`` or ``"none"``: how ``segment`` was found.
    """

    dim: int
    sign: int
    user_value: float
    contribution: float
    share: float
    segment: int
    label: str
    via: str


class UserExplanation(NamedTuple):
    """Why a user gets their recommendations.

    history : the known history ids.
    recommended, scores : the plain top-k row (ids, ``u·a_j``).
    dims : the top active dimensions by contribution, largest first.
    top_segments : (segment, label, ``u·v_s``) of the best segments.
    fallback : True when the history had no known item (no dims then).
    """

    history: np.ndarray
    recommended: np.ndarray
    scores: np.ndarray
    dims: list
    top_segments: list
    fallback: bool


class ItemExplanation(NamedTuple):
    """An item's active dimensions and its segment.

    dims, values : active dimensions (int64) and values (float32), largest
        ``|value|`` first; the first is the dominant key.
    segment, label : the item's segment (-1, "" when unsegmented).
    keys : the ``(dim, sign)`` keys of that segment.
    centrality : inner product of the item with its segment vector.
    central : whether it is among the segment's central items.
    """

    item_id: str
    index: int
    dims: np.ndarray
    values: np.ndarray
    segment: int
    label: str
    keys: list
    centrality: float
    central: bool


def explain_user(checkpoint, segments: Segments, history_ids: Sequence[str], top: int = 10, *,
                 k: int = 10, n_segments: int = 5) -> UserExplanation:
    """The active dimensions of ``u = x·A`` that drive the user's top-k, and the segments they map to.

    Each active dimension d of u adds ``u_d * sum_j a_jd`` to the total score
    of the recommended items j (the plain top-k, history excluded); the
    ``top`` largest contributions are returned with their segments.

    Parameters
    ----------
    checkpoint : a sparse Checkpoint, an Index, or a directory of either.
    segments : segments of that checkpoint.
    history_ids : external item ids (unknown ones are ignored with a warning).
    top : dimensions returned (>= 1).
    k : recommended items the contributions are summed over (>= 1).
    n_segments : best segments listed in ``top_segments`` (>= 0).

    A history with no known item gets a :class:`SegmentFallbackWarning` and an
    explanation with the most popular items, no dims and no segments.
    """
    ckpt = open_source(checkpoint)[1]
    segments.check_checkpoint(ckpt)
    top = check_int(top, "top", 1, error=SegmentError)
    k = check_int(k, "k", 1, error=SegmentError)
    n_segments = check_int(n_segments, "n_segments", 0, error=SegmentError)
    X, hist = user_history(ckpt, history_ids)
    if not len(hist):
        warnings.warn("the history has no item of the catalogue; no user vector to explain, showing popular items",
                      SegmentFallbackWarning, stacklevel=2)
        pop = ckpt.popularity.astype(np.float32)
        rec = take_top(np.arange(ckpt.n_items), pop, k)
        return UserExplanation(np.zeros(0, str), ckpt.item_ids.ids[rec], pop[rec], [], [], True)
    u = user_vector(ckpt, X)
    scores = ckpt.score_candidates(u, np.arange(ckpt.n_items))[0]  # one user: every item, exactly
    mask = np.ones(ckpt.n_items, bool)
    mask[hist] = False
    unseen = np.flatnonzero(mask)
    rec = take_top(unseen, scores[unseen], k)
    w = np.asarray(ckpt.embeddings[rec].sum(axis=0), dtype=np.float64).ravel()
    ud, uv = u.indices.astype(np.int64), u.data.astype(np.float64)
    contrib = uv * w[ud]
    total = float(scores[rec].astype(np.float64).sum())
    dims = []
    V = segments.vectors.tocsc()
    for p in np.lexsort((ud, -contrib))[:top]:
        d, sgn = int(ud[p]), (1 if uv[p] > 0 else -1)
        seg, via = segments.key_owner(d, sgn), "key"
        if seg < 0:
            col = V[:, d]
            lean = sgn * col.data
            if len(lean) and lean.max() > 0:
                cand = col.indices[lean == lean.max()]
                seg, via = int(cand.min()), "vector"
            else:
                via = "none"
        dims.append(DimContribution(d, sgn, float(uv[p]), float(contrib[p]),
                                    float(contrib[p] / total) if total else float("nan"),
                                    seg, str(segments.labels[seg]) if seg >= 0 else "", via))
    seg_scores = np.asarray((segments.vectors @ u.T).todense(), dtype=np.float32).ravel()
    best = np.lexsort((np.arange(segments.n_segments), -seg_scores))[:n_segments]
    top_segments = [(int(s), str(segments.labels[s]), float(seg_scores[s])) for s in best]
    return UserExplanation(ckpt.item_ids.ids[hist], ckpt.item_ids.ids[rec], scores[rec], dims, top_segments, False)


def explain_item(checkpoint, segments: Segments, item_id: str) -> ItemExplanation:
    """An item's active dimensions (largest ``|value|`` first) and its segment.

    Raises
    ------
    SegmentError
        Unknown item id, or segments of another checkpoint.
    """
    ckpt = open_source(checkpoint)[1]
    segments.check_checkpoint(ckpt)
    if not isinstance(item_id, (str, np.str_)):
        raise SegmentError(f"item_id must be one external item id (str), got {type(item_id).__name__}")
    i = int(ckpt.item_ids.index([item_id], missing="ignore")[0])
    if i < 0:
        raise SegmentError(f"unknown item id {item_id!r}; expected an id of the checkpoint")
    emb = ckpt.embeddings
    lo, hi = emb.indptr[i], emb.indptr[i + 1]
    d, v = emb.indices[lo:hi].astype(np.int64), emb.data[lo:hi].astype(np.float32)
    order = np.lexsort((d, -np.abs(v)))
    d, v = d[order], v[order]
    s = int(segments.assignment[i])
    if s < 0:
        return ItemExplanation(str(item_id), i, d, v, -1, "", [], float("nan"), False)
    centrality = float(emb[i].multiply(segments.vectors[s]).sum())
    return ItemExplanation(str(item_id), i, d, v, s, str(segments.labels[s]), segments.keys(s), centrality,
                           bool(i in set(segments.central(s).tolist())))
