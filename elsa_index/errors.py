"""Error types raised for user mistakes.

Every error a user can cause (bad data, bad parameters, bad files) is an
``ElsaIndexError``; the CLI prints its message without a traceback and exits
with status 2. Anything else is a bug.
"""

from __future__ import annotations


class ElsaIndexError(ValueError):
    """Base class for errors caused by input, parameters or files."""


class DataError(ElsaIndexError):
    """An interaction log or dataset file is unusable."""


class CheckpointError(ElsaIndexError):
    """A checkpoint directory or an imported embedding file is unusable."""


class TrainingError(ElsaIndexError):
    """Training diverged or was configured inconsistently."""
