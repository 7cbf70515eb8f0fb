"""The schema of a benchmark configuration (pydantic models); see :mod:`elsa_index.eval.config` for the keys.

Types are strict (no guessing a number from a string), unknown keys are
rejected, and every problem is raised as an :class:`Issue` carrying where
below the validated field it lies, so that :mod:`~elsa_index.eval.config`
can name the full location of the key in its :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import itertools
import json
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError, field_validator, model_validator,
)

from elsa_index.errors import ConfigError, ElsaIndexError

__all__ = ["Issue", "Nested", "BenchConfig", "DatasetSpec", "InteractionsDataset", "ScaleDataset", "FitSpec",
           "CheckpointSpec", "BackendSpec", "OverheadSpec", "ReportSpec", "expand_grid", "default_storage",
           "HARNESS_PARAMS", "DATASET_KINDS"]

#: Search parameters the harness itself controls (never part of a grid).
HARNESS_PARAMS = ("threads",)

_MODEL_KINDS = {"elsa": "dense", "dense": "dense", "compressed_elsa": "sparse", "compressed": "sparse"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class Issue(ValueError):
    """A validation problem at ``at`` below the field being validated (joined to its location)."""

    def __init__(self, message: str, *, at: tuple = ()):
        super().__init__(message)
        self.at = tuple(at)


# ------------------------------------------------------------------ value types


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]


def _as_list(v):
    return [v] if isinstance(v, (int, str)) and not isinstance(v, bool) else v


def _expand(s: str) -> str:
    out = os.path.expandvars(s)
    missing = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", out)
    if missing:
        raise Issue(f"uses the environment variable(s) {missing}, which are not set (value {s!r}); "
                    "set them, e.g. ELSA_INDEX_DATA=/path/to/data")
    return out


def _check_name(v: str) -> str:
    if not _NAME.fullmatch(v):
        raise Issue(f"must be a simple name (letters, digits, '.', '_', '+', '-'), got {v!r}")
    return v


class _Schema(BaseModel):
    """Strict types (no string-to-number guessing) and no unknown keys."""

    model_config = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        if isinstance(data, dict):
            missing = [k for k, f in cls.model_fields.items() if f.is_required() and k not in data]
            if missing:
                raise Issue("is required", at=(missing[0],))
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                raise Issue(f"unknown key; expected some of {sorted(cls.model_fields)}", at=(unknown[0],))
        return data


# ------------------------------------------------------------------ data spec


@functools.lru_cache(maxsize=1)
def _data_model() -> type[BaseModel]:
    """A schema with the fields (names, types, defaults) of :class:`elsa_index.workflow.DataSpec`."""
    from pydantic import create_model

    from elsa_index.workflow import DataSpec

    hints = typing.get_type_hints(DataSpec)
    spec = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(DataSpec)}
    spec["source"] = (str, ...)
    return create_model("DataTable", __base__=_Schema, **spec)


# ------------------------------------------------------------------ parts


class CheckpointSpec(_Schema):
    """One checkpoint of a dataset: trained from a recipe (``train``) or loaded from ``path``."""

    name: str
    train: Optional[dict[str, Any]] = None
    path: Optional[str] = None
    validation_users: NonNegInt = 0
    enabled: bool = True
    _storage: str = PrivateAttr(default="sparse")

    @property
    def storage(self) -> str:
        """``"sparse"`` or ``"dense"`` (from the model kind or the checkpoint manifest)."""
        return self._storage

    @classmethod
    def synthetic(cls, name: str, storage: str) -> CheckpointSpec:
        """A checkpoint the harness draws itself (scale datasets)."""
        c = cls.model_construct(name=name, train=None, path=None, validation_users=0, enabled=True)
        c._storage = storage
        return c

    v_name = field_validator("name")(lambda cls, v: _check_name(v))

    @field_validator("train")
    @classmethod
    def _train(cls, v):
        if v is None:
            return v
        kind = v.get("kind")
        if kind not in _MODEL_KINDS:
            raise Issue(f"must be one of {sorted(_MODEL_KINDS)}, got {kind!r}", at=("kind",))
        for k, x in v.items():
            if isinstance(x, (dict, list)):
                raise Issue(f"must be a scalar model parameter, got {_tname(x)}", at=(k,))
        try:  # constructor and range checks, cheap: no data needed
            from elsa_index.workflow import make_model

            make_model(kind, **{k: x for k, x in v.items() if k != "kind"})
        except ElsaIndexError as exc:
            raise Issue(str(exc)) from None
        return dict(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v):
        return None if v is None else _expand(v)

    @model_validator(mode="after")
    def _source(self):
        if (self.train is None) == (self.path is None):
            raise Issue("needs exactly one of 'train' (a model recipe) or 'path' (a checkpoint directory)")
        if self.train is not None:
            self._storage = _MODEL_KINDS[self.train["kind"]]
            return self
        manifest = Path(self.path) / "manifest.json"
        if not manifest.is_file():
            raise Issue(f"no checkpoint at {self.path} (missing manifest.json)", at=("path",))
        try:
            self._storage = "sparse" if json.loads(manifest.read_text()).get("storage") == "csr" else "dense"
        except (OSError, ValueError):
            raise Issue(f"{manifest} is not readable JSON", at=("path",)) from None
        return self

    def key(self) -> dict:
        """What identifies the checkpoint's content (for run ids)."""
        return {"name": self.name, "train": self.train, "path": self.path, "validation_users": self.validation_users}


def _drop_disabled(v):
    """Disabled entries become None (dropped after validation, so that error indexes match the file)."""
    if isinstance(v, list):
        return [None if isinstance(x, dict) and x.get("enabled", True) is False else x for x in v]
    return v


def _unique(names: list[str], what: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise Issue(f"{what} must be unique; repeated: {dup}")


class _DatasetBase(_Schema):
    name: str
    queries: Optional[PosInt] = None
    measure: bool = True
    enabled: bool = True

    v_name = field_validator("name")(lambda cls, v: _check_name(v))

    def checkpoint(self, name: str) -> CheckpointSpec:
        """The checkpoint called ``name``."""
        for c in self.checkpoints:
            if c.name == name:
                return c
        raise ConfigError(f"dataset {self.name!r} has no checkpoint {name!r}; it has {[c.name for c in self.checkpoints]}")


class InteractionsDataset(_DatasetBase):
    """Interaction data: the held-out users are the queries."""

    kind: Literal["interactions"] = "interactions"
    data: Any
    checkpoints: list[Optional[CheckpointSpec]]
    use_checkpoints: Optional[list[str]] = None

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, v):
        from elsa_index.workflow import DataSpec

        if isinstance(v, DataSpec):
            return v
        if not isinstance(v, dict):
            raise Issue(f"must be a table of elsa_index.workflow.DataSpec fields, got {_tname(v)}")
        try:
            table = _data_model().model_validate(v)
        except ValidationError as exc:
            raise Nested(exc) from None
        fields = table.model_dump()
        try:
            fields["source"] = _expand(fields["source"])
        except Issue as exc:
            raise Issue(str(exc), at=("source",)) from None
        return DataSpec(**fields)

    v_checkpoints = field_validator("checkpoints", mode="before")(lambda cls, v: _drop_disabled(v))
    v_use_checkpoints = field_validator("use_checkpoints", mode="before")(lambda cls, v: _as_list(v))

    @model_validator(mode="after")
    def _checkpoints(self):
        names = [c.name for c in self.checkpoints if c is not None]
        self.checkpoints = [c for c in self.checkpoints if c is not None]
        if not self.checkpoints:
            raise Issue("must list at least one [[datasets.checkpoints]] table", at=("checkpoints",))
        try:
            _unique(names, "names")
        except Issue as exc:
            raise Issue(str(exc), at=("checkpoints",)) from None
        if self.use_checkpoints is not None:
            keep = self.use_checkpoints
            self.checkpoints = [c for c in self.checkpoints if any(fnmatch.fnmatchcase(c.name, p) for p in keep)]
            if not self.checkpoints:
                raise Issue(f"{keep} matches none of the checkpoints {names}", at=("use_checkpoints",))
        return self

    def key(self) -> dict:
        """What identifies the dataset's content (for run ids)."""
        return {"name": self.name, "kind": self.kind, "data": self.data.to_dict()}


class FitSpec(_Schema):
    """Where a scale dataset's statistics come from: a checkpoint of this config, or a directory."""

    dataset: Optional[str] = None
    checkpoint: Optional[str] = None
    path: Optional[str] = None

    @field_validator("path")
    @classmethod
    def _path(cls, v):
        return None if v is None else _expand(v)

    @model_validator(mode="after")
    def _either(self):
        if self.path is None and (self.dataset is None or self.checkpoint is None):
            raise Issue("must name { dataset = ..., checkpoint = ... } of this config, or { path = ... }")
        if self.path is not None and self.dataset is not None:
            raise Issue("give either 'path' or 'dataset'/'checkpoint', not both")
        return self


class ScaleDataset(_DatasetBase):
    """Synthetic catalogues of each size whose statistics are fitted from a sparse checkpoint.

    ``checkpoints`` (not a key of the file) are the drawn catalogues: ``sparse``
    and, unless ``dense_dims = 0``, its ``dense`` counterpart.
    """

    kind: Literal["scale"]
    sizes: list[Annotated[int, Field(ge=2)]] = Field(min_length=1)
    fit: FitSpec
    query_terms: Optional[PosInt] = None
    dense_dims: Optional[NonNegInt] = None
    dims: Optional[Annotated[int, Field(ge=2)]] = None
    extrapolate: list[PosInt] = Field(default_factory=list)
    history_mean: Annotated[float, Field(ge=1.0)] = 30.0

    v_sizes = field_validator("sizes", "extrapolate", mode="before")(lambda cls, v: _as_list(v))

    @model_validator(mode="after")
    def _finish(self):
        self.sizes = sorted(set(self.sizes))
        self.history_mean = float(self.history_mean)
        if self.fit.path is not None and self.query_terms is None:
            raise Issue("is required when fitting from a path (no held-out queries to fit it from)", at=("query_terms",))
        return self

    @property
    def checkpoints(self) -> list[CheckpointSpec]:
        out = [CheckpointSpec.synthetic("sparse", "sparse")]
        if self.dense_dims != 0:
            out.append(CheckpointSpec.synthetic("dense", "dense"))
        return out

    def key(self) -> dict:
        """What identifies the catalogues' content (for run ids)."""
        scale = {"sizes": self.sizes, "fit_dataset": self.fit.dataset, "fit_checkpoint": self.fit.checkpoint,
                 "fit_path": self.fit.path, "query_terms": self.query_terms, "dense_dims": self.dense_dims,
                 "dims": self.dims, "history_mean": self.history_mean}
        return {"name": self.name, "kind": self.kind, "scale": scale}


def _dataset_kind(v) -> str:
    return v.get("kind", "interactions") if isinstance(v, dict) else getattr(v, "kind", "interactions")


DatasetSpec = Annotated[Union[Annotated[InteractionsDataset, Tag("interactions")],
                              Annotated[ScaleDataset, Tag("scale")]], Discriminator(_dataset_kind)]
DATASET_KINDS = ("interactions", "scale")


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
            raise Issue(f"must be a table of parameter values (lists are swept), got {_tname(tab)}: {tab!r}", at=at)
        axes = []
        for k, v in tab.items():
            vals = v if isinstance(v, list) else [v]
            if not vals:
                raise Issue("is an empty list; expected at least one value to sweep", at=at + (k,))
            for x in vals:
                if isinstance(x, (dict, list)):
                    raise Issue(f"must hold scalars (numbers, strings, booleans), got {_tname(x)}", at=at + (k,))
            axes.append(vals)
        for combo in itertools.product(*axes):
            p = dict(zip(tab, combo))
            if p not in out:
                out.append(p)
    return out or [{}]


class BackendSpec(_Schema):
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
        from elsa_index.indexers import BACKENDS, backend_names

        if v not in BACKENDS:
            raise Issue(f"unknown backend {v!r}; expected one of {backend_names()} (elsa_index.indexers.BACKENDS, "
                        "or add one with register_backend)")
        return v

    v_patterns = field_validator("datasets", "checkpoints", mode="before")(lambda cls, v: _as_list(v))

    @field_validator("build", "search")
    @classmethod
    def _grid(cls, v):
        grid = _expand_grid(v)
        for i, p in enumerate(grid):
            bad = [k for k in p if k in HARNESS_PARAMS]
            if bad:
                raise Issue("is set by the harness itself (1 for latency, each of the top-level 'threads' for "
                            "throughput); remove it from the grid", at=(bad[0],))
        return v

    @model_validator(mode="after")
    def _finish(self):
        if self.label is None:
            self.label = self.name
        try:
            _check_name(self.label)
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


class OverheadSpec(_Schema):
    """The harness-overhead check: a bare timing loop over one measured configuration of ``backend``."""

    backend: str = "sparse"
    dataset: Optional[str] = None
    queries: PosInt = 200


class ReportSpec(_Schema):
    """What the report checks results against."""

    latency_target_ms: Annotated[float, Field(gt=0)] = 10.0
    latency_goal_ms: Annotated[float, Field(gt=0)] = 2.0


class BenchConfig(_Schema):
    """A parsed, checked benchmark configuration (see the module docstring for the keys)."""

    datasets: list[Optional[DatasetSpec]]
    backends: list[Optional[BackendSpec]]
    title: str = "elsa-index benchmark"
    k: PosInt = 100
    queries: PosInt = 1000
    warmup: NonNegInt = 50
    threads: list[PosInt] = Field(default_factory=lambda: [1], min_length=1)
    throughput_repeats: PosInt = 3
    metrics: list[str] = Field(default_factory=lambda: [
        "recall@20", "recall@50", "ndcg@100", "retrieval_recall@20", "retrieval_recall@100"])
    memory_probe: Literal["build", "each", "off"] = "build"
    recall_target: Annotated[float, Field(ge=0.0, le=1.0)] = 0.99
    seed: NonNegInt = 0
    overhead: Optional[OverheadSpec] = Field(default_factory=OverheadSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    path: Optional[str] = Field(default=None, exclude=True)
    quick: bool = Field(default=False, exclude=True)
    raw: dict = Field(default_factory=dict, exclude=True)

    v_lists = field_validator("threads", "metrics", mode="before")(lambda cls, v: _as_list(v))
    v_entries = field_validator("datasets", "backends", mode="before")(lambda cls, v: _drop_disabled(v))

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
            raise Issue(f"must be a table like {{ backend = \"sparse\" }} or false, got {_tname(v)}: {v!r}")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v):
        from .registry import get_metric

        for i, m in enumerate(v):
            try:
                get_metric(m)
            except ElsaIndexError as exc:
                raise Issue(str(exc), at=(i,)) from None
        return v

    @model_validator(mode="after")
    def _finish(self):
        from .registry import get_metric

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
        try:
            _unique([d.name for d in self.datasets], "dataset names")
        except Issue as exc:
            raise Issue(str(exc), at=("datasets",)) from None
        try:
            _unique([b.label for b in self.backends], "backend labels (set 'label' to tell two entries apart)")
        except Issue as exc:
            raise Issue(str(exc), at=("backends",)) from None
        self._check_scale_refs()
        return self

    def _check_scale_refs(self) -> None:
        for d in self.datasets:
            if d.kind != "scale" or d.fit.dataset is None:
                continue
            src = next((x for x in self.datasets if x.name == d.fit.dataset), None)
            if src is None:
                raise Issue(f"dataset {d.name!r}: fit.dataset {d.fit.dataset!r} is not an enabled dataset of this config; "
                            f"expected one of {[x.name for x in self.datasets if x.kind == 'interactions']}")
            if src.kind != "interactions":
                raise Issue(f"dataset {d.name!r}: fit.dataset {src.name!r} must be interaction data, not {src.kind!r}")
            ck = next((c for c in src.checkpoints if c.name == d.fit.checkpoint), None)
            if ck is None:
                raise Issue(f"dataset {d.name!r}: fit.checkpoint {d.fit.checkpoint!r} is not a checkpoint of "
                            f"{src.name!r}; expected one of {[c.name for c in src.checkpoints]}")
            if ck.storage != "sparse":
                raise Issue(f"dataset {d.name!r}: fit.checkpoint {ck.name!r} must be sparse (Compressed ELSA)")

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


class Nested(ValueError):
    """A validation error of a nested schema, re-raised from a field validator."""

    def __init__(self, exc: ValidationError):
        super().__init__(str(exc))
        self.exc = exc


def _tname(v) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a float"}.get(type(v), type(v).__name__)
