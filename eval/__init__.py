"""Benchmark scripts and reports, shipped as ``elsa_index.eval``."""
