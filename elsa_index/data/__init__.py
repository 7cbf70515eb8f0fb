"""Interaction data: what this package owns.

``log`` reads interaction logs (Parquet/CSV), filters and splits them into
user x item matrices (``Interactions``, ``Split``) with stable id tables
(``IdMap``); ``datasets`` fetches and parses public datasets into a ``Log``;
``synthetic`` makes logs with planted structure for demos and tests;
``tables`` reads item metadata tables (titles, genres) keyed by item id.
"""

from __future__ import annotations

from .log import IdMap, Interactions, Log, Split, column_split, filter_log, read_log, strong_generalization_split

__all__ = ["Log", "IdMap", "Interactions", "Split", "read_log", "filter_log", "strong_generalization_split",
           "column_split"]
