"""What a benchmark measures: the configurations of a config, in run order, with their ids.

A configuration (:class:`RunSpec`) is one backend with one build-parameter
set and one search-parameter set on one checkpoint of one (sub-)dataset. Its
``run_id`` is a content hash of everything that decides its numbers (the
query set, the backend, the parameters, k, warm-up, threads, ...), so that a
later invocation skips what is already measured; ``build_id`` identifies the
index it searches, built once and reused by every search-parameter set.
Backends are known only through the registry (:mod:`elsa_index.indexers`)
and their classes' attributes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import elsa_index.indexers as indexers
from elsa_index.errors import ConfigError, ElsaIndexError

from .config import BackendSpec, BenchConfig

__all__ = ["RunSpec", "plan_runs", "resolve_backends", "size_label", "content_id", "subdatasets", "n_queries",
           "queryset_key"]


@dataclass
class RunSpec:
    """One configuration to measure.

    Attributes
    ----------
    dataset : the measured dataset (for scale datasets, one per size, e.g. ``scale-100k``).
    group : the config's dataset entry it comes from.
    checkpoint : checkpoint name within the dataset.
    backend : the backend entry (name, label, grids).
    build, search : parameter sets.
    run_id, build_id : content hashes (resume keys).
    size : catalogue size for scale datasets, else None.
    target : the backend's ``"module:Class"`` in the registry (passed to child processes).
    """

    dataset: str
    group: str
    checkpoint: str
    backend: BackendSpec
    build: dict
    search: dict
    run_id: str = ""
    build_id: str = ""
    size: int | None = None
    target: str | None = None

    def record(self) -> dict:
        """The JSON-ready description stored in ``plan.json`` and in each run record."""
        return {"run_id": self.run_id, "build_id": self.build_id, "dataset": self.dataset, "group": self.group,
                "checkpoint": self.checkpoint, "backend": self.backend.name, "label": self.backend.label,
                "build": self.build, "search": self.search, "size": self.size, "target": self.target}


def size_label(n: int) -> str:
    """``10000`` -> ``"10k"``, ``1000000`` -> ``"1M"``."""
    for div, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{suffix}"
    return str(n)


def content_id(obj) -> str:
    """A 16-hex-digit hash of a JSON-able object (keys sorted)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def subdatasets(d) -> list[tuple[str, int | None]]:
    """``(name, size)`` of each measured dataset of a config entry (one per size for scale datasets)."""
    if d.kind == "scale":
        return [(f"{d.name}-{size_label(n)}", n) for n in d.sizes]
    return [(d.name, None)]


def n_queries(cfg: BenchConfig, d) -> int:
    """Queries of a dataset entry (its own count, else the config's)."""
    return d.queries if d.queries is not None else cfg.queries


def queryset_key(cfg: BenchConfig, d, ckpt: str, size: int | None) -> dict:
    """What identifies a query set and its exact reference."""
    return {"dataset": d.key(), "size": size, "checkpoint": d.checkpoint(ckpt).key(), "queries": n_queries(cfg, d),
            "k": cfg.k, "seed": cfg.seed}


def resolve_backends(cfg: BenchConfig) -> tuple[dict[str, type | None], dict[str, str]]:
    """Backend classes by label, and the reasons for those that cannot run here.

    Returns
    -------
    (classes, reasons) : ``classes[label]`` is the backend class, or None when
        it cannot run here (a missing dependency; ``reasons[label]`` says which
        and how to install it).

    Raises
    ------
    ConfigError
        Parameters the backend does not know, or values it rejects.
    """
    classes: dict[str, type | None] = {}
    reasons: dict[str, str] = {}
    for i, b in enumerate(cfg.backends):
        try:
            cls = indexers.get_backend(b.name)
        except ElsaIndexError as exc:
            classes[b.label] = None
            reasons[b.label] = str(exc)
            continue
        missing = cls.missing_dependency()
        if missing:
            classes[b.label] = None
            reasons[b.label] = missing
            continue
        for bp in b.build_grid:
            for spar in b.search_grid:
                try:
                    cls(**bp, **spar)
                except ImportError as exc:
                    reasons[b.label] = f"backend {b.name!r} needs a missing dependency ({exc})"
                except ElsaIndexError as exc:
                    raise ConfigError(f"backends[{i}] ({b.label}): {exc}") from None
        classes[b.label] = None if b.label in reasons else cls
    return classes, reasons


def plan_runs(cfg: BenchConfig, classes: dict[str, type | None] | None = None) -> list[RunSpec]:
    """Every configuration of ``cfg``, in run order (dataset, checkpoint, backend, build, search).

    Parameters
    ----------
    cfg : the checked configuration.
    classes : from :func:`resolve_backends` (resolved now when None).

    Returns
    -------
    list of :class:`RunSpec`; a backend that cannot run here is still planned
    (on the checkpoints its patterns or its ``accepts`` give it), so that a
    later run measures it once installed.
    """
    if classes is None:
        classes, _ = resolve_backends(cfg)
    runs: list[RunSpec] = []
    common = {"k": cfg.k, "warmup": cfg.warmup, "threads": cfg.threads, "repeats": cfg.throughput_repeats,
              "memory": cfg.memory_probe}
    for d in cfg.datasets:
        if not d.measure:
            continue
        for sub, size in subdatasets(d):
            for c in d.checkpoints:
                qkey = queryset_key(cfg, d, c.name, size)
                for b in cfg.backends:
                    cls = classes.get(b.label)
                    accepts = getattr(cls, "accepts", None)
                    if not b.applies_to(sub, c.name, c.storage, accepts):
                        continue
                    if cls is not None and accepts not in (None, "any") and accepts != c.storage:
                        continue  # a pattern matched a checkpoint the backend cannot index
                    for bp in b.build_grid:
                        build_id = content_id({"q": qkey, "backend": b.name, "build": bp})
                        for spar in b.search_grid:
                            rid = content_id({"q": qkey, "backend": b.name, "build": bp, "search": spar, **common})
                            runs.append(RunSpec(sub, d.name, c.name, b, bp, spar, rid, build_id, size,
                                                indexers.BACKENDS.get(b.name)))
    return runs
