"""Estimate-before-allocate: refuse a request whose arrays cannot fit in memory.

A user-given size (``--k``, ``--dims``, an HNSW ``M``, the shape declared by
a ``.npz`` file) can ask for terabytes. Allocating first ends in a
``MemoryError`` at best, and with memory overcommit in the kernel's OOM
killer at worst, so the callers estimate the bytes a request needs and call
:func:`check_fits`, which raises the caller's error class naming the
parameter, the estimate and what the machine has.
"""

from __future__ import annotations

import os
from typing import Callable

from .errors import ElsaIndexError

__all__ = ["available_bytes", "check_fits", "format_bytes"]


def available_bytes() -> int:
    """Memory this process can still get: ``MemAvailable`` (Linux), else free physical pages, else total.

    Returns a large number when nothing can be read (the check then only
    refuses impossible sizes; allocation errors are still caught by the CLI).
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for name in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            pages, size = os.sysconf(name), os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            continue
        if pages > 0 and size > 0:
            return int(pages) * int(size)
    return 1 << 50


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``'745.1 GiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_fits(nbytes: float, what: str, *, error: Callable[[str], Exception] = ElsaIndexError,
               hint: str = "", fraction: float = 0.9) -> None:
    """Raise ``error`` when ``nbytes`` exceed ``fraction`` of :func:`available_bytes`.

    ``what`` names the request and the parameter responsible, e.g.
    ``"--k 100000000000 (1000 users x k results)"``.
    """
    avail = available_bytes()
    if nbytes > fraction * avail:
        raise error(f"{what} needs about {format_bytes(nbytes)} of memory but only {format_bytes(avail)} is "
                    f"available{'; ' + hint if hint else ''}")
