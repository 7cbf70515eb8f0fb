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


def _scale_cfg(tmp_path, **report):
    raw = {"k": 20, "metrics": ["retrieval_recall@20"], "report": report,
           "datasets": [{"name": "s", "kind": "scale", "sizes": [100, 1000, 10000], "query_terms": 5,
                         "fit": {"path": str(tmp_path)}}], "backends": [{"name": "sparse"}]}
    (tmp_path / "manifest.json").write_text("{}")
    return parse_config(raw)


def test_equal_recall_table_ranks_backends_per_level_and_marks_the_ones_that_miss(tmp_path):
    cfg = _scale_cfg(tmp_path, recall_levels=[0.95, 0.99])
    rows = [_row("sparse", "sparse", 1000, 2.0, 1.0),
            _row("lucene", "lucene", 1000, 1.0, 0.96, {"depth": 100}),
            _row("lucene", "lucene", 1000, 3.0, 0.995, {"depth": 500}),
            _row("ivf", "faiss-ivf", 1000, 0.5, 0.90, {"nprobe": 4}, storage="dense")]
    lines = scale_section(tmp_path, cfg, "s", rows, {}, ["retrieval_recall@20"], "retrieval_recall@20")
    table = [ln for ln in lines if ln.startswith("| 1,000 | 0.9")]
    at95 = [ln for ln in table if ln.startswith("| 1,000 | 0.95 |")]
    at99 = [ln for ln in table if ln.startswith("| 1,000 | 0.99 |")]
    # at 0.95 lucene's depth=100 is the fastest, the exact backend is 2x it; IVF never reaches it
    assert "| lucene | sparse | depth=100 |" in at95[0] and "| 1.000x |" in at95[0]
    assert "| sparse | sparse |" in at95[1] and "| 2.000x |" in at95[1]
    assert "| ivf | dense | nprobe=4 |" in at95[2] and "not reached" in at95[2]
    # at 0.99 only depth=500 counts for lucene, now slower than exact
    assert "| sparse | sparse |" in at99[0] and "| lucene | sparse | depth=500 |" in at99[1] and "1.500x" in at99[1]


def test_sizes_measured_for_some_backends_only_are_compared_with_the_others_growth(tmp_path):
    cfg = _scale_cfg(tmp_path)
    rows = [_row("sparse", "sparse", n, p, 1.0) for n, p in ((100, 0.1), (1000, 0.2), (10000, 0.4))]
    rows += [_row("hnsw", "faiss-hnsw", n, p, 0.995, {"ef_search": 64}, storage="dense")
             for n, p in ((100, 0.05), (1000, 0.5))]  # p50 grows 10x per decade: 5 ms extrapolated at 10,000
    for r in rows:
        r["m"]["build_seconds"] = 1.0 if r["label"] == "sparse" else r["size"] / 10
    text = "\n".join(scale_section(tmp_path, cfg, "s", rows, {}, ["retrieval_recall@20"], "retrieval_recall@20"))
    line = next(ln for ln in text.splitlines() if ln.startswith("- 10,000 items, sparse"))
    assert "hnsw extrapolated from 100-1,000 items" in line
    assert "p50 0.4 ms measured vs 5 ms extrapolated (**sparse** 12.5x lower)" in line
    assert "build 1 s measured vs 1000 s extrapolated (**sparse** 1000.0x lower)" in line
    assert "- 1,000 items, sparse" not in text.split("Sizes measured for some backends only")[1]
