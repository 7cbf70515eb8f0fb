"""Peak memory of a fresh process, and a minimal standalone timing loop.

Memory of an index is measured the way a serving process would see it: a
*fresh* Python process opens the index directory, serves the queries, and
reports its peak resident set size (``VmHWM`` from ``/proc/self/status``,
falling back to ``getrusage``'s ``ru_maxrss``). A second fresh process that
only imports the package gives the baseline; the index's memory is the
difference. Everything the backend loads counts, the JVM of Lucene (it runs
inside the process through pyjnius) and FAISS's native allocations included.

The child side is this module's command line (``python -m
elsa_index.eval.memprobe MODE ...``); the parent side is
:func:`baseline_rss`, :func:`serve_rss`, :func:`alloc_rss` and
:func:`standalone_latency`. Children run with BLAS/OpenMP pinned to one
thread and write their result as JSON to a file (stdout stays free for
whatever a library prints).

Modes::

    baseline                      import the package only
    alloc --mb N                  baseline plus an N-MB array, touched (a self-check)
    serve INDEX QUERIES --k K     open the backend directory INDEX, serve QUERIES (.npz)
    standalone INDEX QUERIES --k K --n N
                                  a bare timing loop, to cross-check the harness

A backend registered in the parent with
:func:`elsa_index.indexers.register_backend` is registered in the child too
(``--register NAME=module:Class``), and the child sees the parent's
``sys.path``, so that the module of the registered class imports there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from elsa_index.errors import ElsaIndexError, ProbeError
# Every mode imports the backend contract and the registry, the baseline included, so that the baseline's
# RSS holds all that a serving child holds except the one backend it serves (imported through the registry).
from elsa_index.indexers import get_backend, register_backend
from elsa_index.indexers.base import Backend

from .machine import proc_status_bytes

__all__ = [
    "peak_rss_bytes",
    "save_queries",
    "load_queries",
    "baseline_rss",
    "alloc_rss",
    "serve_rss",
    "standalone_latency",
    "ProbeError",
    "pinned_env",
]


# ---------------------------------------------------------------- measuring


def peak_rss_bytes() -> dict[str, int]:
    """This process's peak resident set size.

    Returns
    -------
    ``{"vmhwm": bytes or -1, "ru_maxrss": bytes, "peak": the best available}``;
    ``VmHWM`` is read from ``/proc/self/status`` (Linux), ``ru_maxrss`` is in
    KiB on Linux and bytes on macOS.
    """
    hwm = proc_status_bytes("/proc/self/status", "VmHWM") or -1
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ru = ru if sys.platform == "darwin" else ru * 1024
    return {"vmhwm": hwm, "ru_maxrss": int(ru), "peak": hwm if hwm > 0 else int(ru)}


def current_rss_bytes() -> int:
    """Current resident set size (``VmRSS``), or -1 where unavailable."""
    rss = proc_status_bytes("/proc/self/status", "VmRSS")
    return -1 if rss is None else rss


# ------------------------------------------------------------- query files


def save_queries(path: str | os.PathLike, queries, exclude: sp.spmatrix | None = None) -> Path:
    """Write query vectors (dense or CSR) and optional exclusions (CSR) to a pickle-free ``.npz``."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    if sp.issparse(queries):
        q = sp.csr_matrix(queries, dtype=np.float32)
        arrays.update(q_data=q.data, q_indices=q.indices.astype(np.int32), q_indptr=q.indptr.astype(np.int64),
                      q_shape=np.asarray(q.shape, np.int64))
    else:
        arrays["q_dense"] = np.ascontiguousarray(queries, dtype=np.float32)
    if exclude is not None:
        x = sp.csr_matrix(exclude)
        arrays.update(x_indices=x.indices.astype(np.int64), x_indptr=x.indptr.astype(np.int64),
                      x_shape=np.asarray(x.shape, np.int64))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_queries(path: str | os.PathLike):
    """Inverse of :func:`save_queries`: ``(queries, exclude or None)``."""
    with np.load(path, allow_pickle=False) as z:
        if "q_dense" in z.files:
            Q = z["q_dense"]
        else:
            Q = sp.csr_matrix((z["q_data"], z["q_indices"], z["q_indptr"]), shape=tuple(z["q_shape"]))
        X = None
        if "x_indptr" in z.files:
            idx = z["x_indices"]
            X = sp.csr_matrix((np.ones(len(idx), bool), idx, z["x_indptr"]), shape=tuple(z["x_shape"]))
    return Q, X


def split_rows(Q, X):
    """One-row slices of queries and exclusions (made before timing, so slicing is not timed)."""
    n = Q.shape[0]
    qs = [Q[r : r + 1] for r in range(n)]
    xs = [None if X is None else X[r : r + 1] for r in range(n)]
    return qs, xs


# ------------------------------------------------------------------ parent


def pinned_env(threads: int = 1) -> dict[str, str]:
    """The current environment with BLAS / OpenMP thread pools pinned."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("OPENAI_API_KEY", "unused")  # pyserini imports its OpenAI encoder eagerly
    return env


def _child_env() -> dict[str, str]:
    """Pinned thread pools, and the parent's import path (a registered backend's module may live on it)."""
    env = pinned_env(1)
    prefixes = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
    paths = [p for p in sys.path if p and os.path.isdir(p) and not os.path.realpath(p).startswith(prefixes)
             and os.path.basename(p.rstrip(os.sep)) not in ("site-packages", "dist-packages")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _register_args(register: dict[str, str] | None) -> list[str]:
    out: list[str] = []
    for name, target in (register or {}).items():
        out += ["--register", f"{name}={target}"]
    return out


def _run_children(arg_lists: list[list[str]], *, timeout: float) -> list[dict]:
    """Run one child per argument list, all at once, and return their results in order.

    Raises
    ------
    ProbeError
        A child failed or did not finish within ``timeout`` seconds (the others are stopped).
    """
    env = _child_env()
    with tempfile.TemporaryDirectory(prefix="elsa-probe-") as tmp:
        started = []
        try:
            for i, args in enumerate(arg_lists):
                result = Path(tmp) / f"result-{i}.json"
                cmd = [sys.executable, "-m", "elsa_index.eval.memprobe", *args, "--result", str(result)]
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                started.append((args[0], result, proc))
            deadline = time.monotonic() + timeout
            results = []
            for mode, result, proc in started:
                try:
                    stdout, stderr = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise ProbeError(f"probe {mode!r} did not finish within {timeout:.0f}s") from None
                if proc.returncode != 0 or not result.is_file():
                    tail = (stderr or stdout or "").strip().splitlines()[-8:]
                    raise ProbeError(f"probe {mode!r} failed (exit {proc.returncode}): " + " | ".join(tail))
                results.append(json.loads(result.read_text()))
            return results
        finally:
            for _, _, proc in started:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()


def _run_child(args: list[str], *, timeout: float) -> dict:
    return _run_children([args], timeout=timeout)[0]


def baseline_rss(*, repeats: int = 3, timeout: float = 120.0) -> int:
    """Peak RSS (bytes) of a fresh process that only imports the package; the minimum of ``repeats``.

    The ``repeats`` processes run at the same time: a process's peak RSS is its own (shared libraries count
    in each), so running them side by side changes nothing but the wall time.
    """
    return min(r["peak"] for r in _run_children([["baseline"]] * max(1, repeats), timeout=timeout))


def alloc_rss(mb: int, *, timeout: float = 120.0) -> int:
    """Peak RSS (bytes) of a fresh process that imports the package and fills an ``mb``-MB array."""
    return int(_run_child(["alloc", "--mb", str(int(mb))], timeout=timeout)["peak"])


def serve_rss(index_dir: str | os.PathLike, queries_file: str | os.PathLike, k: int, *,
              search_params: dict | None = None, register: dict[str, str] | None = None,
              timeout: float = 1800.0) -> dict:
    """Peak RSS of a fresh process that opens ``index_dir`` (a backend directory) and serves the queries.

    Parameters
    ----------
    register : backend name -> ``"module:Class"`` to register in the child before opening the index.

    Returns
    -------
    dict with ``peak`` (bytes), ``rss_after_import`` (the backend's module and
    its runtime imported), ``rss_after_load`` (the index opened),
    ``load_seconds``, ``serve_seconds``, ``n_queries``.
    """
    args = ["serve", str(index_dir), str(queries_file), "--k", str(int(k)),
            "--params", json.dumps(search_params or {}), *_register_args(register)]
    return _run_child(args, timeout=timeout)


def standalone_latency(index_dir: str | os.PathLike, queries_file: str | os.PathLike, k: int, *,
                       search_params: dict | None = None, n: int = 200, warmup: int = 20,
                       register: dict[str, str] | None = None, timeout: float = 1800.0) -> dict:
    """Time ``n`` single queries with a bare loop in a fresh process (the harness-overhead check).

    ``register``: as for :func:`serve_rss`.

    Returns
    -------
    dict with ``mean_ms`` (total wall time / n with no per-query timer, best
    of three passes), ``p50_ms`` (a further pass timed per query) and ``n``.
    """
    args = ["standalone", str(index_dir), str(queries_file), "--k", str(int(k)), "--n", str(int(n)),
            "--warmup", str(int(warmup)), "--params", json.dumps(search_params or {}), *_register_args(register)]
    return _run_child(args, timeout=timeout)


# ------------------------------------------------------------------- child


# A probe imports only the backend it serves (the registry imports lazily), so that
# one backend's runtime (numba for ``sparse``, faiss, the JVM) is not charged to another.
_OPEN_STATS: dict = {}


def _open(index_dir: str, params: dict):
    try:
        name = json.loads((Path(index_dir) / "backend.json").read_text()).get("backend")
    except (OSError, ValueError):
        name = None
    if name is not None:
        try:
            get_backend(name)  # import the backend's module (its runtime) before its arrays
        except Exception:  # noqa: BLE001 - Backend.load below reports the problem properly
            pass
    _OPEN_STATS["rss_after_import"] = current_rss_bytes()
    be = Backend.load(index_dir)
    if "threads" in be.search_params:
        params = {**params, "threads": 1}
    if params:
        be.set_search_params(**params)
    return be


def _child(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m elsa_index.eval.memprobe", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("baseline")
    p.add_argument("--result", required=True)
    p = sub.add_parser("alloc")
    p.add_argument("--mb", type=int, required=True)
    p.add_argument("--result", required=True)
    for name in ("serve", "standalone"):
        p = sub.add_parser(name)
        p.add_argument("index")
        p.add_argument("queries")
        p.add_argument("--k", type=int, required=True)
        p.add_argument("--params", default="{}")
        p.add_argument("--register", action="append", default=[], metavar="NAME=module:Class")
        p.add_argument("--result", required=True)
        if name == "standalone":
            p.add_argument("--n", type=int, default=200)
            p.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args(argv)
    for item in getattr(args, "register", []):
        name, _, target = item.partition("=")
        register_backend(name, target, replace=True)

    out: dict = {}
    if args.mode == "alloc":
        block = np.ones(args.mb * (1 << 20) // 8, dtype=np.float64)  # np.ones touches every page
        out["checksum"] = float(block[:: 4096].sum())
        del block
    elif args.mode == "serve":
        t0 = time.perf_counter()
        be = _open(args.index, json.loads(args.params))
        out["load_seconds"] = time.perf_counter() - t0
        out["rss_after_import"] = _OPEN_STATS.get("rss_after_import")
        out["rss_after_load"] = current_rss_bytes()
        Q, X = load_queries(args.queries)
        qs, xs = split_rows(Q, X)
        t0 = time.perf_counter()
        for q, x in zip(qs, xs):
            be.search(q, args.k, exclude=x)
        out["serve_seconds"] = time.perf_counter() - t0
        out["n_queries"] = len(qs)
    elif args.mode == "standalone":
        be = _open(args.index, json.loads(args.params))
        Q, X = load_queries(args.queries)
        qs, xs = split_rows(Q, X)
        n = min(args.n, len(qs))
        for i in range(min(args.warmup, len(qs))):
            be.search(qs[i], args.k, exclude=xs[i])
        total = None
        for _ in range(3):  # best of three passes: other load on the machine only adds time
            t0 = time.perf_counter_ns()
            for i in range(n):
                be.search(qs[i], args.k, exclude=xs[i])
            t = time.perf_counter_ns() - t0
            total = t if total is None else min(total, t)
        per = []
        for i in range(n):
            t = time.perf_counter_ns()
            be.search(qs[i], args.k, exclude=xs[i])
            per.append(time.perf_counter_ns() - t)
        out.update(mean_ms=total / max(n, 1) / 1e6, p50_ms=float(np.median(per)) / 1e6, n=n)
    out.update(peak_rss_bytes())
    Path(args.result).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_child())
