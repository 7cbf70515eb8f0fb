"""Models: what this package owns.

``elsa`` holds dense ELSA and Compressed ELSA (PyTorch training, pruning
schedules, user encoding and item scoring); ``baselines`` holds the
popularity and EASE baselines. Every model takes a scipy CSR user x item
matrix and exposes the same ``score`` function used by evaluation.
"""

from __future__ import annotations

from .elsa import ELSA, SCHEDULES, CompressedELSA, encode_users, nnz_schedule, score_items

__all__ = ["ELSA", "CompressedELSA", "SCHEDULES", "nnz_schedule", "score_items", "encode_users"]
