"""The schema of a benchmark configuration (pydantic models); see :mod:`elsa_index.eval.config` for the keys.

Types are strict (no guessing a number from a string), unknown keys are
rejected, and every problem is raised as an :class:`Issue` carrying where
below the validated field it lies, so that :mod:`~elsa_index.eval.config`
can name the full location of the key in its :class:`ConfigError`.

This module holds the backends with their parameter grids and the whole
configuration (:class:`BenchConfig`); the datasets and checkpoints are in
:mod:`~elsa_index.eval.schema_datasets`, the shared base model and checks in
:mod:`~elsa_index.eval.schema_base`.
"""

from __future__ import annotations

import fnmatch
import itertools
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

import elsa_index.indexers as indexers
from elsa_index.errors import ConfigError, ElsaIndexError

from .registry import get_metric
from .schema_base import Issue, Nested, NonNegInt, PosInt, Schema, as_list, check_name, drop_disabled, type_name, unique
from .schema_datasets import DATASET_KINDS, CheckpointSpec, DatasetSpec, FitSpec, InteractionsDataset, ScaleDataset

__all__ = ["Issue", "Nested", "BenchConfig", "DatasetSpec", "InteractionsDataset", "ScaleDataset", "FitSpec",
           "CheckpointSpec", "BackendSpec", "OverheadSpec", "ReportSpec", "expand_grid", "default_storage",
           "HARNESS_PARAMS", "DATASET_KINDS", "type_name"]

#: Search parameters the harness itself controls (never part of a grid).
HARNESS_PARAMS = ("threads",)


def expand_grid(value, where: str = "") -> list[dict]:
    """Parameter sets of a grid.

    Parameters
    ----------
    value : None (one empty set), a table whose list values are swept (the
        cartesian product; scalars are fixed), or an array of such tables
        (the union of their products, in order).
    where : the key, for messages.

    Returns
    -------
    list of dict, never empty; duplicates removed, order kept.

    Raises
    ------
    ConfigError
        A value that is not a table, an empty list, a non-scalar value.
    """
    try:
        return _expand_grid(value)
    except Issue as exc:
        loc = where + "".join(f"[{a}]" if isinstance(a, int) else f".{a}" for a in exc.at)
        raise ConfigError(f"{loc}: {exc}" if loc else str(exc)) from None


def _expand_grid(value) -> list[dict]:
    if value is None:
        return [{}]
    tables = value if isinstance(value, list) else [value]
    out: list[dict] = []
    for i, tab in enumerate(tables):
        at = (i,) if isinstance(value, list) else ()
        if not isinstance(tab, dict):
            raise Issue(f"must be a table of parameter values (lists are swept), got {type_name(tab)}: {tab!r}", at=at)
        axes = []
        for k, v in tab.items():
            vals = v if isinstance(v, list) else [v]
            if not vals:
                raise Issue("is an empty list; expected at least one value to sweep", at=at + (k,))
            for x in vals:
                if isinstance(x, (dict, list)):
                    raise Issue(f"must hold scalars (numbers, strings, booleans), got {type_name(x)}", at=at + (k,))
            axes.append(vals)
        for combo in itertools.product(*axes):
            p = dict(zip(tab, combo))
            if p not in out:
                out.append(p)
    return out or [{}]


class BackendSpec(Schema):
    """A backend of the registry with its grids of build and search parameters."""

    name: str
    label: Optional[str] = None
    datasets: Optional[list[str]] = None
    checkpoints: Optional[list[str]] = None
    build: Any = None
    search: Any = None
    enabled: bool = True
    build_grid: list[dict] = Field(default_factory=list, exclude=True)
    search_grid: list[dict] = Field(default_factory=list, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _no_grids(cls, data):
        if isinstance(data, dict):
            for key in ("build_grid", "search_grid"):
                if key in data:
                    raise Issue("unknown key; give 'build' / 'search' grids", at=(key,))
        return data

    @field_validator("name")
    @classmethod
    def _registered(cls, v):
        if v not in indexers.BACKENDS:  # the module's table at call time (it may be replaced or extended)
            raise Issue(f"unknown backend {v!r}; expected one of {indexers.backend_names()} (elsa_index.indexers.BACKENDS, "
                        "or add one with register_backend)")
        return v

    v_patterns = field_validator("datasets", "checkpoints", mode="before")(lambda cls, v: as_list(v))

    @field_validator("build", "search")
    @classmethod
    def _grid(cls, v, info):
        grid = _expand_grid(v)
        for i, p in enumerate(grid):
            # Search threads are the harness's (latency on one, throughput on each level); a build's threads are
            # the build's own (recorded with its build time).
            bad = [k for k in p if k in HARNESS_PARAMS] if info.field_name == "search" else []
            if bad:
                raise Issue("is set by the harness itself (1 for latency, each of the top-level 'threads' for "
                            "throughput); remove it from the grid", at=(bad[0],))
        return v

    @model_validator(mode="after")
    def _finish(self):
        if self.label is None:
            self.label = self.name
        try:
            check_name(self.label)
        except Issue as exc:
            raise Issue(str(exc), at=("label",)) from None
        self.build_grid = _expand_grid(self.build)
        self.search_grid = _expand_grid(self.search)
        return self

    def applies_to(self, dataset: str, checkpoint: str, storage: str, accepts: str | None) -> bool:
        """Whether this backend runs on a checkpoint (patterns, else the storage rule of :func:`default_storage`)."""
        if self.datasets is not None and not any(fnmatch.fnmatchcase(dataset, p) for p in self.datasets):
            return False
        if self.checkpoints is not None:
            return any(fnmatch.fnmatchcase(checkpoint, p) for p in self.checkpoints)
        return default_storage(accepts) == storage


def default_storage(accepts: str | None) -> str:
    """Which checkpoints a backend gets when none are named: dense for dense-only backends, else sparse."""
    return "dense" if accepts == "dense" else "sparse"


class OverheadSpec(Schema):
    """The harness-overhead check: a bare timing loop over one measured configuration of ``backend``."""

    backend: str = "sparse"
    dataset: Optional[str] = None
    queries: PosInt = 200


class ReportSpec(Schema):
    """What the report checks results against."""

    latency_target_ms: Annotated[float, Field(gt=0)] = 10.0
    latency_goal_ms: Annotated[float, Field(gt=0)] = 2.0
    #: Recall levels of the "latency at equal recall" table (each backend's fastest configuration reaching each
    #: level); empty: the top-level ``recall_target`` alone.
    recall_levels: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(default_factory=list)

    v_levels = field_validator("recall_levels", mode="before")(lambda cls, v: as_list(v))


class BenchConfig(Schema):
    """A parsed, checked benchmark configuration (see the module docstring for the keys)."""

    datasets: list[Optional[DatasetSpec]]
    backends: list[Optional[BackendSpec]]
    title: str = "elsa-index benchmark"
    k: PosInt = 100
    queries: PosInt = 1000
    warmup: NonNegInt = 50
    index_warmup_seconds: Annotated[float, Field(ge=0.0, le=3600.0)] = 3.0
    threads: list[PosInt] = Field(default_factory=lambda: [1], min_length=1)
    throughput_repeats: PosInt = 3
    metrics: list[str] = Field(default_factory=lambda: [
        "recall@20", "recall@50", "ndcg@100", "retrieval_recall@20", "retrieval_recall@100"])
    memory_probe: Literal["build", "each", "off"] = "build"
    recall_target: Annotated[float, Field(ge=0.0, le=1.0)] = 0.99
    seed: NonNegInt = 0
    bandwidth_mb: PosInt = 256
    overhead: Optional[OverheadSpec] = Field(default_factory=OverheadSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    path: Optional[str] = Field(default=None, exclude=True)
    quick: bool = Field(default=False, exclude=True)
    raw: dict = Field(default_factory=dict, exclude=True)

    v_lists = field_validator("threads", "metrics", mode="before")(lambda cls, v: as_list(v))
    v_entries = field_validator("datasets", "backends", mode="before")(lambda cls, v: drop_disabled(v))

    @model_validator(mode="before")
    @classmethod
    def _internal(cls, data):
        if isinstance(data, dict):
            for key in ("path", "quick", "raw"):
                if key in data:
                    raise Issue(f"unknown key; expected some of {sorted(set(cls.model_fields) - {'path', 'quick', 'raw'})}",
                                at=(key,))
        return data

    @field_validator("overhead", mode="before")
    @classmethod
    def _overhead(cls, v):
        if v is False:
            return None
        if not isinstance(v, (dict, OverheadSpec)):
            raise Issue(f"must be a table like {{ backend = \"sparse\" }} or false, got {type_name(v)}: {v!r}")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v):
        for i, m in enumerate(v):
            try:
                get_metric(m)
            except ElsaIndexError as exc:
                raise Issue(str(exc), at=(i,)) from None
        return v

    @model_validator(mode="after")
    def _finish(self):
        for i, m in enumerate(self.metrics):
            metric, at = get_metric(m)
            if at is not None and metric.kind in ("quality", "retrieval") and at > self.k:
                raise Issue(f"{m!r} needs the top {at} results but k = {self.k}; raise k or lower the cut-off",
                            at=("metrics", i))
        for key in ("datasets", "backends"):
            entries = [x for x in getattr(self, key) if x is not None]
            if not entries:
                raise Issue(f"must list at least one enabled [[{key}]] table", at=(key,))
            setattr(self, key, entries)
        unique([d.name for d in self.datasets], "dataset names", at=("datasets",))
        unique([b.label for b in self.backends], "backend labels (set 'label' to tell two entries apart)", at=("backends",))
        self._check_scale_refs()
        return self

    def _check_scale_refs(self) -> None:
        """A scale dataset's ``fit`` must name a sparse checkpoint of an enabled interactions dataset."""
        by_name = {x.name: x for x in self.datasets}
        for d in self.datasets:
            if d.kind != "scale" or d.fit.dataset is None:
                continue
            where = f"dataset {d.name!r}: fit"
            src = by_name.get(d.fit.dataset)
            if src is None or src.kind != "interactions":
                raise Issue(f"{where}.dataset {d.fit.dataset!r} is not an enabled dataset of this config; expected one of "
                            f"{[x.name for x in self.datasets if x.kind == 'interactions']}" if src is None else
                            f"{where}.dataset {src.name!r} must be interaction data, not {src.kind!r}")
            ck = {c.name: c for c in src.checkpoints}.get(d.fit.checkpoint)
            if ck is None:
                raise Issue(f"{where}.checkpoint {d.fit.checkpoint!r} is not a checkpoint of {src.name!r}; expected one "
                            f"of {[c.name for c in src.checkpoints]}")
            if ck.storage != "sparse":
                raise Issue(f"{where}.checkpoint {ck.name!r} must be sparse (Compressed ELSA)")

    def dataset(self, name: str):
        """The dataset entry called ``name``."""
        for d in self.datasets:
            if d.name == name:
                return d
        raise ConfigError(f"no dataset {name!r}; the config has {[d.name for d in self.datasets]}")

    @property
    def retrieval_metric(self) -> str | None:
        """The first retrieval-recall metric (used for Pareto fronts and tuning)."""
        for m in self.metrics:
            if m.startswith("retrieval_recall"):
                return m
        return None
