"""One-off studies (elsa_index.eval.studies): each runs end to end on tiny data."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from elsa_index.eval.studies import accuracy


def test_accuracy_study_runs_on_a_tiny_parquet(tmp_path):
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1100), 8)  # the ML-1M protocol holds out 1,000 users with >= 5 positives
    items = (np.arange(len(users)) * 7 + rng.integers(0, 3, len(users))) % 60
    pq.write_table(pa.table({"user_id": [f"u{u}" for u in users], "item_id": [f"i{i}" for i in items],
                             "rating": rng.integers(4, 6, len(users)).astype(np.float64)}),
                   tmp_path / "ml-1m.parquet")
    out = tmp_path / "out"
    argv = ["--data-dir", str(tmp_path), "--datasets", "ml-1m", "--out", str(out), "--quick", "--only", "popularity",
            "EASE"]
    assert accuracy.main(argv) == 0
    res = json.loads((out / "accuracy.json").read_text())
    runs = res["datasets"]["ml-1m"]
    assert set(runs) == {"popularity", "EASE l2=300"}
    assert all(0 <= r["metrics"]["recall@20"] <= 1 for r in runs.values())
    md = (out / "accuracy.md").read_text()
    assert "| model | floats/item | recall@20 |" in md and "| popularity |" in md
    # Resumes without re-running, and re-renders from the JSON alone.
    (out / "accuracy.md").unlink()
    assert accuracy.main(["--out", str(out), "--render-only"]) == 0
    assert (out / "accuracy.md").read_text() == md
