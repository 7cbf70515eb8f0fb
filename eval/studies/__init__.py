"""One-off studies on top of the public API (``python -m elsa_index.eval.studies.NAME``), with committed results
under ``eval/results``."""
