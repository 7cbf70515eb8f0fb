"""The segments artefact: :class:`Segments`, its queries and its directory on disk.

A :class:`Segments` holds, for one sparse checkpoint (identified by its
fingerprint), the segment of every item, the unit-norm segment vectors, the
``(dim, sign)`` keys merged into each segment, its central items and its
label. It is made by :func:`elsa_index.segments.discover_segments` and read
back with :meth:`Segments.load`; :func:`default_segments_dirs` and
:func:`find_segments` say where the command line keeps the segments of an
index or a checkpoint directory.

Artefact directory (:meth:`Segments.save`)::

    manifest.json        format, version, checkpoint fingerprint, parameters,
                         counts, array digest
    item_ids.npy         external item ids (unicode), the checkpoint's row order
    assignment.npy       int64 (n_items,) segment of each item, -1 unsegmented
    vector_data.npy, vector_indices.npy, vector_indptr.npy
                         CSR float32 (n_segments, dims) segment vectors
                         (``_io.save_csr``: int32 indices since format 2,
                         int64 in format 1; both are read)
    key_indptr.npy, key_dims.npy, key_signs.npy, key_sizes.npy
                         the (dim, sign) keys merged into each segment, main key first
    central_indptr.npy, central_indices.npy, central_scores.npy
                         central items of each segment, best first
    labels.npy           unicode (n_segments,)

Arrays are loaded with ``allow_pickle=False``, dtype- and range-checked, and
checked against the manifest's ``arrays_digest`` (required unless
``verify=False``); the digest covers the vector arrays as (float32, int64,
int64), whatever their dtype on disk. The directory is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp

from .. import __version__
from .._atomic import atomic_directory
from .._io import array_digest, load_array, load_csr, read_manifest, save_array, save_csr, write_json
from ..checkpoint import Checkpoint
from ..data import IdMap
from ..errors import ElsaIndexError, SegmentError

logger = logging.getLogger(__name__)

FORMAT = "elsa-index-segments"
FORMAT_VERSION = 2  # 2: vector indices stored as int32 (_io.save_csr)
_VECTOR_NAMES = ("vector_data", "vector_indices", "vector_indptr")

__all__ = ["Segments", "default_segments_dirs", "find_segments", "FORMAT", "FORMAT_VERSION"]




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
        d = self.vectors.shape[1]
        if len(self.key_dims) and (self.key_dims.min() < 0 or self.key_dims.max() >= d):
            problems.append(f"key dims outside [0, {d})")
        if len(self.key_sizes) and self.key_sizes.min() < 0:
            problems.append("key sizes must be non-negative")
        if len(self.central_scores) and not np.isfinite(self.central_scores).all():
            problems.append("central scores contain NaN or inf")
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
            **dict(zip(_VECTOR_NAMES, _canonical_csr(v))),
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
        """Write the segments directory atomically; returns its path.

        Raises
        ------
        SegmentError
            ``path`` exists and ``overwrite`` is False, or it cannot be written.
        """
        path = Path(path)
        with atomic_directory(path, overwrite=overwrite, error=SegmentError, kind=FORMAT) as tmp:
            for name, arr in self._arrays().items():
                if name not in _VECTOR_NAMES:
                    save_array(tmp / f"{name}.npy", arr)
            save_csr(tmp, "vector_", self.vectors)
            write_json(tmp / "manifest.json", self.manifest())
        logger.info("saved %d segments to %s", self.n_segments, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, checkpoint: Checkpoint | None = None,
             verify: bool = True) -> "Segments":
        """Read a directory written by :meth:`save` (format 1 or 2).

        Parameters
        ----------
        path : the segments directory.
        checkpoint : if given, it must be the checkpoint the segments come from.
        verify : check the arrays against the manifest's ``arrays_digest``
            (refused when it is missing); False trusts them. They are
            range-checked and dtype-checked either way.

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
        names = ("item_ids", "assignment", "key_indptr", "key_dims", "key_signs", "key_sizes", "central_indptr",
                 "central_indices", "central_scores", "labels")
        for key in ("n_items", "dims", "n_segments"):
            if isinstance(m[key], bool) or not isinstance(m[key], int) or m[key] < 0:
                raise SegmentError(f"{path}/manifest.json: {key} must be a non-negative integer, got {m[key]!r}")
        a = {name: load_array(path / f"{name}.npy", SegmentError) for name in names}
        for name, arr in a.items():  # no silent casts: a float or string array where ids belong is refused
            kind = _KINDS[name]
            if arr.ndim != 1 or arr.dtype.kind not in kind:
                raise SegmentError(f"{path}: {name}.npy holds {arr.dtype} of shape {arr.shape}; expected a 1-D "
                                   f"{_KIND_NAMES[kind]} array")
        n_seg, dims = m["n_segments"], m["dims"]
        vectors = load_csr(path, "vector_", (n_seg, dims), SegmentError)
        a["vector_data"], a["vector_indices"], a["vector_indptr"] = _canonical_csr(vectors)
        order = ("item_ids", "assignment", *_VECTOR_NAMES, *names[2:])
        if verify:
            if not isinstance(m.get("arrays_digest"), str):
                raise SegmentError(f"{path}/manifest.json lacks the field 'arrays_digest', so its arrays cannot be "
                                   "verified; run 'elsa-index segments' again (or load with verify=False if you "
                                   "trust these files)")
            if array_digest(*(a[n] for n in order)) != m["arrays_digest"]:
                raise SegmentError(f"{path}: arrays do not match the manifest digest (corrupted or edited files)")
        try:
            seg = cls(
                item_ids=IdMap(a["item_ids"]), assignment=a["assignment"], vectors=vectors,
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


_KINDS = {"item_ids": "U", "assignment": "iu", "key_indptr": "iu", "key_dims": "iu", "key_signs": "iu",
          "key_sizes": "iu", "central_indptr": "iu", "central_indices": "iu", "central_scores": "f", "labels": "U"}
_KIND_NAMES = {"U": "unicode", "iu": "integer", "f": "float"}


def _canonical_csr(m: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data float32, indices int64, indptr int64): the dtypes the digest covers, whatever was stored."""
    return m.data.astype(np.float32), m.indices.astype(np.int64), m.indptr.astype(np.int64)


def default_segments_dirs(source: str | os.PathLike) -> list[Path]:
    """Where the segments of an index or checkpoint directory live by default, in lookup order.

    ``SOURCE/segments`` for an index directory (it holds ``index.json``), the
    sibling ``SOURCE.segments`` for a checkpoint directory; the other place
    comes second. ``elsa-index segments`` writes to the first.
    """
    path = Path(source)
    sibling = path.resolve().parent / f"{path.resolve().name}.segments"
    if (path / "index.json").is_file():
        return [path / "segments", sibling]
    return [sibling, path / "segments"]


def find_segments(source: str | os.PathLike) -> Path:
    """The first of :func:`default_segments_dirs` that holds a segments directory.

    Raises
    ------
    SegmentError
        None of them does; the message says where it looked and how to make them.
    """
    candidates = default_segments_dirs(source)
    found = next((c for c in candidates if (c / "manifest.json").is_file()), None)
    if found is None:
        raise SegmentError(f"no segments found for {source} (looked in {', '.join(map(str, candidates))}); "
                           f"run 'elsa-index segments {source}' first or pass --segments DIR (segments= in Python)")
    return found
