"""elsa-index: sparse item embeddings (Compressed ELSA) for recommendation serving.

This package owns the core, one job per module or sub-package:

- ``errors`` every error and warning type; ``_atomic`` atomic writes and
  writer locks; ``_io`` array/JSON/CSR/manifest files and their digests; ``_checks`` argument checks; ``topk`` the top-k with
  its tie rule; ``scoring`` exact scores of candidate items;
- ``data`` interaction logs, splits, datasets, synthetic data, metadata
  tables; ``models`` ELSA, Compressed ELSA and baselines; ``metrics``
  recommendation quality; ``workflow`` data -> model -> checkpoint;
- ``checkpoint`` the self-describing checkpoint directory; ``search`` the
  ``Index`` API over any backend of ``elsa_index.indexers``;
- ``segments`` and ``homepage`` segment rows and their static preview;
- ``demo`` the end-to-end demo; ``cli`` (with ``_cli_parser``) the command line.

Backends live in ``elsa_index.indexers`` and the benchmark harness in
``elsa_index.eval`` (source folders ``indexers/`` and ``eval/``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import BackendError, CheckpointError, DataError, ElsaIndexError, TrainingError

__all__ = ["__version__", "ElsaIndexError", "DataError", "CheckpointError", "TrainingError", "BackendError"]
