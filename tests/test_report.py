"""The Markdown report (elsa_index.eval.report), its growth fit (elsa_index.eval.plots) and its one table renderer
(elsa_index.eval.tables)."""

import math

import pytest

from elsa_index.eval.config import parse_config
from elsa_index.eval.plots import fit_growth
from elsa_index.eval.report import scale_section
from elsa_index.eval.tables import markdown_table


def test_markdown_table_aligns_and_checks_its_alignment():
    assert markdown_table(["a", "b"], [[1, "x"]], "lr") == ["| a | b |", "| --- | ---: |", "| 1 | x |"]
    assert markdown_table(["a"], []) == ["| a |", "| --- |"]
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a", "b"], [], "l")


def test_growth_fit_recovers_a_power_law():
    b, a = fit_growth([10, 100, 1000], [2 * 10 ** 0.5, 2 * 100 ** 0.5, 2 * 1000 ** 0.5])
    assert b == pytest.approx(0.5) and math.exp(a) == pytest.approx(2.0)
    assert fit_growth([10], [1.0]) is None and fit_growth([10, 10], [1.0, 2.0]) is None


def _row(label, backend, size, p50, recall, search=None, storage="sparse"):
    return {"label": label, "backend": backend, "checkpoint": storage, "storage": storage, "size": size,
            "build": {}, "search": search or {}, "m": {"latency_p50": p50, "retrieval_recall@20": recall,
                                                        "bound_p50": 0.1}}


def test_scale_verdicts_come_from_the_backend_classes_and_the_config(tmp_path):
    raw = {"k": 20, "metrics": ["retrieval_recall@20"], "report": {"latency_target_ms": 3, "latency_goal_ms": 1},
           "datasets": [{"name": "s", "kind": "scale", "sizes": [100, 1000], "query_terms": 5,
                         "fit": {"path": str(tmp_path)}}], "backends": [{"name": "sparse"}]}
    (tmp_path / "manifest.json").write_text("{}")
    cfg = parse_config(raw)
    rows = [_row("sparse", "sparse", 100, 0.5, 1.0), _row("sparse", "sparse", 1000, 2.0, 1.0),
            _row("lucene", "lucene", 1000, 4.0, 0.999, {"depth": 100}),
            _row("lucene", "lucene", 1000, 3.0, 0.995, {"depth": 100, "query_terms": 32}),
            _row("flat", "faiss-flat", 1000, 1.0, 1.0, storage="dense")]
    text = "\n".join(scale_section(tmp_path, cfg, "s", rows, {}, ["retrieval_recall@20"], "retrieval_recall@20"))
    # exact (class attribute) on sparse checkpoints: the latency verdict against the config's targets
    assert "- Exact sparse backend at 1,000 items: p50 2.00 ms (target <= 3 ms: met; goal 1 ms: missed)" in text
    # approximate on sparse checkpoints: fastest tuned configuration, and the best without an optional parameter
    assert "- Lucene at 1,000 items, fastest configuration with retrieval_recall@20 >= 0.99: depth=100, query_terms=32" in text
    assert "- Lucene at 1,000 items without `query_terms`: depth=100, p50 4.00 ms" in text
    assert "Exact flat" not in text  # dense-only backends get no sparse verdict
