"""The benchmark harness, shipped as ``elsa_index.eval``.

This package owns measuring backends against each other: the TOML
configuration and its schema (``config``; ``schema`` with ``schema_base``
and ``schema_datasets``), what a config measures (``plan``), the data,
checkpoints and query sets with their exact references (``prepare``),
timing, memory and throughput of one configuration (``measure``,
``memprobe``, ``machine``), the files of a run (``store``), the metrics
computed afterwards from raw results (``registry``), synthetic catalogues
for scale studies (``scale``), the Markdown report (``report``) with its
plots (``plots``), verdicts (``verdicts``) and tables (``tables``), and the
orchestration behind ``elsa-index bench`` (``harness``); one-off studies live in ``studies``, configs in ``configs``,
committed results in ``results``. It knows backends only through the
registry of :mod:`elsa_index.indexers` and the attributes of their classes.
"""
