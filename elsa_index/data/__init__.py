"""Interaction data: what this package owns.

``log`` reads interaction logs (Parquet/CSV) and filters them into user x
item matrices (``Interactions``) with stable id tables (``IdMap``); ``split``
holds users out for evaluation (``Split``); ``datasets`` parses public
datasets in their official formats into a ``Log``, and ``download`` fetches
them into a verified cache; ``synthetic`` makes logs with planted structure
for demos and tests;
``tables`` reads item metadata tables (titles, genres) keyed by item id.
"""

from __future__ import annotations

from .datasets import DATASETS, load_dataset
from .log import IdMap, Interactions, Log, filter_log, read_log
from .split import Split, column_split, strong_generalization_split
from .synthetic import make_synthetic

__all__ = ["Log", "IdMap", "Interactions", "Split", "read_log", "filter_log", "strong_generalization_split",
           "column_split", "DATASETS", "load_dataset", "make_synthetic"]
