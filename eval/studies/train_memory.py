"""Peak memory and time of training steps, one fresh process per model configuration.

Each configuration (a model kind and its parameters as JSON) trains for one epoch on the first ``--users``
training users of a dataset (unless the configuration sets ``epochs``; all items kept, so the model's state is the full catalogue's), in a process of
its own. The peak resident memory is read from ``/proc/self/status`` (VmHWM) after the kernel's high-water
mark was reset once the data was loaded (``/proc/self/clear_refs``), so it counts what training adds: the
model state, the optimiser, the batch's activations. Prints one JSON object: per configuration the peak above
the loaded baseline (MB), seconds per step, and the ratio of the peak to the first configuration's.

    python -m elsa_index.eval.studies.train_memory --data amazon-book.parquet --split-col split --users 8192 \\
        --config '{"kind": "elsa", "dims": 1024, "batch_size": 1024, "n_negatives": 4096}' \\
        --config '{"kind": "compressed", "dims": 1024, "nnz": 32, "start_nnz": 48, "batch_size": 1024, \\
                   "n_negatives": 4096}'

A configuration may set ``"fused_outputs": true`` or ``false`` to force the chunked output path on or off
(default: decided by size, see :data:`elsa_index.models.elsa.FUSED_OUTPUT_FLOATS`). Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _child(args) -> dict:
    """Runs in the fresh process: load, reset the high-water mark, train one epoch, report."""
    import torch

    from elsa_index.workflow import DataSpec, load_split, make_model

    torch.set_num_threads(args.threads)
    spec = DataSpec(source=args.data, split_col=args.split_col, rating_col=args.rating_col,
                    min_rating=args.min_rating)
    X = load_split(spec).train.matrix[: args.users]
    cfg = json.loads(args.child)
    kind = cfg.pop("kind", "elsa")
    fused = cfg.pop("fused_outputs", None)
    model = make_model(kind, **{"epochs": 1, **cfg, "progress": False})
    if fused is not None:
        model._fused_outputs = bool(fused)
    base = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    model.fit(X)
    secs = time.perf_counter() - t0
    steps = -(-X.shape[0] // int(model.batch_size))
    return {"peak_mb": round((_status_kb("VmHWM") - base) / 1024, 1), "seconds_per_step": round(secs / steps, 3),
            "steps": steps, "items": int(X.shape[1]), "outputs": model.n_outputs_}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="interactions (Parquet/CSV path or dataset name)")
    ap.add_argument("--split-col", default=None, help="column of a shipped train/test split (train rows are used)")
    ap.add_argument("--rating-col", default=None)
    ap.add_argument("--min-rating", type=float, default=None)
    ap.add_argument("--users", type=int, default=8192, help="training users in the epoch (default 8192)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--config", action="append", default=[], help="model kind and parameters as JSON, repeatable")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(_child(args)))
        return 0
    if not args.config:
        ap.error("give at least one --config")
    rows = []
    for cfg in args.config:
        try:  # a bad configuration fails here, not in the child
            if not isinstance(json.loads(cfg), dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise SystemExit(f"--config {cfg!r}: expected a JSON object of model settings ({exc})") from None
        cmd = [sys.executable, "-m", "elsa_index.eval.studies.train_memory", "--data", args.data,
               "--users", str(args.users), "--threads", str(args.threads), "--child", cfg]
        for flag, value in (("--split-col", args.split_col), ("--rating-col", args.rating_col),
                            ("--min-rating", args.min_rating)):
            if value is not None:
                cmd += [flag, str(value)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"configuration {cfg} failed:\n{out.stderr[-2000:]}")
        rows.append({"config": json.loads(cfg), **json.loads(out.stdout.strip().splitlines()[-1])})
    for r in rows:
        r["peak_ratio_to_first"] = round(r["peak_mb"] / rows[0]["peak_mb"], 3) if rows[0]["peak_mb"] > 0 else None
    print(json.dumps({"data": args.data, "users": args.users, "threads": args.threads, "configs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
