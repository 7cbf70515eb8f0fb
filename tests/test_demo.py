"""Tests for elsa_index.demo: the real demo models on the smallest synthetic data, no benchmark."""

from __future__ import annotations

import pytest

from elsa_index import demo
from elsa_index.checkpoint import Checkpoint
from elsa_index.demo import DemoResult, bench_demo, run_demo
from elsa_index.errors import ElsaIndexError

NAMES = ["popularity", "elsa-256", "elsa-32", "compressed-1024-nnz16"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    said, seen = [], []
    res = run_demo(out, users=200, items=60, bench=False, progress=False, say=said.append, on_models=seen.append)
    return out, res, said, seen


def test_trains_saves_and_reports_every_model(demo_run):
    out, res, said, seen = demo_run
    assert isinstance(res, DemoResult) and res.out == out and res.bench is None
    assert [m.name for m in res.models] == NAMES
    assert seen == [res.models]  # handed over once, before serving
    pop = res.models[0]
    assert pop.nnz_per_item is None and pop.embedding_bytes == 0 and pop.checkpoint is None
    for m in res.models:
        assert set(m.metrics) == {"recall@20", "recall@50", "ndcg@100"}
        assert all(0.0 <= v <= 1.0 for v in m.metrics.values())
    dense, comp = Checkpoint.load(out / "elsa-256"), Checkpoint.load(out / "compressed-1024-nnz16")
    assert dense.dims == 256 and not dense.sparse and res.models[1].nnz_per_item == 256
    assert comp.dims == 1024 and (comp.nnz_per_row() == 16).all() and res.models[3].nnz_per_item == 16
    assert res.models[3].embedding_bytes == comp.nbytes() and res.models[3].checkpoint == out / "compressed-1024-nnz16"
    assert comp.metrics == res.models[3].metrics
    assert said[:2] == ["generating synthetic interactions: 200 users x 60 items ...",
                        "training on 160 users (" + said[1].split("(", 1)[1]]
    assert said[2:] == [f"training {n} ..." for n in NAMES[1:]]


def test_serves_a_held_out_user_from_the_sparse_index(demo_run):
    out, res, _, _ = demo_run
    assert res.index == out / "index-sparse" and (res.index / "index.json").is_file()
    assert res.user.startswith("u") and res.history
    assert len(res.recommended) == 5 and not set(res.recommended) & set(res.history)
    assert len(set(res.recommended)) == 5


def test_bench_demo_runs_the_packaged_quick_config(tmp_path, monkeypatch):
    from elsa_index.eval import harness

    calls = []

    def fake_run_bench(cfg, out, **kwargs):
        calls.append((cfg, out, kwargs))
        return {"skips": [], "report": str(out / "report.md")}

    monkeypatch.setattr(harness, "run_bench", fake_run_bench)
    res = bench_demo(tmp_path, progress=False)
    (cfg, out, kwargs), = calls
    assert out == tmp_path / "bench" and res["report"] == str(tmp_path / "bench" / "report.md")
    assert kwargs["force"] is True and kwargs["progress"] is False
    from pathlib import Path

    import elsa_index.eval
    from elsa_index.eval.config import load_config

    assert cfg == load_config(Path(elsa_index.eval.__file__).parent / "configs" / demo.QUICK_CONFIG)


@pytest.mark.parametrize("kwargs, message", [
    ({"users": 0}, r"users must be an integer >= 1, got 0"),
    ({"items": 2.5}, r"items must be an integer >= 1, got 2.5"),
])
def test_bad_sizes(tmp_path, kwargs, message):
    with pytest.raises(ElsaIndexError, match=message):
        run_demo(tmp_path / "d", bench=False, progress=False, **kwargs)
    assert not (tmp_path / "d").exists()
