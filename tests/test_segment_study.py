"""The segments study (``python -m elsa_index.eval.studies.segments``) end to end on a tiny ML-1M-shaped folder."""

import json

import numpy as np
import pytest

from elsa_index.eval.studies import segments as study

GENRES = ["Comedy", "Drama", "Action", "Horror"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """``ml-1m.parquet`` (ratings) and ``ml-1m.items.parquet`` (titles, genres): 4 taste groups of 15 items."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("tiny-ml")
    rng = np.random.default_rng(0)
    users, items, ratings = [], [], []
    for u in range(120):
        group = u % 4
        liked = rng.choice(np.arange(group, 60, 4), size=8, replace=False)
        other = rng.choice(60, size=2, replace=False)
        for i in np.concatenate([liked, other]):
            users.append(u), items.append(int(i)), ratings.append(5 if i % 4 == group else 2)
    pq.write_table(pa.table({"user_id": users, "item_id": items, "rating": ratings}), root / "ml-1m.parquet")
    pq.write_table(pa.table({"item_id": list(range(60)), "title": [f"Film {i} (1999)" for i in range(60)],
                             "genres": [GENRES[i % 4] for i in range(60)]}), root / "ml-1m.items.parquet")
    return root


def test_study_writes_the_report(data_dir, tmp_path):
    from elsa_index.workflow import load_split, make_model, train_checkpoint

    split = load_split(study.data_spec(data_dir, heldout_users=30))
    model = make_model("compressed", progress=False, dims=32, nnz=4, epochs=2, lr=0.05, warmup_epochs=0,
                       finetune_epochs=1, prune_steps=2)
    train_checkpoint(model, split).save(tmp_path / "ckpt")
    out = tmp_path / "results"
    assert study.main(["--data-dir", str(data_dir), "--checkpoint", str(tmp_path / "ckpt"), "--heldout-users", "30",
                       "--merge-to", "4", "--random-seeds", "2", "--out", str(out)]) == 0
    res = json.loads((out / "segments.json").read_text())
    assert list(res["levels"]) == ["no merging", "merge to 4"]
    level = res["levels"]["merge to 4"]
    assert level["n_segments"] == 4 and sum(s["size"] for s in level["segments"]) == res["data"]["items"]
    hit = level["hit"]["segment rows"]
    assert 0 <= hit["hit_rate"] <= 1 and hit["items_shown"] <= study.ROWS * study.K
    text = (out / "segments.md").read_text()
    assert "python -m elsa_index.eval.studies.segments" in text and "## Coherence with genres" in text


def test_study_needs_item_metadata(tmp_path):
    with pytest.raises(SystemExit, match="item metadata not found"):
        study.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])
