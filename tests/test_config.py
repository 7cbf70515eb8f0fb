"""Benchmark configs (elsa_index.eval.config / schema): parsing, clear errors, shipped configs, stable run ids."""

import copy
import json
from pathlib import Path

import pytest

from elsa_index.cli import main
from elsa_index.eval.config import ConfigError, expand_grid, load_config, parse_config
from elsa_index.eval.plan import plan_runs

CONFIGS = Path(__file__).parent.parent / "eval" / "configs"
RESULTS = Path(__file__).parent.parent / "eval" / "results"


GOOD = {
    "k": 10, "queries": 5, "metrics": ["retrieval_recall@10"],
    "datasets": [{"name": "d", "data": {"source": "synthetic"},
                  "checkpoints": [{"name": "c", "train": {"kind": "compressed", "dims": 16, "nnz": 2}}]}],
    "backends": [{"name": "sparse"}],
}


def _with(path, value):
    cfg = copy.deepcopy(GOOD)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return cfg


_DELETE = object()


@pytest.mark.parametrize("path,value,words", [
    (("datasets",), _DELETE, ["datasets", "required"]),
    (("k",), "ten", ["k", "integer", "'ten'"]),
    (("threads",), [0], ["threads", ">= 1"]),
    (("querys",), 5, ["unknown key", "querys"]),
    (("memory_probe",), "sometimes", ["memory_probe", "build"]),
    (("metrics",), ["recal@20"], ["metrics", "recal@20"]),
    (("metrics",), ["retrieval_recall@50"], ["retrieval_recall@50", "k = 10"]),
    (("backends", 0, "name"), "nope", ["backends[0].name", "nope"]),
    (("backends", 0, "search"), {"batch_size": {"a": 1}}, ["backends[0].search.batch_size", "scalars"]),
    (("backends", 0, "search"), {"threads": [1, 2]}, ["threads"]),
    (("backends", 0, "search"), {"batch_sise": 3}, ["backends[0]", "batch_sise"]),
    (("backends", 0, "search"), {"batch_size": []}, ["batch_size", "empty"]),
    (("datasets", 0, "data", "source"), 3, ["datasets[0].data.source", "string"]),
    (("datasets", 0, "data", "n_heldout_users"), "many", ["n_heldout_users", "integer"]),
    (("datasets", 0, "data", "colour"), "red", ["datasets[0].data", "colour"]),
    (("datasets", 0, "data", "source"), "${ELSA_TEST_UNSET_VAR}/x.parquet", ["ELSA_TEST_UNSET_VAR", "not set"]),
    (("datasets", 0, "checkpoints", 0, "path"), "somewhere", ["datasets[0].checkpoints[0]", "exactly one"]),
    (("datasets", 0, "checkpoints", 0, "train", "kind"), "svd", ["train.kind", "svd"]),
    (("datasets", 0, "checkpoints", 0, "train", "nnz"), -1, ["train", "nnz"]),
    (("datasets", 0, "kind"), "scale", ["datasets[0].sizes", "required"]),
])
def test_malformed_configs_get_clear_errors(path, value, words):
    with pytest.raises(ConfigError) as info:
        cfg = parse_config(_with(path, value))
        plan_runs(cfg)
    msg = str(info.value)
    for w in words:
        assert w in msg, msg


def test_scale_fit_must_reference_a_sparse_checkpoint():
    cfg = _with(("datasets",), GOOD["datasets"] + [
        {"name": "s", "kind": "scale", "sizes": [100], "fit": {"dataset": "d", "checkpoint": "zzz"}}])
    with pytest.raises(ConfigError, match="fit.checkpoint 'zzz'"):
        parse_config(cfg)
    cfg["datasets"][1]["fit"] = {"dataset": "nope", "checkpoint": "c"}
    with pytest.raises(ConfigError, match="fit.dataset 'nope'"):
        parse_config(cfg)


@pytest.mark.parametrize("text, error", [("k = [\n", "cfg.toml is not valid TOML"), (None, "config not found: .*cfg.toml")])
def test_config_files_errors_name_the_file(tmp_path, text, error):
    """A broken and a missing file: the error names it, and the CLI exits with status 2."""
    path = tmp_path / "cfg.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_config(path)
    assert main(["bench", str(path), "--out", str(tmp_path / "o")]) == 2

def test_errors_name_the_location_and_the_expected_value():
    cfg = _with(("backends",), [{"name": "sparse"}, {"name": "sparse", "label": "b"},
                                {"name": "sparse", "label": "c", "search": {"batch_size": [8, {"x": 1}]}}])
    with pytest.raises(ConfigError, match=r"^backends\[2\]\.search\.batch_size: must hold scalars"):
        parse_config(cfg)
    with pytest.raises(ConfigError, match=r"^datasets\[0\]\.queries: must be >= 1, got 0"):
        parse_config(_with(("datasets", 0, "queries"), 0))
    with pytest.raises(ConfigError, match=r"^recall_target: must be <= 1"):
        parse_config(_with(("recall_target",), 2))
    with pytest.raises(ConfigError, match=r"^datasets\[0\]: kind must be one of 'interactions', 'scale', got 'graph'"):
        parse_config(_with(("datasets", 0, "kind"), "graph"))
    with pytest.raises(ConfigError, match=r"^report\.latency_goal_ms: must be a number, got a string"):
        parse_config(_with(("report",), {"latency_goal_ms": "fast"}))


def test_disabled_entries_are_dropped_and_quick_overrides_merge():
    raw = _with(("backends",), [{"name": "sparse", "search": {"batch_size": [8, 64]}},
                                {"name": "sparse", "label": "off", "enabled": False, "search": {"nope": {}}}])
    raw["quick"] = {"queries": 3, "backends": [{"name": "sparse", "search": {"batch_size": 8}}]}
    cfg = parse_config(raw)
    assert [b.label for b in cfg.backends] == ["sparse"] and cfg.backends[0].search_grid == [
        {"batch_size": 8}, {"batch_size": 64}]
    assert cfg.warmup == 50 and cfg.overhead.backend == "sparse" and cfg.report.latency_target_ms == 10.0
    quick = parse_config(raw, quick=True)
    assert quick.queries == 3 and quick.warmup == 10 and quick.backends[0].search_grid == [{"batch_size": 8}]
    assert parse_config(_with(("overhead",), False)).overhead is None


def test_grids_expand_to_the_union_of_cartesian_products():
    assert expand_grid(None) == [{}]
    assert expand_grid({"a": [1, 2], "b": "x"}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert expand_grid([{"a": [1, 2]}, {"a": 1}, {"a": 3, "c": True}]) == [{"a": 1}, {"a": 2}, {"a": 3, "c": True}]
    with pytest.raises(ConfigError, match=r"^search\[1\]: must be a table"):
        expand_grid([{"a": 1}, 3], "search")


@pytest.mark.parametrize("name", ["quick", "ml-1m", "amazon-book", "scale", "indexes"])
@pytest.mark.parametrize("quick", [False, True])
def test_shipped_configs_parse(name, quick, monkeypatch):
    monkeypatch.setenv("ELSA_INDEX_DATA", "/data")
    cfg = load_config(CONFIGS / f"{name}.toml", quick=quick)
    plan = plan_runs(cfg)
    assert plan and len({r.run_id for r in plan}) == len(plan)
    if quick:
        assert cfg.queries <= 200


@pytest.mark.parametrize("name", ["ml-1m", "amazon-book", "scale"])
def test_committed_results_keep_their_run_ids(name, monkeypatch):
    # The committed reports were measured with ELSA_INDEX_DATA=/work/shared/data; a run id is a hash of the
    # expanded config, so the same value must give the same ids (the report finds its runs by id). A config may
    # grow (a new backend's rows are measured by the next run), but every committed run must stay in its plan.
    monkeypatch.setenv("ELSA_INDEX_DATA", "/work/shared/data")
    cfg = load_config(CONFIGS / f"{name}.toml")
    committed = json.loads((RESULTS / name / "plan.json").read_text())
    planned = {(r.run_id, r.build_id) for r in plan_runs(cfg)}
    missing = [r["run_id"] for r in committed if (r["run_id"], r["build_id"]) not in planned]
    assert committed and not missing


def test_a_build_may_set_its_own_threads_but_a_search_may_not():
    raw = _with(("backends", 0), {"name": "lucene", "build": {"threads": 2}})
    cfg = parse_config(raw)
    assert cfg.backends[0].build_grid == [{"threads": 2}]
    with pytest.raises(ConfigError, match="set by the harness"):
        parse_config(_with(("backends", 0), {"name": "lucene", "search": {"threads": 2}}))
