"""Item segments read off the inverted index of a sparse checkpoint, and homepage rows from them.

Compressed ELSA rows ``a_j`` are sparse and signed, so each dimension with a
sign is a posting list of items, and each item has a *dominant* signed
dimension: the entry with the largest ``|value|``, its sign kept. Grouping the
items by that key ``(dim, sign)`` segments the catalogue along the model's own
latent space (as the Compressed ELSA paper observes); the same model then
scores segments for a user, which gives the rows of a 2-D homepage.

Discovery (:func:`discover_segments`)
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

Segment recommendation (:func:`recommend_segments`)
    The user vector ``u = x·A`` scores segments by ``u·v_s``; rows follow in
    descending segment score (ties: lower segment id). Within a segment the
    items are ranked by their exact scores ``u·a_j`` (ties: lower item index),
    skipping the history and every item already shown on the page; a segment
    with nothing left is skipped. The plain "Recommended for you" row comes
    first and counts as shown. See the function for the backend hook.

Artefact directory (:meth:`Segments.save`)::

    manifest.json        format, version, checkpoint fingerprint, parameters,
                         counts, array digest
    item_ids.npy         external item ids (unicode), the checkpoint's row order
    assignment.npy       int64 (n_items,) segment of each item, -1 unsegmented
    vector_data.npy, vector_indices.npy, vector_indptr.npy
                         CSR float32 (n_segments, dims) segment vectors
    key_indptr.npy, key_dims.npy, key_signs.npy, key_sizes.npy
                         the (dim, sign) keys merged into each segment, main key first
    central_indptr.npy, central_indices.npy, central_scores.npy
                         central items of each segment, best first
    labels.npy           unicode (n_segments,)

Arrays are loaded with ``allow_pickle=False``; the directory is written to a
temporary sibling and renamed into place.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp

from . import __version__
from ._io import array_digest, atomic_directory, load_array, read_manifest, save_array, write_json
from .checkpoint import Checkpoint
from .data import IdMap
from .errors import ElsaIndexError, SegmentError, SegmentFallbackWarning

logger = logging.getLogger(__name__)

FORMAT = "elsa-index-segments"
FORMAT_VERSION = 1
TOP_ROW_LABEL = "Recommended for you"

__all__ = [
    "Segments",
    "SegmentRow",
    "DimContribution",
    "UserExplanation",
    "ItemExplanation",
    "SegmentError",
    "SegmentFallbackWarning",
    "discover_segments",
    "recommend_segments",
    "explain_user",
    "explain_item",
    "TOP_ROW_LABEL",
]


# ===================================================================== Segments


class Segments:
    """Item segments of one sparse checkpoint. Build with :func:`discover_segments`.

    Attributes
    ----------
    item_ids : IdMap, the checkpoint's items in row order.
    assignment : ndarray int64 (n_items,), segment of each item (-1: unsegmented,
        its embedding row is empty).
    vectors : scipy CSR float32 (n_segments, dims), unit-norm segment vectors.
    labels : ndarray str (n_segments,).
    fingerprint : the fingerprint of the checkpoint the segments come from.
    params : the discovery parameters.
    info : counts (segments before merging, merges, metadata coverage).
    """

    def __init__(
        self,
        *,
        item_ids: IdMap,
        assignment: np.ndarray,
        vectors: sp.csr_matrix,
        key_indptr: np.ndarray,
        key_dims: np.ndarray,
        key_signs: np.ndarray,
        key_sizes: np.ndarray,
        central_indptr: np.ndarray,
        central_indices: np.ndarray,
        central_scores: np.ndarray,
        labels: np.ndarray,
        fingerprint: str,
        params: dict | None = None,
        info: dict | None = None,
        created: str = "",
    ):
        self.item_ids = item_ids if isinstance(item_ids, IdMap) else IdMap(item_ids)
        self.assignment = np.asarray(assignment, dtype=np.int64)
        self.vectors = sp.csr_matrix(vectors, dtype=np.float32)
        self.key_indptr = np.asarray(key_indptr, dtype=np.int64)
        self.key_dims = np.asarray(key_dims, dtype=np.int64)
        self.key_signs = np.asarray(key_signs, dtype=np.int8)
        self.key_sizes = np.asarray(key_sizes, dtype=np.int64)
        self.central_indptr = np.asarray(central_indptr, dtype=np.int64)
        self.central_indices = np.asarray(central_indices, dtype=np.int64)
        self.central_scores = np.asarray(central_scores, dtype=np.float32)
        self.labels = np.asarray(labels).astype(str)
        self.fingerprint = str(fingerprint)
        self.params = dict(params or {})
        self.info = dict(info or {})
        self.created = created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self._validate()
        # Members of every segment, ascending item index, as slices of one array.
        seg = self.assignment
        self._member_order = np.argsort(seg, kind="stable")
        self._member_bounds = np.searchsorted(seg[self._member_order], np.arange(self.n_segments + 1))
        codes = 2 * self.key_dims + (self.key_signs < 0)
        owner = np.repeat(np.arange(self.n_segments), np.diff(self.key_indptr))
        self._key_owner = dict(zip(codes.tolist(), owner.tolist()))

    def _validate(self) -> None:
        n, m = len(self.item_ids), self.vectors.shape[0]
        a = self.assignment
        problems = []
        if a.shape != (n,):
            problems.append(f"assignment has shape {a.shape}, expected ({n},)")
        elif n and (a.min() < -1 or a.max() >= m):
            problems.append(f"assignment holds segment ids outside [-1, {m})")
        for name, ptr, arrays in (
            ("key", self.key_indptr, (self.key_dims, self.key_signs, self.key_sizes)),
            ("central", self.central_indptr, (self.central_indices, self.central_scores)),
        ):
            if ptr.shape != (m + 1,) or (m + 1 and (ptr[0] != 0 or np.any(np.diff(ptr) < 0))):
                problems.append(f"{name}_indptr is not a valid pointer array for {m} segments")
            elif any(x.shape != (int(ptr[-1]),) for x in arrays):
                problems.append(f"{name} arrays do not match {name}_indptr")
        if len(self.central_indices) and (self.central_indices.min() < 0 or self.central_indices.max() >= n):
            problems.append(f"central item indices outside [0, {n})")
        if len(self.key_signs) and not np.isin(self.key_signs, (-1, 1)).all():
            problems.append("key signs must be +1 or -1")
        if self.labels.shape != (m,):
            problems.append(f"labels has shape {self.labels.shape}, expected ({m},)")
        if problems:
            raise SegmentError("inconsistent segments: " + "; ".join(problems))

    # ------------------------------------------------------------- properties

    @property
    def n_segments(self) -> int:
        return self.vectors.shape[0]

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def dims(self) -> int:
        return self.vectors.shape[1]

    @property
    def sizes(self) -> np.ndarray:
        """int64 (n_segments,) number of items in each segment."""
        return np.diff(self._member_bounds)

    def members(self, segment: int) -> np.ndarray:
        """Item indices (int64, ascending) of one segment."""
        s = self._check_segment(segment)
        return self._member_order[self._member_bounds[s] : self._member_bounds[s + 1]]

    def central(self, segment: int) -> np.ndarray:
        """Indices of the segment's most central items, most central first."""
        s = self._check_segment(segment)
        return self.central_indices[self.central_indptr[s] : self.central_indptr[s + 1]]

    def keys(self, segment: int) -> list[tuple[int, int]]:
        """The ``(dim, sign)`` keys merged into the segment, its main key first."""
        s = self._check_segment(segment)
        lo, hi = self.key_indptr[s], self.key_indptr[s + 1]
        return [(int(d), int(g)) for d, g in zip(self.key_dims[lo:hi], self.key_signs[lo:hi])]

    def key_owner(self, dim: int, sign: int) -> int:
        """Segment that holds the key ``(dim, sign)``, or -1 if no item is dominated by it."""
        return self._key_owner.get(2 * int(dim) + (int(sign) < 0), -1)

    def segment_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Segment ids (int64) of external item ids; unknown ids raise a :class:`SegmentError`."""
        if isinstance(item_ids, (str, bytes)):
            item_ids = [item_ids]
        idx = self.item_ids.index(list(item_ids), missing="ignore")
        if (idx < 0).any():
            bad = [str(v) for v, i in zip(item_ids, idx) if i < 0][:5]
            raise SegmentError(f"unknown item id(s) {bad}; expected ids of the segmented checkpoint")
        return self.assignment[idx]

    def describe(self, *, n_central: int | None = None) -> list[dict[str, Any]]:
        """One plain dict per segment: id, label, size, keys, central item ids."""
        out = []
        for s in range(self.n_segments):
            c = self.central(s)[:n_central]
            out.append({
                "segment": s, "label": str(self.labels[s]), "size": int(self.sizes[s]),
                "keys": self.keys(s), "central": self.item_ids.ids[c].tolist(),
            })
        return out

    def check_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Raise a :class:`SegmentError` unless ``checkpoint`` is the one the segments come from."""
        if checkpoint.fingerprint != self.fingerprint:
            raise SegmentError(
                f"these segments were discovered from checkpoint {self.fingerprint}, but the given checkpoint is "
                f"{checkpoint.fingerprint}; run discover_segments on this checkpoint"
            )

    def _check_segment(self, segment) -> int:
        if isinstance(segment, bool) or not isinstance(segment, (int, np.integer)) or not 0 <= segment < self.n_segments:
            raise SegmentError(f"segment must be an integer in [0, {self.n_segments}), got {segment!r}")
        return int(segment)

    def __repr__(self) -> str:
        return f"Segments(n_segments={self.n_segments}, n_items={self.n_items}, dims={self.dims})"

    # ------------------------------------------------------------ persistence

    def _arrays(self) -> dict[str, np.ndarray]:
        v = self.vectors
        return {
            "item_ids": self.item_ids.ids,
            "assignment": self.assignment,
            "vector_data": v.data.astype(np.float32),
            "vector_indices": v.indices.astype(np.int64),
            "vector_indptr": v.indptr.astype(np.int64),
            "key_indptr": self.key_indptr,
            "key_dims": self.key_dims,
            "key_signs": self.key_signs,
            "key_sizes": self.key_sizes,
            "central_indptr": self.central_indptr,
            "central_indices": self.central_indices,
            "central_scores": self.central_scores,
            "labels": self.labels,
        }

    def manifest(self) -> dict[str, Any]:
        arrays = self._arrays()
        sizes = self.sizes
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "elsa_index_version": __version__,
            "created": self.created,
            "checkpoint_fingerprint": self.fingerprint,
            "n_items": self.n_items,
            "dims": self.dims,
            "n_segments": self.n_segments,
            "n_unsegmented": int((self.assignment < 0).sum()),
            "size": {"min": int(sizes.min(initial=0)), "max": int(sizes.max(initial=0)),
                     "median": float(np.median(sizes)) if len(sizes) else 0.0},
            "params": self.params,
            "info": self.info,
            "arrays_digest": array_digest(*arrays.values()),
        }

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the segments directory atomically; returns its path."""
        path = Path(path)
        with atomic_directory(path, overwrite=overwrite, error=SegmentError) as tmp:
            for name, arr in self._arrays().items():
                save_array(tmp / f"{name}.npy", arr)
            write_json(tmp / "manifest.json", self.manifest())
        logger.info("saved %d segments to %s", self.n_segments, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, checkpoint: Checkpoint | None = None) -> "Segments":
        """Read a directory written by :meth:`save`.

        Parameters
        ----------
        checkpoint : if given, it must be the checkpoint the segments come from.

        Raises
        ------
        SegmentError
            Not a segments directory, newer format, missing, pickled or
            inconsistent arrays, arrays not matching the manifest digest, or a
            checkpoint with another fingerprint.
        """
        path = Path(path)
        m = read_manifest(path, "manifest.json", FORMAT, FORMAT_VERSION, "segments", SegmentError)
        for key in ("checkpoint_fingerprint", "n_items", "dims", "n_segments"):
            if key not in m:
                raise SegmentError(f"{path}/manifest.json lacks the field {key!r}")
        names = ("item_ids", "assignment", "vector_data", "vector_indices", "vector_indptr", "key_indptr", "key_dims",
                 "key_signs", "key_sizes", "central_indptr", "central_indices", "central_scores", "labels")
        a = {name: load_array(path / f"{name}.npy", SegmentError) for name in names}
        if m.get("arrays_digest") and array_digest(*(a[n] for n in names)) != m["arrays_digest"]:
            raise SegmentError(f"{path}: arrays do not match the manifest digest (corrupted or edited files)")
        n_seg, dims = int(m["n_segments"]), int(m["dims"])
        ptr, ind, dat = a["vector_indptr"], a["vector_indices"], a["vector_data"]
        if ptr.shape != (n_seg + 1,) or ind.shape != dat.shape or ptr[-1] != len(dat) or (
            len(ind) and (ind.min() < 0 or ind.max() >= dims)
        ):
            raise SegmentError(f"{path}: segment vector arrays are inconsistent with {n_seg} segments x {dims} dims")
        try:
            seg = cls(
                item_ids=IdMap(a["item_ids"]), assignment=a["assignment"],
                vectors=sp.csr_matrix((dat, ind, ptr), shape=(n_seg, dims)),
                key_indptr=a["key_indptr"], key_dims=a["key_dims"], key_signs=a["key_signs"], key_sizes=a["key_sizes"],
                central_indptr=a["central_indptr"], central_indices=a["central_indices"],
                central_scores=a["central_scores"], labels=a["labels"], fingerprint=m["checkpoint_fingerprint"],
                params=m.get("params"), info=m.get("info"), created=m.get("created", ""),
            )
        except ElsaIndexError as exc:
            raise SegmentError(f"{path}: {exc}") from None
        if seg.n_items != int(m["n_items"]):
            raise SegmentError(f"{path}: {seg.n_items} item ids, manifest says {m['n_items']}")
        if checkpoint is not None:
            seg.check_checkpoint(checkpoint)
        return seg


# ==================================================================== discovery


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
    ckpt = _resolve(checkpoint)[1]
    _require_sparse(ckpt)
    min_size = _check_int(min_size, "min_size", 1)
    n_central = _check_int(n_central, "n_central", 1)
    n_label = _check_int(n_label, "n_label", 1)
    if isinstance(label_cols, str):
        label_cols = (label_cols,)
    label_cols = tuple(label_cols)
    tokens = None if metadata is None else _metadata_tokens(metadata, id_col, label_cols, ckpt.item_ids)

    emb = ckpt.embeddings
    n = ckpt.n_items
    dim, sign = _dominant_keys(emb)
    items = np.flatnonzero(sign != 0)
    if not len(items):
        raise SegmentError("every embedding row is empty; segments need items with at least one non-zero entry")
    codes, init = np.unique(2 * dim[items] + (sign[items] < 0), return_inverse=True)
    m = len(codes)
    if merge_to is not None:
        merge_to = _check_int(merge_to, "merge_to", 1)
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


# ====================================================================== labels


def _metadata_tokens(metadata, id_col: str, label_cols: tuple[str, ...], item_ids: IdMap) -> list[tuple[str, ...] | None]:
    """Label tokens of each checkpoint item (None where the metadata has no row for it)."""
    columns = _read_table(metadata)
    if id_col not in columns:
        raise SegmentError(
            f"item metadata has no id column {id_col!r}; its columns are {sorted(columns)}; pass id_col=<the column "
            "holding the checkpoint's item ids>"
        )
    missing = [c for c in label_cols if c not in columns]
    if missing:
        raise SegmentError(f"item metadata lacks the label column(s) {missing}; its columns are {sorted(columns)}")
    ids = ["" if v is None else str(v) for v in columns[id_col]]
    row_of: dict[str, int] = {}
    for r, v in enumerate(ids):
        row_of.setdefault(v, r)
    if len(row_of) < len(ids):
        logger.warning("item metadata repeats %d id(s); the first row of each is used", len(ids) - len(row_of))
    rows = [row_of.get(v, -1) for v in item_ids.ids.tolist()]
    matched = sum(r >= 0 for r in rows)
    if matched == 0:
        raise SegmentError(
            f"no item id of the checkpoint appears in the metadata column {id_col!r} (checkpoint ids e.g. "
            f"{item_ids.ids[:3].tolist()}, metadata ids e.g. {ids[:3]}); check id_col and that both use the same ids"
        )
    if matched < len(rows):
        logger.warning("item metadata covers %d of %d checkpoint items", matched, len(rows))
    split = [_column_tokenizer(columns[c]) for c in label_cols]
    out: list[tuple[str, ...] | None] = []
    for r in rows:
        if r < 0:
            out.append(None)
            continue
        toks: list[str] = []
        for c, tok in zip(label_cols, split):
            for t in tok(columns[c][r]):
                if t not in toks:
                    toks.append(t)
        out.append(tuple(toks))
    return out


def _read_table(metadata) -> dict[str, list]:
    """Columns of a metadata table as Python lists."""
    if isinstance(metadata, (str, os.PathLike)):
        path = Path(metadata)
        if not path.is_file():
            raise SegmentError(f"item metadata file not found: {path}")
        suffix = path.suffix.lower()
        try:
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                metadata = pq.read_table(path)
            elif suffix in (".csv", ".tsv"):
                import pyarrow.csv as pcsv

                opts = pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
                metadata = pcsv.read_csv(path, parse_options=opts)
            else:
                raise SegmentError(f"unsupported metadata file {path.name}; expected .parquet, .csv or .tsv")
        except SegmentError:
            raise
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise SegmentError(f"could not read item metadata {path}: {exc}") from None
    if hasattr(metadata, "column_names") and hasattr(metadata, "column"):  # pyarrow Table
        return {name: metadata.column(name).to_pylist() for name in metadata.column_names}
    if hasattr(metadata, "columns") and hasattr(metadata, "to_dict"):  # pandas DataFrame
        return {str(c): metadata[c].tolist() for c in metadata.columns}
    if isinstance(metadata, Mapping):
        cols = {str(k): list(v) for k, v in metadata.items()}
        if len({len(v) for v in cols.values()}) > 1:
            raise SegmentError("item metadata columns have different lengths")
        return cols
    raise SegmentError(
        f"item metadata must be a pyarrow Table, a pandas DataFrame, a mapping of columns or a .parquet/.csv path, "
        f"got {type(metadata).__name__}"
    )


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _column_tokenizer(values: list):
    pipe = any(isinstance(v, str) and "|" in v for v in values)

    def tok(v) -> list[str]:
        if _is_missing(v):
            return []
        if isinstance(v, (list, tuple, np.ndarray)):
            parts = [str(x) for x in v if not _is_missing(x)]
        else:
            parts = str(v).split("|") if pipe else str(v).split()
        return [p.strip() for p in parts if p.strip()]

    return tok


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


# ============================================================== recommendation


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
        :class:`~elsa_index.checkpoint.Checkpoint`, or a directory of either.
    segments : segments of that checkpoint (same fingerprint).
    history_ids : the user's external item ids; unknown ids are ignored with an
        :class:`~elsa_index.search.UnknownItemsWarning`.
    rows : segment rows wanted (>= 0); fewer when segments run out.
    k : items per row (>= 1); a row holds fewer when its segment runs out.
    exclude_history : never show an item of the history.
    top_row : start with the plain "Recommended for you" row (its items are
        then not repeated in the segment rows).

    Returns
    -------
    list of :class:`SegmentRow`, the plain row first (``segment == -1``), then
    segment rows in descending segment score ``u·v_s`` (ties: lower id).

    Notes
    -----
    Items are ranked by the exact scores ``u·a_j`` (ties: lower item index),
    and no item appears twice on the page: rows are filled greedily from the
    top, each skipping the items shown above it. The candidates of a segment
    row are its members not shown yet; this is what
    ``Index.recommend(history, k, allow=members, deny=shown)`` returns, so
    every backend gives the same rows. A backend may serve candidates itself
    by defining ``search_within(query, k, *, candidates) -> Results`` (query a
    sparse (1, dims) row, candidates sorted int64 item indices); it must
    return at least the top-k candidates by ``u·a_j`` (e.g. over-fetch and
    re-rank exactly), and they are re-scored exactly here. With an index, the
    plain row's candidates come from the backend's ``recommend`` and are
    re-scored exactly too.

    Fallback: a history with no known item gets a :class:`SegmentFallbackWarning`;
    the plain row is the most popular items, segments are ordered by the total
    training popularity of their items, and rows hold their most popular items
    (``fallback`` is True, scores are popularity counts).
    """
    index, ckpt = _resolve(index_or_checkpoint)
    _require_sparse(ckpt)
    segments.check_checkpoint(ckpt)
    rows = _check_int(rows, "rows", 0)
    k = _check_int(k, "k", 1)
    hist = _history_indices(ckpt, history_ids)
    shown = np.zeros(ckpt.n_items, bool)
    if exclude_history:
        shown[hist] = True
    fallback = len(hist) == 0
    if fallback:
        warnings.warn(
            "the history has no item of the catalogue; rows fall back to popular segments and popular items",
            SegmentFallbackWarning, stacklevel=2,
        )
        item_scores = ckpt.popularity.astype(np.float32)
        seg_scores = np.bincount(
            segments.assignment[segments.assignment >= 0],
            weights=ckpt.popularity[segments.assignment >= 0], minlength=segments.n_segments,
        )
    else:
        u = _user_vector(ckpt, hist)
        item_scores = _item_scores(ckpt, u)
        seg_scores = np.asarray((segments.vectors @ u.T).todense(), dtype=np.float32).ravel()

    out: list[SegmentRow] = []
    hook = None if (index is None or fallback) else getattr(index.backend, "search_within", None)
    if top_row:
        if index is not None and not fallback:
            rec = index.recommend(_history_matrix(ckpt, hist), k, exclude_history=exclude_history)
            cand = rec.indices[0][rec.indices[0] >= 0]
        else:
            cand = np.flatnonzero(~shown)
        top = _take_top(cand, item_scores, k)
        shown[top] = True
        out.append(_row(ckpt, -1, TOP_ROW_LABEL, float("nan"), top, item_scores, fallback))
    for s in np.lexsort((np.arange(segments.n_segments), -seg_scores)):
        if len(out) - top_row >= rows:
            break
        members = segments.members(int(s))
        cand = members[~shown[members]]
        if not len(cand):
            continue
        if hook is not None:
            res = hook(u, min(k, len(cand)), candidates=cand)
            got = np.asarray(res.ids, dtype=np.int64).ravel()
            cand = np.intersect1d(got[got >= 0], cand)
        top = _take_top(cand, item_scores, k)
        if not len(top):
            continue
        shown[top] = True
        out.append(_row(ckpt, int(s), str(segments.labels[s]), float(seg_scores[s]), top, item_scores, fallback))
    return out


def _row(ckpt, segment, label, score, top, item_scores, fallback) -> SegmentRow:
    return SegmentRow(segment, label, score, ckpt.item_ids.ids[top], item_scores[top].astype(np.float32),
                      top.astype(np.int64), bool(fallback))


def _take_top(cand: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The k candidates with the highest scores; ties: lower index first."""
    cand = np.unique(np.asarray(cand, dtype=np.int64))
    order = np.lexsort((cand, -scores[cand]))
    return cand[order[:k]]


# ============================================================ interpretability


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
    ckpt = _resolve(checkpoint)[1]
    _require_sparse(ckpt)
    segments.check_checkpoint(ckpt)
    top = _check_int(top, "top", 1)
    k = _check_int(k, "k", 1)
    n_segments = _check_int(n_segments, "n_segments", 0)
    hist = _history_indices(ckpt, history_ids)
    if not len(hist):
        warnings.warn("the history has no item of the catalogue; no user vector to explain, showing popular items",
                      SegmentFallbackWarning, stacklevel=2)
        pop = ckpt.popularity.astype(np.float32)
        rec = _take_top(np.arange(ckpt.n_items), pop, k)
        return UserExplanation(np.zeros(0, str), ckpt.item_ids.ids[rec], pop[rec], [], [], True)
    u = _user_vector(ckpt, hist)
    scores = _item_scores(ckpt, u)
    mask = np.ones(ckpt.n_items, bool)
    mask[hist] = False
    rec = _take_top(np.flatnonzero(mask), scores, k)
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
    ckpt = _resolve(checkpoint)[1]
    _require_sparse(ckpt)
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


# ===================================================================== helpers


def _resolve(obj):
    """(index or None, checkpoint) from an Index, a Checkpoint, or a directory of either."""
    from .search import Index, open_index

    if isinstance(obj, Index):
        return obj, obj.checkpoint
    if isinstance(obj, Checkpoint):
        return None, obj
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if (path / "index.json").is_file():
            index = open_index(path)
            return index, index.checkpoint
        return None, Checkpoint.load(path)
    raise SegmentError(f"expected a Checkpoint, an Index or a directory of either, got {type(obj).__name__}")


def _require_sparse(ckpt: Checkpoint) -> None:
    if not ckpt.sparse:
        raise SegmentError(
            f"segments need sparse embeddings (the inverted index of a Compressed ELSA checkpoint), but this "
            f"checkpoint is dense ({ckpt.kind}, {ckpt.dims} dims, every entry active); use a sparse checkpoint"
        )


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise SegmentError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _history_indices(ckpt: Checkpoint, history_ids) -> np.ndarray:
    from .errors import UnknownItemsWarning

    if isinstance(history_ids, (str, bytes)) or not isinstance(history_ids, (Sequence, np.ndarray)):
        raise SegmentError(f"history_ids must be a list of item ids, got {type(history_ids).__name__}")
    ids = list(history_ids)
    idx = ckpt.item_ids.index(ids, missing="ignore")
    if (idx < 0).any():
        unknown = [str(v) for v, i in zip(ids, idx) if i < 0]
        warnings.warn(f"{len(unknown)} history item id(s) are not in the catalogue and were ignored, e.g. "
                      f"{unknown[:5]}", UnknownItemsWarning, stacklevel=3)
    return np.unique(idx[idx >= 0])


def _history_matrix(ckpt: Checkpoint, hist: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(hist), np.float32), (np.zeros(len(hist), np.int64), hist)),
                         shape=(1, ckpt.n_items))


def _user_vector(ckpt: Checkpoint, hist: np.ndarray) -> sp.csr_matrix:
    """``u = x·A`` as a sparse (1, dims) float32 row."""
    u = sp.csr_matrix(_history_matrix(ckpt, hist) @ ckpt.embeddings, dtype=np.float32)
    u.eliminate_zeros()
    u.sort_indices()
    return u


def _item_scores(ckpt: Checkpoint, u: sp.csr_matrix) -> np.ndarray:
    """float32 (n_items,) exact ``u·a_j`` for every item."""
    return np.asarray((u @ ckpt.embeddings.T).todense(), dtype=np.float32).ravel()
