"""Where a benchmark's results live on disk, and reading them back.

Used by the harness (writing) and the report (reading); neither imports the
other. Per configuration: ``runs/<dataset>/<run id>.json`` (its numbers and
description) and ``.parquet`` (raw per-query results: latency, ids, scores,
exact scores of the returned ids, bytes the query must read); per query set:
``queries/<dataset>/<checkpoint>/reference.npz`` (exact top-K, held-out
targets, posting bytes); per built index: ``indexes/<dataset>/<checkpoint>/
<label>-<build id>`` and its ``.json`` build record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from elsa_index._io import write_json  # the package's one JSON writer (numpy scalars and arrays converted)

from .registry import RunData

__all__ = ["run_paths", "index_paths", "is_done", "write_run", "load_run_data", "save_reference", "load_reference",
           "index_rss", "read_json", "write_json"]


def read_json(path: Path, default=None):
    """A JSON file's content, or ``default`` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def run_paths(out: Path, spec) -> tuple[Path, Path]:
    """``(record .json, raw results .parquet)`` of a configuration."""
    base = Path(out) / "runs" / spec.dataset / spec.run_id
    return base.with_suffix(".json"), base.with_suffix(".parquet")


def index_paths(out: Path, spec) -> tuple[Path, Path]:
    """``(index directory, build record .json)`` of a configuration's build parameters."""
    base = Path(out) / "indexes" / spec.dataset / spec.checkpoint / f"{spec.backend.label}-{spec.build_id[:10]}"
    return base, base.with_name(base.name + ".json")


def is_done(out: Path, spec) -> bool:
    """Whether a configuration is stored complete (record with status ``done`` and raw results)."""
    js, pq = run_paths(out, spec)
    if not (js.is_file() and pq.is_file()):
        return False
    return (read_json(js, {}) or {}).get("status") == "done"


def write_run(out: Path, spec, meta: dict, ids, scores, true_scores, latency_ns, touched=None) -> None:
    """Store one configuration: raw per-query results (Parquet) first, then its record (JSON), each atomically.

    Parameters
    ----------
    ids : int64 (n, k); scores : float32 (n, k); true_scores : float64 (n, k).
    latency_ns : int64 (n,).
    touched : float64 (n,) bytes each query must read (the backend's cost model), or None.
    """
    js, pqp = run_paths(out, spec)
    js.parent.mkdir(parents=True, exist_ok=True)
    n, k = ids.shape

    def fixed(a, typ):
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).ravel(), type=typ), k)

    cols = {
        "query": pa.array(np.arange(n, dtype=np.int32)),
        "latency_ns": pa.array(np.asarray(latency_ns, np.int64)),
        "ids": fixed(ids.astype(np.int64), pa.int64()),
        "scores": fixed(scores.astype(np.float32), pa.float32()),
        "true_scores": fixed(true_scores.astype(np.float64), pa.float64()),
    }
    if touched is not None:
        cols["touched_bytes"] = pa.array(np.asarray(touched, np.float64))
    tmp = pqp.with_name(pqp.name + ".tmp")
    pq.write_table(pa.table(cols), tmp)
    os.replace(tmp, pqp)
    tmpj = js.with_name(js.name + ".tmp")
    write_json(tmpj, meta)
    os.replace(tmpj, js)


def _read_matrix(table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    k = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, k)


def load_run_data(out: str | os.PathLike, run: dict, *, bandwidth: float | None = None) -> RunData:
    """The raw results of a stored run (its JSON record), ready for the metric registry.

    Raises
    ------
    OSError
        The raw results or the query set's reference are missing.
    """
    out = Path(out)
    table = pq.read_table(out / "runs" / run["dataset"] / f"{run['run_id']}.parquet")
    ref = load_reference(out / "queries" / run["dataset"] / run["checkpoint"])
    if "touched_bytes" in table.column_names:
        touched_arr = table.column("touched_bytes").to_numpy()
    elif str(run.get("touched_model", "")).startswith("postings") and ref.get("posting_bytes") is not None:
        touched_arr = ref["posting_bytes"]  # runs stored before the per-query column existed
    elif run.get("touched_bytes_p50") is not None:
        touched_arr = np.full(table.num_rows, float(run["touched_bytes_p50"]))
    else:
        touched_arr = None
    return RunData(
        ids=_read_matrix(table, "ids"), true_scores=_read_matrix(table, "true_scores"),
        exact_scores=ref["exact_scores"], latency_ns=table.column("latency_ns").to_numpy(),
        targets=ref.get("targets"), touched_bytes=touched_arr, bandwidth=bandwidth,
        scalars={**{k: run.get(k) for k in ("build_seconds", "bytes_on_disk", "peak_rss_bytes", "qps")},
                 "index_rss_bytes": index_rss(run.get("memory"))},
    )


def save_reference(qdir: Path, ids, scores, rows, targets, posting) -> None:
    """Store a query set's exact top-K, the query rows, held-out targets and posting bytes (``reference.npz``)."""
    arrays = {"exact_ids": ids, "exact_scores": scores, "rows": np.asarray(rows, np.int64)}
    if targets is not None:
        t = sp.csr_matrix(targets)
        arrays.update(t_indices=t.indices.astype(np.int64), t_indptr=t.indptr.astype(np.int64),
                      t_shape=np.asarray(t.shape, np.int64))
    if posting is not None:
        arrays["posting_bytes"] = np.asarray(posting, np.float64)
    np.savez(Path(qdir) / "reference.npz", **arrays)


def load_reference(qdir: Path) -> dict:
    """Inverse of :func:`save_reference`: ``exact_ids``, ``exact_scores``, ``rows``, ``targets`` (CSR or None),
    ``posting_bytes`` (or None)."""
    with np.load(Path(qdir) / "reference.npz", allow_pickle=False) as z:
        out = {"exact_ids": z["exact_ids"], "exact_scores": z["exact_scores"], "rows": z["rows"],
               "posting_bytes": z["posting_bytes"] if "posting_bytes" in z.files else None, "targets": None}
        if "t_indptr" in z.files:
            idx = z["t_indices"]
            out["targets"] = sp.csr_matrix((np.ones(len(idx), np.float32), idx, z["t_indptr"]), shape=tuple(z["t_shape"]))
    return out


def index_rss(mem: dict | None) -> int | None:
    """Resident bytes the opened index adds on top of its runtime (after open - after import)."""
    if not mem or mem.get("loaded_rss_bytes") is None or mem.get("runtime_rss_bytes") is None:
        return None
    return int(mem["loaded_rss_bytes"] - mem["runtime_rss_bytes"])
