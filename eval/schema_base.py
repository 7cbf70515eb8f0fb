"""Shared pieces of the benchmark configuration schema: the :class:`Issue` a validator raises, the strict base
model every table of the schema derives from, and small value checks.

Used by :mod:`~elsa_index.eval.schema_datasets` (datasets, checkpoints) and :mod:`~elsa_index.eval.schema`
(backends, the whole configuration).
"""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["Issue", "Nested", "PosInt", "NonNegInt", "Schema", "as_list", "expand_env", "optional_path", "check_name",
           "drop_disabled", "unique", "type_name"]


class Issue(ValueError):
    """A validation problem at ``at`` below the field being validated (joined to its location)."""

    def __init__(self, message: str, *, at: tuple = ()):
        super().__init__(message)
        self.at = tuple(at)


class Nested(ValueError):
    """A validation error of a nested schema, re-raised from a field validator."""

    def __init__(self, exc: ValidationError):
        super().__init__(str(exc))
        self.exc = exc


PosInt = Annotated[int, Field(ge=1)]


NonNegInt = Annotated[int, Field(ge=0)]


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def as_list(v):
    """A lone scalar as a one-element list (TOML lets a user write ``sizes = 100``)."""
    return [v] if isinstance(v, (int, str)) and not isinstance(v, bool) else v


def expand_env(s: str) -> str:
    """``s`` with environment variables expanded; an :class:`Issue` naming any that are not set."""
    out = os.path.expandvars(s)
    missing = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", out)
    if missing:
        raise Issue(f"uses the environment variable(s) {missing}, which are not set (value {s!r}); "
                    "set them, e.g. ELSA_INDEX_DATA=/path/to/data")
    return out


def optional_path(v: str | None) -> str | None:
    """A ``path`` field: None, or the path with its environment variables expanded."""
    return None if v is None else expand_env(v)


def check_name(v: str) -> str:
    """``v`` when it is a simple name (an entry's name or label), else an :class:`Issue`."""
    if not _NAME.fullmatch(v):
        raise Issue(f"must be a simple name (letters, digits, '.', '_', '+', '-'), got {v!r}")
    return v


def drop_disabled(v):
    """Disabled entries become None (dropped after validation, so that error indexes match the file)."""
    if isinstance(v, list):
        return [None if isinstance(x, dict) and x.get("enabled", True) is False else x for x in v]
    return v


def unique(names: list[str], what: str, *, at: tuple = ()) -> None:
    """An :class:`Issue` at ``at`` listing the names that occur more than once."""
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise Issue(f"{what} must be unique; repeated: {dup}", at=at)


def type_name(v) -> str:
    """How an error names the TOML type of ``v`` (``a table``, ``an array``, ...)."""
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a float"}.get(type(v), type(v).__name__)


class Schema(BaseModel):
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
