"""What a config measures (elsa_index.eval.plan): grids, storage rules, unavailable backends."""

import pytest

import elsa_index.indexers as indexers
from elsa_index.eval.config import parse_config
from elsa_index.eval.plan import plan_runs, resolve_backends, size_label

from toy_backend import ToyBackend


class MissingToy(ToyBackend):
    """A backend whose dependency is not installed here."""

    name = "toy-missing"
    requires = ("elsa_no_such_module_xyz",)
    install_hint = 'pip install "toy-extra"'


RAW = {
    "k": 10, "queries": 5, "metrics": ["retrieval_recall@10"],
    "datasets": [{"name": "d", "data": {"source": "synthetic"},
                  "checkpoints": [{"name": "c", "train": {"kind": "compressed", "dims": 16, "nnz": 2}},
                                  {"name": "e", "train": {"kind": "elsa", "dims": 4}}]},
                 {"name": "s", "kind": "scale", "sizes": [1000, 20000], "fit": {"dataset": "d", "checkpoint": "c"}}],
    "backends": [{"name": "sparse", "search": {"batch_size": [8, 64]}}],
}


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(indexers, "BACKENDS", dict(indexers.BACKENDS))
    indexers.register_backend("toy-missing", "test_plan:MissingToy")
    return indexers


def test_unavailable_backends_are_skipped_with_a_reason(registry):
    cfg = parse_config({**RAW, "backends": [{"name": "sparse", "datasets": ["d"]},
                                            {"name": "toy-missing", "datasets": ["d"], "search": {"chunk": [1, 2]}}]})
    classes, reasons = resolve_backends(cfg)
    assert classes["toy-missing"] is None and "toy-extra" in reasons["toy-missing"]
    assert "elsa_no_such_module_xyz" in reasons["toy-missing"]
    # Still planned (counted as skipped by run_bench), so a later run measures them once installed.
    assert [r.backend.label for r in plan_runs(cfg, classes)] == ["sparse", "toy-missing", "toy-missing"]


def test_plan_follows_grids_storage_and_sizes():
    plan = plan_runs(parse_config(RAW))
    assert [(r.dataset, r.checkpoint, r.search) for r in plan] == [
        ("d", "c", {"batch_size": 8}), ("d", "c", {"batch_size": 64}),
        ("s-1k", "sparse", {"batch_size": 8}), ("s-1k", "sparse", {"batch_size": 64}),
        ("s-20k", "sparse", {"batch_size": 8}), ("s-20k", "sparse", {"batch_size": 64})]
    assert len({r.run_id for r in plan}) == 6 and len({r.build_id for r in plan}) == 3
    assert all(r.target == "elsa_index.indexers.sparse:ExactSparse" for r in plan)
    # Ids depend on what decides the numbers, not on labels or order.
    again = plan_runs(parse_config({**RAW, "backends": [{"name": "sparse", "label": "x",
                                                           "search": {"batch_size": [64, 8]}}]}))
    assert {r.run_id for r in again} == {r.run_id for r in plan}
    assert size_label(20000) == "20k" and size_label(1_000_000) == "1M" and size_label(1500) == "1500"
