"""One-off studies (elsa_index.eval.studies): each runs end to end on tiny data."""

import json

import numpy as np
import pytest
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


def test_accuracy_seed_rows_are_reported_apart_from_the_best_of_comparisons():
    def run(r20, dims=None, nnz=None):
        return {"metrics": {"recall@20": r20, "recall@50": r20, "ndcg@100": r20}, "train_seconds": 1.0,
                "dims": dims, "nnz": nnz, "floats_per_item": nnz or dims}

    runs = {"EASE l2=300": run(0.31), "ELSA 64d": run(0.30, dims=64), "ELSA 64d seed 1": run(0.40, dims=64),
            "ELSA 64d seed 2": run(0.32, dims=64), "CELSA 1024->32 exponential": run(0.29, 1024, 32),
            "CELSA 1024->32 exponential seed 1": run(0.27, 1024, 32)}
    md = accuracy.render({"datasets": {"ml-1m": runs}})
    # a lucky seed is not the "best dense" model: the base runs are compared
    assert "best dense ELSA (ELSA 64d, Recall@20 0.3000)" in md
    assert "Compressed ELSA 32 nnz / best dense ELSA Recall@20: 0.9667 (goal: >= 0.97: not met)" in md
    assert "| ELSA 64d | 0 1 2 | 0.3400 | 0.0529 | 0.3000 | 0.4000 |" in md
    assert "| CELSA 1024->32 exponential | 0 1 | 0.2800 |" in md
    assert "Seed mean of the best dense ELSA (ELSA 64d) / EASE: 1.0968" in md
    assert "Seed mean of CELSA 1024->32 exponential / seed mean of ELSA 64d: 0.8235" in md
    assert accuracy._seeded("ELSA 64d seed 12") == ("ELSA 64d", 12) and accuracy._seeded("ELSA 64d") == ("ELSA 64d", 0)
    import pytest
    with pytest.raises(SystemExit):
        accuracy.main(["--seeds", "0", "--render-only"])


def test_accuracy_variants_of_a_width_are_chosen_on_validation_users():
    def run(r20, val=None, dims=None, nnz=None):
        return {"metrics": {"recall@20": r20, "recall@50": r20, "ndcg@100": r20}, "train_seconds": 1.0,
                "dims": dims, "nnz": nnz, "floats_per_item": nnz or dims} | ({} if val is None else
                                                                            {"val_recall@20": val})

    runs = {"EASE l2=300": run(0.30),
            # the best test score is the worse validation score: the validation decides
            "ELSA 64d": run(0.40, val=0.30, dims=64), "ELSA 64d input dropout 0.5": run(0.33, val=0.35, dims=64),
            "CELSA 1024->32 exponential": run(0.31, val=0.20, dims=1024, nnz=32),
            "CELSA 1024->32 exponential sparse start 48": run(0.30, val=0.25, dims=1024, nnz=32)}
    md = accuracy.render({"datasets": {"ml-1m": runs}})
    assert "best dense ELSA (ELSA 64d input dropout 0.5, Recall@20 0.3300)" in md
    assert "| 32 nnz | CELSA 1024->32 exponential sparse start 48 | 0.2500 | 0.3000 |" in md
    assert "Compressed ELSA 32 nnz / best dense ELSA Recall@20: 0.9091 (goal: >= 0.97: not met)" in md
    assert "chosen on test" not in md
    # a stored run without a validation score (and no pruning selection): its width falls back to test, said so
    del runs["ELSA 64d"]["val_recall@20"]
    md = accuracy.render({"datasets": {"ml-1m": runs}})
    assert "best dense ELSA (ELSA 64d, Recall@20 0.4000)" in md
    assert "(ELSA 64d: chosen on test Recall@20, no validation score recorded)" in md
    # a run whose measured mean nnz falls just under its target (a row with fewer live values) joins its target's group
    runs["CELSA 4096->32 exponential sparse start 64"] = run(0.29, val=0.27, dims=4096, nnz=31.99) | {
        "params": {"nnz": 32}}
    md = accuracy.render({"datasets": {"ml-1m": runs}})
    assert "| 32 nnz | CELSA 4096->32 exponential sparse start 64 | 0.2700 | 0.2900 |" in md and "| 31 nnz" not in md
    # a pruning selection's candidates stand in for the validation score of runs stored before it was recorded
    assert accuracy._validation({"selection": {"candidates": [{"val_recall@20": 0.2}, {"val_recall@20": 0.3}]}}) == 0.3


def _tiny_sparse(tmp_path, n_items=300, dims=64, nnz=6, n_queries=12):
    """A sparse checkpoint and a query matrix (scipy .npz) on disk."""
    import scipy.sparse as sp

    from elsa_index.checkpoint import Checkpoint

    rng = np.random.default_rng(1)
    rows = np.repeat(np.arange(n_items), nnz)
    cols = np.concatenate([rng.choice(dims, nnz, replace=False) for _ in range(n_items)])
    E = sp.csr_matrix((rng.normal(size=len(rows)).astype(np.float32), (rows, cols)), shape=(n_items, dims))
    Checkpoint(E, np.array([f"i{i}" for i in range(n_items)]), np.ones(n_items), kind="imported").save(tmp_path / "ck")
    Q = sp.random(n_queries, dims, density=0.5, format="csr", dtype=np.float32, random_state=2)
    sp.save_npz(tmp_path / "q.npz", Q)
    return tmp_path / "ck", tmp_path / "q.npz"


def test_interleaved_study_compares_configurations_with_exact(tmp_path, capsys):
    from elsa_index.eval.studies import interleaved

    ck, q = _tiny_sparse(tmp_path)
    # Unlimited budgets: the approximate backend returns the exact top k (recall 1); a tiny posting budget loses some.
    argv = [str(ck), str(q), "--backend", "sparse-approx", "--k", "10", "--at", "5",
            "--config", '{"heap_factor": 1e-6, "exact_below": 0}', "--config", '{"max_postings": 3, "exact_below": 0}']
    assert interleaved.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["backend"] == "sparse-approx" and res["items"] == 300 and res["queries"] == 12 and res["k"] == 10
    full, budget = res["configs"]
    assert full["search"] == {"heap_factor": 1e-6, "exact_below": 0} and full["retrieval_recall@5"] == 1.0
    assert budget["retrieval_recall@5"] < 1.0
    assert full["p50_ratio_to_first"] == 1.0 and full["p50_ms"] > 0 and res["exact_p50_ms"] > 0
    assert res["warmup"] == 0


def test_interleaved_study_warms_every_configuration_up_untimed(tmp_path, capsys, monkeypatch):
    from elsa_index.eval.studies import interleaved
    from elsa_index.indexers.sparse_approx import ApproxSparse

    ck, q = _tiny_sparse(tmp_path)
    calls = []
    inner = ApproxSparse.search
    monkeypatch.setattr(ApproxSparse, "search", lambda self, *a, **kw: calls.append(1) or inner(self, *a, **kw))
    argv = [str(ck), str(q), "--backend", "sparse-approx", "--k", "10", "--at", "5", "--warmup", "30",
            "--config", "{}", "--config", '{"exact_below": 0}']
    assert interleaved.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["warmup"] == 30 and res["queries"] == 12
    assert len(calls) == 2 * (30 + 12)  # 30 untimed (the 12 queries cycled), then the timed ones
    import pytest
    with pytest.raises(SystemExit):
        interleaved.main(argv[:-4] + ["--warmup", "-1"])


def test_interleaved_study_refuses_a_cut_off_above_k(tmp_path):
    import pytest

    from elsa_index.eval.studies import interleaved

    ck, q = _tiny_sparse(tmp_path)
    with pytest.raises(SystemExit, match="--at must be in"):
        interleaved.main([str(ck), str(q), "--backend", "sparse-approx", "--k", "5", "--at", "6"])


def test_train_memory_study_reports_each_configuration(capsys):
    from elsa_index.eval.studies import train_memory

    argv = ["--data", "synthetic", "--users", "300",
            "--config", '{"kind": "elsa", "dims": 16, "batch_size": 128, "fused_outputs": true}',
            "--config", '{"kind": "compressed", "dims": 32, "nnz": 4, "start_nnz": 8, "warmup_epochs": 0, '
                        '"finetune_epochs": 0, "batch_size": 128}']
    assert train_memory.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    dense, comp = res["configs"]
    assert dense["steps"] == comp["steps"] == 3 and dense["outputs"] == dense["items"] > 0
    assert dense["peak_mb"] >= 0 and dense["seconds_per_step"] > 0 and dense["peak_ratio_to_first"] in (1.0, None)
    assert comp["config"]["kind"] == "compressed"


def test_train_memory_study_names_a_failing_configuration():
    import pytest

    from elsa_index.eval.studies import train_memory

    with pytest.raises(SystemExit, match="dims"):
        train_memory.main(["--data", "synthetic", "--users", "50", "--config", '{"kind": "elsa", "dims": 0}'])
    with pytest.raises(SystemExit, match="expected a JSON object"):
        train_memory.main(["--data", "synthetic", "--config", "{dims: 8"])


def test_synthetic_catalogue_study_times_heap_factors_against_exact(tmp_path, capsys):
    import scipy.sparse as sp

    from elsa_index.eval.memprobe import save_queries
    from elsa_index.eval.studies import synthetic_catalogue

    ck, q = _tiny_sparse(tmp_path, n_items=400, dims=64, nnz=6)
    Q = sp.load_npz(q)
    H = sp.random(Q.shape[0], 400, density=0.02, format="csr", random_state=3, dtype=np.float32)
    H.data[:] = 1
    save_queries(tmp_path / "set.npz", Q, H)
    argv = [str(ck), str(tmp_path / "set.npz"), "--items", "2000", "--queries", "20", "--heap-factor", "None", "1e-6"]
    assert synthetic_catalogue.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["items"] == 2000 and res["values_per_item"] > 0 and res["queries"] == 20 and res["exact_p50_ms"] > 0
    default, unlimited = res["configs"]
    assert default["search"] == {"exact_below": 0, "heap_factor": None}
    assert unlimited["retrieval_recall@20"] == 1.0  # exhaustive: exact top k
    assert 0 <= default["retrieval_recall@20"] <= 1 and default["p50_ratio_to_exact"] > 0
    import pytest

    with pytest.raises(SystemExit, match=r"must be in \(0, 1\]"):
        synthetic_catalogue.main(argv[:-2] + ["1.5"])


def test_popularity_hits_study_splits_the_hits_by_training_count(tmp_path, capsys, monkeypatch):
    import scipy.sparse as sp

    from elsa_index.eval.studies import popularity_hits as ph
    from elsa_index.metrics import evaluate

    rng = np.random.default_rng(3)
    X = sp.csr_matrix((rng.random((200, 40)) < np.linspace(0.02, 0.5, 40)).astype(np.float32))
    fold = sp.csr_matrix((rng.random((30, 40)) < 0.2).astype(np.float32))
    tgt = sp.csr_matrix((rng.random((30, 40)) < 0.2).astype(np.float32) - fold.multiply(1.0)).maximum(0)
    tgt.eliminate_zeros()
    counts = np.asarray(X.sum(0)).ravel()
    svd = ph.PureSVD(8).fit(X)
    recall, hits = ph.hits_by_bucket(svd.score, fold, tgt, counts, k=5, batch=7)
    # the same Recall@5 as the library's metric, and every hit in one bucket
    assert recall == pytest.approx(evaluate(svd.score, fold, tgt, ks=(), metrics=("recall@5",))["recall@5"])
    scores = np.array(svd.score(fold))
    scores[fold.nonzero()] = -np.inf
    top = np.argsort(-scores, axis=1)[:, :5]
    assert hits.sum() == sum(len(set(top[u]) & set(tgt[u].indices)) for u in range(30))
    assert list(ph.buckets(np.array([0, 1, 2, 3, 4, 10, 11, 50, 51, 1000]))) == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # exact PureSVD against numpy's SVD, with more users than items (V) and fewer (the Gram of the users)
    for M in (X, sp.csr_matrix(X.T)):
        V = np.linalg.svd(M.toarray())[2][:6].T
        q = sp.csr_matrix(M[:5])
        assert np.allclose(ph.PureSVD(6).fit(M).score(q), q.toarray() @ V @ V.T, atol=1e-4)
        # full rank (0: every non-zero singular value): x V V^T reconstructs the training rows
        assert np.allclose(ph.PureSVD(0).fit(M).score(q), q.toarray(), atol=1e-3)
    # ridge: x (MᵀM + l2 I)⁻¹ MᵀM in both systems; off the diagonal it is EASE's B times (1 - its diagonal)
    from elsa_index.models.baselines import EASE

    for M in (X, sp.csr_matrix(X.T)):
        D = M.toarray().astype(np.float64)
        R = np.linalg.solve(D.T @ D + 5 * np.eye(D.shape[1]), D.T @ D)
        q = sp.csr_matrix(M[:5])
        assert np.allclose(ph.Ridge(5.0).fit(M).score(q), q.toarray() @ R, atol=1e-4)
    R = np.linalg.solve(X.T.toarray() @ X.toarray() + 5 * np.eye(40), X.T.toarray() @ X.toarray())
    off = ~np.eye(40, dtype=bool)
    B = EASE(l2=5.0, solver="primal", dtype="float64").fit(X).B_
    assert np.allclose((R / (1 - np.diag(R)))[off], B[off], atol=1e-6)
    monkeypatch.setattr(ph, "EXACT_MAX", 10)  # the randomized SVD at full rank spans the same row space
    assert np.allclose(ph.PureSVD(40).fit(X).score(X[:5].toarray()), X[:5].toarray(), atol=1e-4)

    users = np.repeat(np.arange(1100), 8)  # the ML-1M protocol holds out 1,000 users with >= 5 positives
    items = (np.arange(len(users)) * 7 + rng.integers(0, 3, len(users))) % 60
    pq.write_table(pa.table({"user_id": [f"u{u}" for u in users], "item_id": [f"i{i}" for i in items],
                             "rating": np.full(len(users), 5.0)}), tmp_path / "ml-1m.parquet")
    out = tmp_path / "hits.json"
    assert ph.main(["--dataset", "ml-1m", "--data-dir", str(tmp_path), "--models", "ease:10", "ridge:10", "puresvd:4",
                    "--k", "5", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["models"]) == {"EASE l2=10", "ridge l2=10", "PureSVD rank 4"}
    assert sum(res["targets"]) > 0 and all(0 <= m["recall"] <= 1 for m in res["models"].values())
    assert "Recall@5" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ph.main(["--dataset", "ml-1m", "--data-dir", str(tmp_path), "--models", "svd:4"])


def test_heldout_draws_study_scores_ease_and_elsa_per_draw(tmp_path, capsys):
    from elsa_index.eval.studies import heldout_draws
    from elsa_index.metrics import evaluate
    from elsa_index.models.baselines import EASE
    from elsa_index.workflow import DataSpec, load_split

    rng = np.random.default_rng(4)
    users = np.repeat(np.arange(120), 8)
    items = (users % 5) * 30 + rng.integers(0, 60, len(users))  # 5 overlapping tastes over 180 items
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [f"u{u}" for u in users], "item_id": [f"i{i}" for i in items]}), path)
    out = tmp_path / "draws.json"
    assert heldout_draws.main(["--data", str(path), "--heldout-users", "20", "--seeds", "3", "4", "--dims", "8",
                               "--max-epochs", "3", "--l2", "10", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [d["seed"] for d in res["draws"]] == [3, 4]
    # EASE's score is the library's on that draw's held-out users; the draws differ
    split = load_split(DataSpec(source=str(path), n_heldout_users=20, seed=4))
    e = evaluate(EASE(l2=10).fit(split.train.matrix).score, split.fold_in, split.targets, ks=(),
                 metrics=("recall@20",))["recall@20"]
    assert res["draws"][1]["ease"] == pytest.approx(e)
    assert res["draws"][0]["ease"] != res["draws"][1]["ease"]
    for d in res["draws"]:
        assert d["ratio"] == pytest.approx(d["elsa"] / d["ease"])
    assert res["ratio_of_means"] == pytest.approx(np.mean([d["elsa"] for d in res["draws"]])
                                                  / np.mean([d["ease"] for d in res["draws"]]))
    assert "ratio of means" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        heldout_draws.main(["--data", str(tmp_path / "missing.parquet")])
