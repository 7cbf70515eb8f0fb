"""Models: what this package owns.

``elsa`` holds dense ELSA and Compressed ELSA (PyTorch training with
pruning); ``schedules`` the pruning schedules (active dims per row at each
pruning event, and the training steps of those events); ``scoring`` user
encoding ``u = x·A`` and item scoring ``u·a_j`` with dense or sparse
embeddings; ``baselines`` the popularity and EASE baselines. Every model
takes a scipy CSR user x item matrix and exposes the same ``score`` function
used by evaluation.
"""

from __future__ import annotations

from .baselines import EASE, Popularity
from .elsa import ELSA, CompressedELSA
from .schedules import SCHEDULES, nnz_schedule, pruning_plan
from .scoring import encode_users, score_items

__all__ = ["ELSA", "CompressedELSA", "Popularity", "EASE", "SCHEDULES", "nnz_schedule", "pruning_plan",
           "score_items", "encode_users"]
