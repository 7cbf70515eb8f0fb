"""The benchmark harness end to end (elsa_index.eval.harness): one shared tiny run, prepared first and then
measured, with a toy backend registered at test time only."""

import contextlib
import importlib.util
import io
import json
import textwrap
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

import elsa_index.indexers as indexers
from elsa_index.cli import main
from elsa_index.eval.config import load_config
from elsa_index.eval.harness import run_bench
from elsa_index.eval.plan import plan_runs
from elsa_index.eval.report import collect

from toy_backend import TARGET

HAVE_FAISS = importlib.util.find_spec("faiss") is not None

CONFIG = """
title = "test bench"
k = 10
queries = 12
warmup = 2
index_warmup_seconds = 0.05
threads = [1, 2]
throughput_repeats = 1
bandwidth_mb = 4
metrics = ["recall@10", "ndcg@10", "retrieval_recall@5", "retrieval_recall@10"]
overhead = {{ backend = "toy", queries = 12 }}  # the bare loop runs in a child that registers toy too

[[datasets]]
name = "syn"
[datasets.data]
source = "synthetic"
synthetic_users = 200
synthetic_items = 60
synthetic_clusters = 4
n_heldout_users = 30
[[datasets.checkpoints]]
name = "celsa"
train = {{ kind = "compressed", dims = 16, nnz = 4, epochs = 1, lr = 0.03, warmup_epochs = 0, finetune_epochs = 0, prune_steps = 2, device = "cpu" }}
[[datasets.checkpoints]]
name = "elsa"
train = {{ kind = "elsa", dims = 4, epochs = 1, lr = 0.03, device = "cpu" }}

[[datasets]]
name = "grow"
kind = "scale"
sizes = [200, 400]
query_terms = 6
dense_dims = 4
queries = 8
extrapolate = [1000000]
fit = {{ dataset = "syn", checkpoint = "celsa" }}

[[backends]]
name = "sparse"
search = {{ batch_size = [8, 64] }}

[[backends]]
name = "toy"
datasets = ["syn"]
{faiss}"""

FAISS = """
[[backends]]
name = "faiss-flat"
datasets = ["syn"]
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Prepare (train, query sets) with --prepare-only, measure in the same OUT, then resume there with the
    CLI (nothing left to measure; it renders the report); the toy backend is registered for the module
    only."""
    d = tmp_path_factory.mktemp("bench")
    cfg = d / "tiny.toml"
    cfg.write_text(textwrap.dedent(CONFIG.format(faiss=FAISS if HAVE_FAISS else "")))
    out = d / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(indexers, "BACKENDS", dict(indexers.BACKENDS))
        indexers.register_backend("toy", TARGET)
        capture = _Capture()
        with capture:
            assert main(["bench", str(cfg), "--out", str(out), "--prepare-only", "--quiet"]) == 0
        prepared = {
            "text": capture.text,
            "checkpoint": (out / "checkpoints" / "syn" / "celsa" / "manifest.json").is_file(),
            "queries": (out / "queries" / "syn" / "celsa" / "queries.npz").is_file(),
            "runs": list((out / "runs").rglob("*.json")), "indexes": (out / "indexes").exists(),
            "report": (out / "report.md").exists(),
            "stamp": (out / "checkpoints" / "syn" / "celsa" / "manifest.json").stat().st_mtime_ns,
        }
        res = run_bench(cfg, out, progress=False, report=False)
        with _Capture() as resumed:
            assert main(["bench", str(cfg), "--out", str(out), "--quiet"]) == 0
        yield {"cfg": cfg, "out": out, "res": res, "prepared": prepared, "resumed": resumed.text}


class _Capture:
    """stdout of the CLI (capsys is function-scoped)."""

    def __enter__(self):
        self._buf = io.StringIO()
        self._cm = contextlib.redirect_stdout(self._buf)
        self._cm.__enter__()
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        self.text = self._buf.getvalue()


N_SPARSE = 2 * 3  # two batch sizes on celsa, grow-200/sparse, grow-400/sparse
N_EXPECTED = N_SPARSE + 1 + (1 if HAVE_FAISS else 0)  # + toy on celsa (+ faiss-flat on elsa)


def test_quick_config_runs_end_to_end(bench):
    out, res = bench["out"], bench["res"]
    assert res["measured"] == N_EXPECTED and res["reused"] == 0
    report = (out / "report.md").read_text()
    for text in ("## Machine", "## Protocol", "## Harness overhead", "## syn", "## grow: synthetic catalogues",
                 "recall@10", "retrieval_recall@10", "p50 ms", "exponent b", "numpy"):
        assert text in report, text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"pareto-syn.png", "memory-syn.png", "scale-latency-grow.png", "scale-memory-grow.png"} <= set(pngs)
    for p in pngs:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Raw per-query results and their numbers.
    runs = sorted((out / "runs" / "syn").glob("*.json"))
    rec = json.loads(runs[0].read_text())
    table = pq.read_table(runs[0].with_suffix(".parquet"))
    assert table.num_rows == rec["n_queries"] == 12
    assert set(table.column_names) >= {"latency_ns", "ids", "scores", "true_scores", "touched_bytes"}
    assert rec["peak_rss_bytes"] is not None and rec["bytes_on_disk"] > 0 and set(rec["qps"]) == {"1", "2"}
    assert rec["index_warmup_seconds"] == 0.05 and "s of warm-up queries once per opened index" in report
    over = json.loads((out / "overhead.json").read_text())
    assert over["label"] == "toy" and over["standalone_mean_ms"] > 0 and over["ratio_mean"] > 0


def test_exact_backend_has_full_retrieval_recall_and_matches_checkpoint_quality(bench):
    cfg = load_config(bench["cfg"])
    rows, qmeta = collect(bench["out"], cfg, plan_runs(cfg))
    sparse = [r for r in rows if r["label"] == "sparse"]
    assert sparse and all(r["m"]["retrieval_recall@10"] == pytest.approx(1.0) for r in sparse)
    syn = [r for r in sparse if r["dataset"] == "syn"]
    exact = qmeta[("syn", "celsa")]["exact"]
    assert all(r["m"]["recall@10"] == pytest.approx(exact["recall@10"]) for r in syn)
    assert all(r["m"]["latency_p50"] > 0 for r in sparse)


def test_a_backend_registered_at_run_time_is_measured_and_reported(bench):
    """The acceptance test of the registry: a toy backend, registered by the test alone, goes through the
    plan, the build, the fresh-process memory probe, the measurement, its own cost model and the report."""
    out = bench["out"]
    cfg = load_config(bench["cfg"])
    rows, _ = collect(out, cfg, plan_runs(cfg))
    toy = [r for r in rows if r["label"] == "toy"]
    assert len(toy) == 1 and toy[0]["checkpoint"] == "celsa" and toy[0]["target"] == TARGET
    m = toy[0]["m"]
    assert m["retrieval_recall@10"] == pytest.approx(1.0)  # exact by construction
    assert toy[0]["peak_rss_bytes"] is not None  # the memory-probe child imported the toy module
    assert toy[0]["touched_model"] == "all vectors (n x dims x 4 B)" and m["bound_p50"] > 0
    report = (out / "report.md").read_text()
    assert any(line.startswith("| toy | celsa |") for line in report.splitlines())
    assert "toy" not in json.loads((out / "skipped.json").read_text()).__repr__()


def test_resume_skips_measured_configurations(bench, monkeypatch):
    cfg, out = bench["cfg"], bench["out"]
    monkeypatch.setattr(indexers, "BACKENDS", dict(indexers.BACKENDS))
    indexers.register_backend("toy", TARGET)
    # The fixture's second CLI run in the same OUT.
    text = bench["resumed"]
    assert f"0 configuration(s) measured, {N_EXPECTED} already measured" in text
    # Re-render only.
    (out / "report.md").unlink()
    assert main(["bench", str(cfg), "--out", str(out), "--report-only"]) == 0
    assert (out / "report.md").is_file()


def test_prepare_only_trains_and_prepares_without_measuring(bench):
    p = bench["prepared"]
    assert f"prepared checkpoints and query sets for {N_EXPECTED} configuration(s)" in p["text"]
    assert p["checkpoint"] and p["queries"]
    assert not p["runs"] and not p["indexes"] and not p["report"]
    # The measuring run reused the checkpoint instead of retraining it.
    assert bench["res"]["measured"] == N_EXPECTED
    out = bench["out"]
    assert (out / "checkpoints" / "syn" / "celsa" / "manifest.json").stat().st_mtime_ns == p["stamp"]


def test_prepare_only_and_report_only_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "x.toml", "--out", str(tmp_path), "--prepare-only", "--report-only"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_each_configuration_starts_from_the_backend_defaults():
    # The configurations of one build share the opened index: a parameter set by one must not leak into the next.
    from elsa_index.eval.measure import search_params_of
    from elsa_index.indexers import get_backend

    cls = get_backend("sparse")
    be = cls()
    be.set_search_params(**search_params_of(be, {"batch_size": 7}))
    assert be.get_search_params()["batch_size"] == 7
    be.set_search_params(**search_params_of(be, {}))
    assert be.get_search_params() == {**cls.search_params}


def test_index_warm_up_cycles_the_queries_for_the_time_given():
    import scipy.sparse as sp

    from elsa_index.checkpoint import Checkpoint
    from elsa_index.eval.measure import warm_index
    from elsa_index.indexers import get_backend

    E = sp.random(50, 16, density=0.25, format="csr", random_state=0, dtype=np.float32)
    be = get_backend("sparse")().build(Checkpoint(E, [str(i) for i in range(50)], np.ones(50, np.int64),
                                                  kind="imported"))
    qs, xs = [E[i:i + 1] for i in range(3)], [None, [1], None]
    calls = []
    inner = be.search
    be.search = lambda q, k, exclude=None: calls.append((q, exclude)) or inner(q, k, exclude=exclude)
    assert warm_index(be, qs, xs, 5, 0) == 0 and warm_index(be, [], [], 5, 1.0) == 0 and not calls
    t0 = time.perf_counter()
    done = warm_index(be, qs, xs, 5, 0.2)
    assert time.perf_counter() - t0 >= 0.2 and done == len(calls) > 3  # more than one pass over the 3 queries
    assert [x for _, x in calls[:6]] == xs + xs  # each query with its own exclusions, in order
