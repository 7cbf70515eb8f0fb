"""Argument checks shared by the public functions of every package.

Each raises the caller's error class with a message naming the parameter,
what was expected and what was received.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from .errors import ElsaIndexError

__all__ = ["check_int", "check_float", "check_k", "check_csr"]


def check_int(value: Any, name: str, low: int | None = None, high: int | None = None, *,
              allow_none: bool = False, error: Callable[[str], Exception] = ElsaIndexError,
              hint: str = "") -> int | None:
    """``value`` as an int in ``[low, high]`` (bools refused); ``None`` passes when ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise error(f"{name} must be an integer{_range(low, high)}, got {value!r}{hint}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise error(f"{name} must be an integer{_range(low, high)}, got {value!r}{hint}")
    return int(value)


def check_float(value: Any, name: str, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, allow_none: bool = False,
                error: Callable[[str], Exception] = ElsaIndexError) -> float | None:
    """``value`` as a finite float in ``[low, high]`` (open at ``low`` / ``high`` when ``low_open`` / ``high_open``)."""
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (low is None or (v > low if low_open else v >= low)) and (high is None or (v < high if high_open else v <= high))
    if not ok:
        lo = "" if low is None else (f" > {low}" if low_open else f" >= {low}")
        hi = "" if high is None else (f" < {high}" if high_open else f" <= {high}")
        joint = " and" if lo and hi else ""
        raise error(f"{name} must be a finite number{lo}{joint}{hi}, got {value!r}")
    return float(value)


def check_k(k: Any, name: str = "k", *, error: Callable[[str], Exception] = ElsaIndexError) -> int:
    """A result count: a positive integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise error(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def check_csr(m: Any, name: str, *, error: Callable[[str], Exception] = ElsaIndexError):
    """``m`` (any scipy sparse matrix) as a 2-D CSR matrix (users x items)."""
    if not sp.issparse(m):
        raise error(f"{name} must be a scipy sparse matrix (users x items), got {type(m).__name__}")
    if m.ndim != 2:
        raise error(f"{name} must be 2-D (users x items), got shape {m.shape}")
    return sp.csr_matrix(m)


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""
