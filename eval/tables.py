"""The one Markdown table renderer of the harness's reports and studies, and the formatting of their cells."""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["markdown_table", "fmt_value", "fmt_params"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> list[str]:
    """A GitHub-flavoured Markdown table, as lines.

    Parameters
    ----------
    header : column titles.
    rows : cells, one sequence per row (converted with ``str``).
    align : one character per column, ``"l"`` (left, the default) or ``"r"`` (right).

    Returns
    -------
    list of str: the header line, the separator line, one line per row.

    Raises
    ------
    ValueError
        ``align`` of another length than ``header``, or with letters other than ``l``/``r``.
    """
    align = align if align is not None else "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align must hold one of 'l'/'r' per column ({len(header)}), got {align!r}")
    sep = ["---:" if a == "r" else "---" for a in align]
    return (["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def fmt_value(v, kind: str = "") -> str:
    """A report cell: ``-`` for a missing or non-finite value, else formatted by ``kind`` (``bytes``, ``ms``,
    ``ratio``, ``qps``, ``s``, or a general number)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if kind == "bytes":
        v = float(v)
        for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if abs(v) >= div:
                return f"{v / div:.3g} {unit}"
        return f"{v:.0f} B"
    if kind == "ms":
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    if kind == "ratio":
        return f"{v:.3f}"
    if kind == "qps":
        return f"{v:,.0f}"
    if kind == "s":
        return f"{v:.4f}" if v < 0.01 else f"{v:.3g}" if v < 100 else f"{v:.0f}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def fmt_params(p: dict) -> str:
    """Parameters as ``k=v, ...``, or ``-`` for none."""
    return ", ".join(f"{k}={v}" for k, v in p.items()) or "-"
