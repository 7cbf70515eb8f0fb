"""Index backends (exact sparse, Lucene impact, FAISS dense), shipped as ``elsa_index.indexers``."""
