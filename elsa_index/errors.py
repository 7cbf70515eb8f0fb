"""Every error and warning type of elsa-index, in one place.

Every error a user can cause (bad data, bad parameters, bad files) is an
``ElsaIndexError``; the CLI prints its message without a traceback and exits
with status 2. Anything else is a bug.
"""

from __future__ import annotations

__all__ = [
    "ElsaIndexError", "DataError", "CheckpointError", "TrainingError", "BackendError", "SegmentError",
    "HomepageError", "ConfigError", "BenchError", "ProbeError", "UnknownItemsWarning", "SegmentFallbackWarning",
    "NoPopularityWarning",
]


class ElsaIndexError(ValueError):
    """Base class for errors caused by input, parameters or files."""


class DataError(ElsaIndexError):
    """An interaction log or dataset file is unusable."""


class CheckpointError(ElsaIndexError):
    """A checkpoint directory or an imported embedding file is unusable."""


class TrainingError(ElsaIndexError):
    """Training diverged or was configured inconsistently."""


class BackendError(ElsaIndexError):
    """A problem with an index: bad parameters, bad queries, a corrupt index directory."""


class SegmentError(ElsaIndexError):
    """Segments cannot be built, loaded or used as asked."""


class HomepageError(ElsaIndexError):
    """A homepage preview cannot be rendered as asked."""


class ConfigError(ElsaIndexError):
    """A benchmark configuration is invalid."""


class BenchError(ElsaIndexError):
    """A benchmark run cannot proceed (missing data, an inconsistent results directory)."""


class ProbeError(ElsaIndexError):
    """A measurement subprocess failed."""


class UnknownItemsWarning(UserWarning):
    """Some item ids of a request are not in the catalogue and were ignored."""


class SegmentFallbackWarning(UserWarning):
    """A user had no usable history; segment rows fell back to popular segments."""


class NoPopularityWarning(UserWarning):
    """Users with no known history fell back to popular items, but the checkpoint has no popularity to rank by."""
