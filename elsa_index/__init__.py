"""elsa-index: sparse item embeddings (Compressed ELSA) for recommendation serving."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import BackendError, CheckpointError, DataError, ElsaIndexError, TrainingError

__all__ = ["__version__", "ElsaIndexError", "DataError", "CheckpointError", "TrainingError", "BackendError"]
