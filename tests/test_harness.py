"""The benchmark harness: metric registry, percentiles, memory probe, configs, scale data, an end-to-end run."""

import importlib.util
import json
import math
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.cli import main
from elsa_index.errors import ElsaIndexError
from elsa_index.eval.config import ConfigError, load_config, parse_config
from elsa_index.eval.registry import (
    RunData, compute_metrics, get_metric, higher_is_better, latency_percentiles, pareto_front,
)

HAVE_FAISS = importlib.util.find_spec("faiss") is not None and importlib.util.find_spec(
    "elsa_index.indexers.faiss_dense") is not None


# --------------------------------------------------------------- registry


def _run(**kw):
    base = dict(
        ids=np.array([[3, 1, 2], [0, -1, -1]]),
        true_scores=np.array([[0.9, 0.8, 0.5], [0.7, -np.inf, -np.inf]]),
        exact_scores=np.array([[0.9, 0.8, 0.7], [0.7, 0.6, -np.inf]]),
        latency_ns=np.array([1_000_000, 3_000_000]),
        targets=sp.csr_matrix(np.array([[0, 1, 0, 0, 1], [1, 0, 0, 0, 0]], dtype=np.float32)),
        scalars={"qps": {"1": 100.0, "2": 180.0}, "build_seconds": 1.5, "bytes_on_disk": 1024, "peak_rss_bytes": None},
    )
    base.update(kw)
    return RunData(**base)


def test_registry_computes_metrics_from_hand_made_results():
    m = compute_metrics(_run(), ["recall@2", "ndcg@3", "retrieval_recall@2", "retrieval_recall@3", "latency_p50",
                                 "latency_mean", "qps@2", "build_seconds", "bytes_on_disk", "peak_rss"])
    # user 0: targets {1, 4}, top-2 = [3, 1] -> 1 hit / min(2, 2); user 1: targets {0}, top-2 = [0, -1] -> 1/1.
    assert m["recall@2"] == pytest.approx(0.75)
    dcg0 = 1 / math.log2(3)
    idcg0 = 1 + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx((dcg0 / idcg0 + 1.0) / 2)
    # user 0: top-2 exact scores 0.9, 0.8 -> both returned items reach 0.8; user 1: one of min(2, 2) exact.
    assert m["retrieval_recall@2"] == pytest.approx((1.0 + 0.5) / 2)
    # k=3: user 0 returned 0.5 < 0.7 -> 2/3; user 1 has 2 exact results, 1 returned -> 1/2.
    assert m["retrieval_recall@3"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["latency_p50"] == pytest.approx(2.0) and m["latency_mean"] == pytest.approx(2.0)
    assert m["qps@2"] == 180.0 and m["build_seconds"] == 1.5 and m["bytes_on_disk"] == 1024
    assert math.isnan(m["peak_rss"])


def test_registry_quality_is_nan_without_targets_and_knows_directions():
    m = compute_metrics(_run(targets=None), ["recall@2", "retrieval_recall@2"])
    assert math.isnan(m["recall@2"]) and m["retrieval_recall@2"] == pytest.approx(0.75)
    assert higher_is_better("recall@20") and higher_is_better("qps@1")
    assert not higher_is_better("latency_p99") and not higher_is_better("peak_rss")
    assert get_metric("retrieval_recall@100")[1] == 100


@pytest.mark.parametrize("name", ["recal@20", "recall", "latency_p50@3", "qps"])
def test_registry_rejects_bad_names(name):
    with pytest.raises(ElsaIndexError):
        get_metric(name)


def test_retrieval_recall_counts_ties_with_the_kth_score():
    # Exact top-2 is items 0 and 1 (scores 1.0, 0.5); item 2 ties with item 1 at 0.5.
    run = _run(ids=np.array([[0, 2]]), true_scores=np.array([[1.0, 0.5]]),
               exact_scores=np.array([[1.0, 0.5]]), latency_ns=np.array([1]), targets=None)
    assert compute_metrics(run, ["retrieval_recall@2"])["retrieval_recall@2"] == 1.0
    # An item below the k-th exact score does not count.
    run = _run(ids=np.array([[0, 3]]), true_scores=np.array([[1.0, 0.4999]]),
               exact_scores=np.array([[1.0, 0.5]]), latency_ns=np.array([1]), targets=None)
    assert compute_metrics(run, ["retrieval_recall@2"])["retrieval_recall@2"] == 0.5


def test_latency_percentiles():
    lat = np.arange(1, 101) * 1_000_000  # 1 .. 100 ms
    p = latency_percentiles(lat)
    assert p["p50"] == pytest.approx(50.5) and p["p95"] == pytest.approx(95.05) and p["p99"] == pytest.approx(99.01)
    assert latency_percentiles(np.array([7_000_000]))["p99"] == pytest.approx(7.0)
    assert all(math.isnan(v) for v in latency_percentiles(np.array([])).values())


def test_pareto_front_uses_directions():
    pts = [(1.0, 0.5), (2.0, 0.9), (3.0, 0.8), (0.5, 0.1), (float("nan"), 1.0)]
    assert pareto_front(pts, x_higher_better=False, y_higher_better=True) == [3, 0, 1]


# ----------------------------------------------------------- memory probe


def test_memory_probe_sees_a_known_allocation():
    from elsa_index.eval.memprobe import alloc_rss, baseline_rss, peak_rss_bytes

    own = peak_rss_bytes()
    assert own["peak"] > 10 << 20 and own["ru_maxrss"] > 0
    base = baseline_rss(repeats=1)
    big = alloc_rss(200)
    assert 20 << 20 < base < 2 << 30
    assert (big - base) >= 180 << 20
    assert (big - base) < 400 << 20


def test_query_files_round_trip(tmp_path):
    from elsa_index.eval.memprobe import load_queries, save_queries

    Q = sp.random(5, 20, density=0.3, format="csr", dtype=np.float32, random_state=1)
    X = sp.random(5, 50, density=0.1, format="csr", random_state=2)
    save_queries(tmp_path / "q.npz", Q, X)
    Q2, X2 = load_queries(tmp_path / "q.npz")
    assert (Q2 != Q).nnz == 0 and np.array_equal(X2.toarray(), X.toarray() != 0)
    D = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_queries(tmp_path / "d.npz", D)
    D2, none = load_queries(tmp_path / "d.npz")
    assert np.array_equal(D, D2) and none is None


# ------------------------------------------------------------- scale data


def test_scale_catalogue_matches_fitted_statistics():
    from conftest import planted_sparse_embeddings

    from elsa_index.eval.scale import (
        CatalogueStats, fit_catalogue_stats, make_dense_counterpart, make_queries, make_sparse_catalogue, posting_bytes,
    )

    E = planted_sparse_embeddings(n_items=300, dims=64, nnz=4)
    # Skew the dimension shares: dimension 0 in every third item.
    E = E.tolil()
    for i in range(0, 300, 3):
        E[i, 0] = 0.5
    E = sp.csr_matrix(E)
    H = sp.csr_matrix((np.ones(60), (np.repeat(np.arange(20), 3), np.arange(60))), shape=(20, 300))
    stats = fit_catalogue_stats(E, H)
    assert stats.dims == 64 and stats.history_lengths.tolist() == [3] * 20 and len(stats.query_terms) == 20
    stats = CatalogueStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    C = make_sparse_catalogue(stats, 5000, seed=3)
    assert C.shape == (5000, 64) and C.has_sorted_indices
    nnz = np.diff(C.indptr)
    assert set(np.unique(nnz)) <= set(stats.nnz_values.tolist())
    assert all(len(np.unique(C.indices[C.indptr[r]:C.indptr[r + 1]])) == nnz[r] for r in range(0, 5000, 97))
    assert np.allclose(sp.linalg.norm(C, axis=1), 1.0, atol=1e-5)
    share = np.bincount(C.indices, minlength=64) / C.nnz
    assert share[0] == pytest.approx(stats.dim_share[0], abs=0.02) and share[0] > 2 * np.median(share)
    assert (C != make_sparse_catalogue(stats, 5000, seed=3)).nnz == 0
    C2 = make_sparse_catalogue(stats, 1000, seed=3, dims=128)
    assert C2.shape == (1000, 128)

    Q, X = make_queries(stats, C, 40, query_terms=12, seed=1)
    terms = np.diff(Q.indptr)
    assert Q.shape == (40, 64) and abs(np.median(terms) - 12) <= 2
    assert X.shape == (40, 5000) and (np.diff(X.indptr) >= 1).all()
    # History items share a dimension with their query.
    r = 0
    hist = X.indices[X.indptr[r]:X.indptr[r + 1]]
    qd = set(Q.indices[Q.indptr[r]:Q.indptr[r + 1]])
    assert all(qd & set(C.indices[C.indptr[j]:C.indptr[j + 1]]) for j in hist)
    D, Qd = make_dense_counterpart(C, Q, 8)
    assert D.shape == (5000, 8) and Qd.shape == (40, 8) and np.allclose(np.linalg.norm(D, axis=1), 1, atol=1e-5)
    pb = posting_bytes(C, Q)
    plen = np.bincount(C.indices, minlength=64)
    assert pb[0] == 8 * plen[Q.indices[Q.indptr[0]:Q.indptr[1]]].sum()


# ----------------------------------------------------------------- configs


GOOD = {
    "k": 10, "queries": 5, "metrics": ["retrieval_recall@10"],
    "datasets": [{"name": "d", "data": {"source": "synthetic"},
                  "checkpoints": [{"name": "c", "train": {"kind": "compressed", "dims": 16, "nnz": 2}}]}],
    "backends": [{"name": "sparse"}],
}


def _with(path, value):
    import copy

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
        from elsa_index.eval.harness import plan_runs

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


def test_unavailable_backends_are_skipped_with_a_reason(monkeypatch):
    from elsa_index.eval import harness
    import elsa_index.indexers as registry
    from elsa_index.errors import BackendError

    real = registry.get_backend

    def fake(name):
        if name == "lucene":
            raise BackendError("unknown backend 'lucene'")
        return real(name)

    monkeypatch.setattr(registry, "get_backend", fake)
    cfg = _with(("backends",), [{"name": "sparse"}, {"name": "lucene", "search": {"depth": [10, 20]}}])
    cfg = parse_config(cfg)
    classes, reasons = harness.resolve_backends(cfg)
    assert classes["lucene"] is None and "elsa-index[lucene]" in reasons["lucene"]
    # Still planned (counted as skipped by run_bench), so a later run measures them once installed.
    assert [r.backend.label for r in harness.plan_runs(cfg, classes)] == ["sparse", "lucene", "lucene"]


def test_config_files_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("k = [\n")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    assert main(["bench", str(bad), "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("name", ["quick", "ml-1m", "amazon-book", "scale"])
@pytest.mark.parametrize("quick", [False, True])
def test_shipped_configs_parse(name, quick, monkeypatch):
    from pathlib import Path

    from elsa_index.eval.harness import plan_runs

    monkeypatch.setenv("ELSA_INDEX_DATA", "/data")
    path = Path(__file__).parent.parent / "eval" / "configs" / f"{name}.toml"
    cfg = load_config(path, quick=quick)
    plan = plan_runs(cfg)
    assert plan and len({r.run_id for r in plan}) == len(plan)
    if quick:
        assert cfg.queries <= 200


# -------------------------------------------------------------- end to end


CONFIG = """
title = "test bench"
k = 20
queries = 30
warmup = 3
threads = [1, 2]
throughput_repeats = 1
metrics = ["recall@10", "ndcg@20", "retrieval_recall@10", "retrieval_recall@20"]
overhead = {{ backend = "sparse", queries = 30 }}

[[datasets]]
name = "syn"
[datasets.data]
source = "synthetic"
synthetic_users = 500
synthetic_items = 150
synthetic_clusters = 5
n_heldout_users = 80
[[datasets.checkpoints]]
name = "celsa"
train = {{ kind = "compressed", dims = 32, nnz = 4, epochs = 2, lr = 0.03, warmup_epochs = 0, finetune_epochs = 1, prune_steps = 5, device = "cpu" }}
[[datasets.checkpoints]]
name = "elsa"
train = {{ kind = "elsa", dims = 8, epochs = 2, lr = 0.03, device = "cpu" }}

[[datasets]]
name = "grow"
kind = "scale"
sizes = [500, 2000]
query_terms = 10
dense_dims = 8
queries = 20
extrapolate = [1000000]
fit = {{ dataset = "syn", checkpoint = "celsa" }}

[[backends]]
name = "sparse"
search = {{ batch_size = [8, 64] }}
{faiss}"""

FAISS = """
[[backends]]
name = "faiss-flat"
"""


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from elsa_index.eval.harness import run_bench

    d = tmp_path_factory.mktemp("bench")
    cfg = d / "tiny.toml"
    cfg.write_text(textwrap.dedent(CONFIG.format(faiss=FAISS if HAVE_FAISS else "")))
    out = d / "out"
    res = run_bench(cfg, out, progress=False)
    return cfg, out, res


def test_quick_config_runs_end_to_end(quick_run):
    cfg, out, res = quick_run
    n_sparse = 2 * 3  # two batch sizes on celsa, grow-500k/sparse, grow-2k/sparse
    expected = n_sparse + (3 if HAVE_FAISS else 0)
    assert res["measured"] == expected and res["reused"] == 0
    report = (out / "report.md").read_text()
    for text in ("## Machine", "## Protocol", "## Harness overhead", "## syn", "## grow: synthetic catalogues",
                 "recall@10", "retrieval_recall@20", "p50 ms", "exponent b", "numpy"):
        assert text in report, text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"pareto-syn.png", "memory-syn.png", "scale-latency-grow.png", "scale-memory-grow.png"} <= set(pngs)
    for p in pngs:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Raw per-query results and their numbers.
    import pyarrow.parquet as pq

    runs = sorted((out / "runs" / "syn").glob("*.json"))
    rec = json.loads(runs[0].read_text())
    table = pq.read_table(runs[0].with_suffix(".parquet"))
    assert table.num_rows == rec["n_queries"] == 30
    assert set(table.column_names) >= {"latency_ns", "ids", "scores", "true_scores"}
    assert rec["peak_rss_bytes"] is not None and rec["bytes_on_disk"] > 0 and set(rec["qps"]) == {"1", "2"}
    over = json.loads((out / "overhead.json").read_text())
    assert over["standalone_mean_ms"] > 0 and over["ratio_mean"] > 0


def test_exact_backend_has_full_retrieval_recall_and_matches_checkpoint_quality(quick_run):
    from elsa_index.eval.config import load_config
    from elsa_index.eval.harness import plan_runs
    from elsa_index.eval.report import collect

    cfg_path, out, _ = quick_run
    cfg = load_config(cfg_path)
    rows, qmeta = collect(out, cfg, plan_runs(cfg))
    sparse = [r for r in rows if r["label"] == "sparse"]
    assert sparse and all(r["m"]["retrieval_recall@20"] == pytest.approx(1.0) for r in sparse)
    syn = [r for r in sparse if r["dataset"] == "syn"]
    exact = qmeta[("syn", "celsa")]["exact"]
    assert all(r["m"]["recall@10"] == pytest.approx(exact["recall@10"]) for r in syn)
    assert all(r["m"]["latency_p50"] > 0 and r["m"]["bound_p50"] > 0 for r in sparse)


def test_resume_skips_measured_configurations(quick_run, capsys):
    cfg, out, res = quick_run
    assert main(["bench", str(cfg), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"0 configuration(s) measured, {res['measured']} already measured" in text
    # Re-render only.
    (out / "report.md").unlink()
    assert main(["bench", str(cfg), "--out", str(out), "--report-only"]) == 0
    assert (out / "report.md").is_file()


def test_prepare_only_trains_and_prepares_without_measuring(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(textwrap.dedent(CONFIG.format(faiss="")))
    out = tmp_path / "out"
    assert main(["bench", str(cfg), "--out", str(out), "--prepare-only", "--quiet"]) == 0
    assert "prepared checkpoints and query sets for 6 configuration(s)" in capsys.readouterr().out
    assert (out / "checkpoints" / "syn" / "celsa" / "manifest.json").is_file()
    assert (out / "queries" / "syn" / "celsa" / "queries.npz").is_file()
    assert not list((out / "runs").rglob("*.json"))
    assert not (out / "indexes").exists() and not (out / "report.md").exists()
    # The measuring run reuses the checkpoint instead of retraining it.
    stamp = (out / "checkpoints" / "syn" / "celsa" / "manifest.json").stat().st_mtime_ns
    assert main(["bench", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "6 configuration(s) measured, 0 already measured" in capsys.readouterr().out
    assert (out / "checkpoints" / "syn" / "celsa" / "manifest.json").stat().st_mtime_ns == stamp


def test_prepare_only_and_report_only_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "x.toml", "--out", str(tmp_path), "--prepare-only", "--report-only"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
