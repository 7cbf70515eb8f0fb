"""The one Markdown table renderer of the harness's reports and studies."""

from __future__ import annotations

from typing import Sequence

__all__ = ["markdown_table"]


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
