"""The dataset and checkpoint tables of a benchmark configuration (pydantic models).

An ``interactions`` dataset names its data (the fields of :class:`elsa_index.workflow.DataSpec`) and the
checkpoints to train or load; a ``scale`` dataset draws synthetic catalogues whose statistics are fitted from
a sparse checkpoint. See :mod:`elsa_index.eval.config` for the keys.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel, Discriminator, Field, PrivateAttr, Tag, ValidationError, create_model, field_validator, model_validator,
)

from elsa_index.errors import ConfigError, ElsaIndexError
from elsa_index.workflow import DataSpec, make_model

from .schema_base import (
    Issue, Nested, NonNegInt, PosInt, Schema, as_list, check_name, drop_disabled, expand_env, optional_path, type_name, unique,
)

__all__ = ["DatasetSpec", "InteractionsDataset", "ScaleDataset", "FitSpec", "CheckpointSpec", "DATASET_KINDS"]

_MODEL_KINDS = {"elsa": "dense", "dense": "dense", "compressed_elsa": "sparse", "compressed": "sparse"}


@functools.lru_cache(maxsize=1)
def _data_model() -> type[BaseModel]:
    """A schema with the fields (names, types, defaults) of :class:`elsa_index.workflow.DataSpec`."""
    hints = typing.get_type_hints(DataSpec)
    spec = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(DataSpec)}
    spec["source"] = (str, ...)
    return create_model("DataTable", __base__=Schema, **spec)


class CheckpointSpec(Schema):
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

    v_name = field_validator("name")(lambda cls, v: check_name(v))

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
                raise Issue(f"must be a scalar model parameter, got {type_name(x)}", at=(k,))
        try:  # constructor and range checks, cheap: no data needed
            make_model(kind, **{k: x for k, x in v.items() if k != "kind"})
        except ElsaIndexError as exc:
            raise Issue(str(exc)) from None
        return dict(v)

    v_path = field_validator("path")(lambda cls, v: optional_path(v))

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


class _DatasetBase(Schema):
    name: str
    queries: Optional[PosInt] = None
    measure: bool = True
    enabled: bool = True

    v_name = field_validator("name")(lambda cls, v: check_name(v))

    def checkpoint(self, name: str) -> CheckpointSpec:
        """The checkpoint called ``name``."""
        for c in self.checkpoints:
            if c.name == name:
                return c
        raise ConfigError(f"dataset {self.name!r} has no checkpoint {name!r}; it has {[c.name for c in self.checkpoints]}")


#: data settings added after the first stored results, with their defaults (see ``InteractionsDataset.data_key``)
_LATER_DATA_SETTINGS = {"train_value": "train", "test_value": "test"}


class InteractionsDataset(_DatasetBase):
    """Interaction data: the held-out users are the queries."""

    kind: Literal["interactions"] = "interactions"
    data: Any
    checkpoints: list[Optional[CheckpointSpec]]
    use_checkpoints: Optional[list[str]] = None

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, v):
        if isinstance(v, DataSpec):
            return v
        if not isinstance(v, dict):
            raise Issue(f"must be a table of elsa_index.workflow.DataSpec fields, got {type_name(v)}")
        try:
            table = _data_model().model_validate(v)
        except ValidationError as exc:
            raise Nested(exc) from None
        fields = table.model_dump()
        try:
            fields["source"] = expand_env(fields["source"])
        except Issue as exc:
            raise Issue(str(exc), at=("source",)) from None
        return DataSpec(**fields)

    v_checkpoints = field_validator("checkpoints", mode="before")(lambda cls, v: drop_disabled(v))
    v_use_checkpoints = field_validator("use_checkpoints", mode="before")(lambda cls, v: as_list(v))

    @model_validator(mode="after")
    def _checkpoints(self):
        names = [c.name for c in self.checkpoints if c is not None]
        self.checkpoints = [c for c in self.checkpoints if c is not None]
        if not self.checkpoints:
            raise Issue("must list at least one [[datasets.checkpoints]] table", at=("checkpoints",))
        unique(names, "names", at=("checkpoints",))
        if self.use_checkpoints is not None:
            keep = self.use_checkpoints
            self.checkpoints = [c for c in self.checkpoints if any(fnmatch.fnmatchcase(c.name, p) for p in keep)]
            if not self.checkpoints:
                raise Issue(f"{keep} matches none of the checkpoints {names}", at=("use_checkpoints",))
        return self

    def data_key(self) -> dict:
        """The data settings that identify the dataset's content (for run ids and cached checkpoints).

        Settings added to the data table after results were first stored enter only when set away from their
        defaults, so that the ids of earlier runs and the cached checkpoints stay valid.
        """
        data = self.data.to_dict()
        for name, default in _LATER_DATA_SETTINGS.items():
            if data.get(name) == default:
                data.pop(name)
        return data

    def key(self) -> dict:
        """What identifies the dataset's content (for run ids)."""
        return {"name": self.name, "kind": self.kind, "data": self.data_key()}


class FitSpec(Schema):
    """Where a scale dataset's statistics come from: a checkpoint of this config, or a directory."""

    dataset: Optional[str] = None
    checkpoint: Optional[str] = None
    path: Optional[str] = None

    v_path = field_validator("path")(lambda cls, v: optional_path(v))

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

    v_sizes = field_validator("sizes", "extrapolate", mode="before")(lambda cls, v: as_list(v))

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
