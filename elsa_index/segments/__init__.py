"""Item segments of a sparse checkpoint, and the segment rows of a homepage.

The active dimensions of Compressed ELSA embeddings segment the catalogue:
every item belongs to the segment of its dominant signed dimension, near
duplicates are merged, and each segment gets a vector, central items and a
label. The same model scores segments for a user (``u·v_s``), which gives the
rows of a 2-D homepage. This package owns:

``artefact``
    :class:`Segments` (the segments of one checkpoint, their queries, their
    directory on disk) and where the command line keeps them
    (:func:`default_segments_dirs`, :func:`find_segments`).
``discover``
    :func:`discover_segments`: dominant keys, greedy cosine merging, central
    items, labels from item metadata (read by :mod:`elsa_index.data.tables`).
``rows``
    :func:`recommend_segments`: the rows of one user's page, served through an
    :class:`~elsa_index.search.Index` (:class:`SegmentRow`, :data:`TOP_ROW_LABEL`).
``explain``
    :func:`explain_user`, :func:`explain_item`: active dimensions and the
    segments they map to.

Rendering the page is :mod:`elsa_index.homepage`'s job.
"""

from __future__ import annotations

from ..errors import SegmentError, SegmentFallbackWarning
from ._shared import open_source
from .artefact import FORMAT, FORMAT_VERSION, Segments, default_segments_dirs, find_segments
from .discover import discover_segments
from .explain import DimContribution, ItemExplanation, UserExplanation, explain_item, explain_user
from .rows import TOP_ROW_LABEL, SegmentRow, recommend_segments, serving_index

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
    "open_source",
    "serving_index",
    "default_segments_dirs",
    "find_segments",
    "TOP_ROW_LABEL",
    "FORMAT",
    "FORMAT_VERSION",
]
