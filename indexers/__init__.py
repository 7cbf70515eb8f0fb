"""Index backends, shipped as ``elsa_index.indexers``.

This package owns everything backend-specific: ``base`` holds the contract
(:class:`~elsa_index.indexers.base.Backend`, ``Results``), each other module
is one backend, and :data:`BACKENDS` below is the only table of backend
names. A backend class carries its own facts (what it accepts, whether it is
exact, its parameters and their docs, the modules it needs and how to
install them, its bytes-touched cost model), so the CLI, the search API, the
benchmark harness and its report learn about a new backend from this table
alone. Backends are imported lazily: a missing optional dependency affects
only the backend that needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from elsa_index.errors import BackendError

if TYPE_CHECKING:
    from .base import Backend

__all__ = ["BACKENDS", "register_backend", "get_backend", "backend_names"]

#: backend name -> "module:Class"; adding a backend is one module plus one line here.
BACKENDS: dict[str, str] = {
    "sparse": "elsa_index.indexers.sparse:ExactSparse",
    "sparse-approx": "elsa_index.indexers.sparse_approx:ApproxSparse",
    "lucene": "elsa_index.indexers.lucene:LuceneImpact",
    "faiss-flat": "elsa_index.indexers.faiss_dense:FaissFlat",
    "faiss-hnsw": "elsa_index.indexers.faiss_dense:FaissHNSW",
    "faiss-ivf": "elsa_index.indexers.faiss_dense:FaissIVF",
    "seismic": "elsa_index.indexers.seismic:SeismicBackend",
    "milvus": "elsa_index.indexers.milvus:MilvusIndex",
}


def register_backend(name: str, target: str, *, replace: bool = False) -> None:
    """Add a backend under ``name``; ``target`` is ``"package.module:ClassName"`` (imported on first use)."""
    if not isinstance(name, str) or not name or not isinstance(target, str) or ":" not in target:
        raise BackendError(f"register_backend expects a name and a 'module:Class' target, got {name!r}, {target!r}")
    if name in BACKENDS and BACKENDS[name] != target and not replace:
        raise BackendError(f"backend {name!r} is already registered as {BACKENDS[name]}; pass replace=True")
    BACKENDS[name] = target


def backend_names() -> list[str]:
    """Registered backend names, in registration order."""
    return list(BACKENDS)


def get_backend(name: str) -> type["Backend"]:
    """The backend class registered as ``name`` (its module is imported now)."""
    from .base import Backend  # base imports get_backend from here: at the top this would be an import cycle

    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; expected one of {backend_names()}")
    module, _, attr = BACKENDS[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"backend {name!r} ({BACKENDS[name]}) cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError(f"backend {name!r} ({BACKENDS[name]}) is not a Backend subclass")
    if cls.name != name:
        raise BackendError(f"backend {name!r} ({BACKENDS[name]}) declares the name {cls.name!r}")
    return cls
