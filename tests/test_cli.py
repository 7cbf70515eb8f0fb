import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import scipy.sparse as sp

from elsa_index.checkpoint import Checkpoint
from elsa_index.cli import main
from elsa_index.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def log_csv(tmp_path_factory):
    log = make_synthetic(n_users=300, n_items=80, n_clusters=6, seed=2)
    path = tmp_path_factory.mktemp("data") / "log.csv"
    rating = np.where(np.arange(len(log)) % 5 == 0, 2.0, 5.0)  # some negatives to filter out
    pcsv.write_csv(pa.table({"uid": log.user, "iid": log.item, "stars": rating}), path)
    return path


def _train(log_csv, out, *extra):
    return main(["train", "--data", str(log_csv), "--user-col", "uid", "--item-col", "iid", "--rating-col", "stars",
                 "--min-rating", "4", "--heldout-users", "50", "--out", str(out), "--quiet", *extra])


def test_train_evaluate_info(tmp_path, log_csv, capsys):
    out = tmp_path / "ck"
    assert _train(log_csv, out, "--model", "compressed", "--dims", "32", "--nnz", "4", "--epochs", "3",
                  "--finetune-epochs", "1") == 0
    ck = Checkpoint.load(out)
    assert ck.kind == "compressed_elsa" and (ck.nnz_per_row() == 4).all()
    assert set(ck.metrics) == {"recall@20", "recall@50", "ndcg@100"}
    assert ck.data["spec"]["min_rating"] == 4.0
    capsys.readouterr()
    # Evaluate with the data settings recorded in the checkpoint: same numbers.
    assert main(["evaluate", str(out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics == pytest.approx(ck.metrics, abs=1e-9)
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "compressed_elsa" in text and "4..4" in text


def test_train_dense(tmp_path, log_csv):
    out = tmp_path / "dense"
    assert _train(log_csv, out, "--model", "elsa", "--dims", "8", "--epochs", "2", "--no-eval") == 0
    ck = Checkpoint.load(out)
    assert not ck.sparse and ck.dims == 8 and ck.metrics == {}


def test_import_npz(tmp_path, capsys):
    m = sp.random(6, 10, density=0.3, format="csr", random_state=0, dtype=np.float32)
    sp.save_npz(tmp_path / "e.npz", m)
    (tmp_path / "ids.txt").write_text("a\nb\nc\nd\ne\nf\n")
    np.save(tmp_path / "pop.npy", np.arange(6))
    assert main(["import-npz", str(tmp_path / "e.npz"), "--item-ids", str(tmp_path / "ids.txt"),
                 "--out", str(tmp_path / "raw"), "--no-normalize"]) == 0
    assert "not unit length" in capsys.readouterr().err
    ck = Checkpoint.load(tmp_path / "raw")
    assert list(ck.item_ids.ids) == list("abcdef") and abs(ck.embeddings - m).max() == 0
    # By default rows are scaled to unit length (and the CLI says so); popularity comes from --popularity.
    assert main(["import-npz", str(tmp_path / "e.npz"), "--item-ids", str(tmp_path / "ids.txt"),
                 "--popularity", str(tmp_path / "pop.npy"), "--out", str(tmp_path / "ck")]) == 0
    assert "rows scaled to unit length" in capsys.readouterr().out
    ck = Checkpoint.load(tmp_path / "ck")
    norms = np.sqrt(np.asarray(ck.embeddings.multiply(ck.embeddings).sum(axis=1)).ravel())
    np.testing.assert_allclose(norms[norms > 0], 1.0, rtol=1e-5)
    np.testing.assert_array_equal(ck.popularity, np.arange(6))


def test_demo_prints_the_table_and_the_served_user(tmp_path, capsys, monkeypatch):
    # The CLI's part: parse, run the demo, print. Tiny models under the demo's names keep it fast;
    # tests/test_demo.py trains the real ones.
    from elsa_index import demo
    from elsa_index.workflow import make_model

    monkeypatch.setattr(demo, "demo_models", lambda progress: [
        ("elsa-256", make_model("elsa", dims=8, epochs=2, progress=progress)),
        ("elsa-32", make_model("elsa", dims=4, epochs=2, progress=progress)),
        ("compressed-1024-nnz16", make_model("compressed", dims=32, nnz=16, epochs=3, warmup_epochs=0,
                                              finetune_epochs=1, progress=progress)),
    ])
    assert main(["demo", "--out", str(tmp_path / "demo"), "--users", "200", "--items", "60", "--quiet",
                 "--no-bench"]) == 0
    out = capsys.readouterr().out
    for name in ("popularity", "elsa-256", "elsa-32", "compressed-1024-nnz16", "recall@20", "held-out user"):
        assert name in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert lines[header].split() == ["model", "nnz/item", "train", "s", "embedding", "bytes", "recall@20",
                                     "recall@50", "ndcg@100"]
    assert set(lines[header + 1]) == {"-", " "} and len(lines[header + 1]) == len(lines[header])
    assert lines[header + 2].split()[:2] == ["popularity", "-"] and lines[header + 5].split()[:2] == [
        "compressed-1024-nnz16", "16"]
    assert f"checkpoints written under {tmp_path / 'demo'}/" in out
    assert "benchmark" not in out
    ck = Checkpoint.load(tmp_path / "demo" / "compressed-1024-nnz16")
    assert (ck.nnz_per_row() == 16).all()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--rating-col", "nope", "--min-rating", "4"], "no column(s) ['nope']"),
        (["--model", "compressed", "--dims", "16", "--nnz", "32"], "nnz must be an integer in [1, 16], got 32 (dims=16)"),
        (["--heldout-users", "100000"], "n_heldout_users=100000"),
        (["--min-user-support", "100000"], "empty after filtering"),
        (["--model", "elsa", "--finetune-epochs", "2"], "--finetune-epochs only apply to --model compressed"),
        (["--no-refit"], "--no-refit needs --validation-users"),
        (["--patience", "-1"], "--patience must be an integer >= 0"),
        (["--validation-holdout", "1.5"], "--validation-holdout must be in (0, 1), got 1.5"),
        (["--search-budget", "10", "--lr", "0.1"], "the search chooses the learning rate and width"),
        (["--search-lrs", "0.1"], "--search-lrs/--search-dims/--search-prune-epochs/--search-input-dropouts/"),
        (["--model", "compressed", "--search-start-nnz", "0", "8"], "need --search-budget (the time"),
        (["--model", "elsa", "--search-budget", "10", "--search-start-nnz", "8"], "--search-start-nnz applies to --model compressed"),
        (["--model", "compressed", "--search-budget", "10", "--search-start-nnz", "-1"],
         "--search-start-nnz must be counts >= 0 (0: the dense start), got -1"),
        (["--search-prune-epochs", "2"], "need --search-budget"),
        (["--search-input-dropouts", "0", "0.5"], "--no-search-refine/--no-search-reference need --search-budget"),
        (["--no-search-refine"], "need --search-budget (the time"),
        (["--no-search-reference"], "--no-search-reference need --search-budget"),
        (["--search-budget", "10", "--search-input-dropouts", "1.5"],
         "--search-input-dropouts must be shares in [0, 1), got 1.5"),
        (["--metrics", "precision@5"], "unknown metric 'precision@5'"),
    ],
)
def test_train_bad_input_is_a_clear_error(tmp_path, log_csv, capsys, argv, message):
    out = tmp_path / "ck"
    base = ["train", "--data", str(log_csv), "--user-col", "uid", "--item-col", "iid", "--out", str(out), "--quiet"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_existing_output_and_missing_inputs(tmp_path, log_csv, capsys):
    (tmp_path / "ck").mkdir()
    assert _train(log_csv, tmp_path / "ck", "--dims", "8") == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "x")]) == 2
    assert "neither a file nor a known dataset" in capsys.readouterr().err


def test_train_help_lists_model_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--nnz" in out and "--schedule" in out


def test_build_help_lists_backends_without_heavy_imports():
    """``python -m elsa_index build --help``: every registered backend with its parameters and defaults.

    ``-X importtime`` lists every module the process imported: listing the
    backends must not start a JVM or load faiss, pyserini or torch.
    """
    from elsa_index.indexers import backend_names

    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "elsa_index", "build", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    help_text = r.stdout
    for name in backend_names():
        assert f"\n  {name} (" in help_text
    assert "search  batch_size=256" in help_text and "build   M=32" in help_text
    assert "search  dynamic_pruning=False" in help_text
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    assert "elsa_index" in imported
    assert not imported & {"faiss", "pyserini", "jnius", "torch"}


def test_build_help_and_choices_follow_the_registry(tmp_path, monkeypatch, capsys, sparse_checkpoint):
    from elsa_index import indexers

    monkeypatch.setattr(indexers, "BACKENDS", dict(indexers.BACKENDS))  # restored after the test
    indexers.register_backend("toy", "toy_backend:ToyBackend")
    indexers.register_backend("broken", "no_such_module_here:Nothing")
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    out = capsys.readouterr().out
    assert "toy (exact, sparse or dense embeddings): Exact top-k by a dense matrix product over every item" in out
    assert re.search(r"\n    build +shards=2 +how many pieces the toy index has\n", out)
    assert "search  probe=3" in out and "search  mode='fast'" in out  # no doc: the default alone
    assert "broken: cannot be loaded: " in out and "no_such_module_here" in out
    assert "sparse (exact, sparse or dense embeddings)" in out
    # --backend accepts the new name and builds an index with it ...
    sparse_checkpoint.save(tmp_path / "ck")
    assert main(["build", str(tmp_path / "ck"), "--backend", "toy", "--out", str(tmp_path / "ix"), "--quiet"]) == 0
    assert json.loads((tmp_path / "ix" / "backend" / "backend.json").read_text())["backend"] == "toy"
    # ... and still refuses names that are not registered.
    with pytest.raises(SystemExit):
        main(["build", str(tmp_path / "ck"), "--backend", "nope", "--out", str(tmp_path / "ix")])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_build_and_recommend(tmp_path, sparse_checkpoint, capsys):
    sparse_checkpoint.save(tmp_path / "ck")
    assert main(["build", str(tmp_path / "ck"), "--backend", "sparse", "--out", str(tmp_path / "ix"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["recommend", str(tmp_path / "ix"), "--history", "item0001", "item0009", "--k", "3"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert len(row["items"]) == 3 and not {"item0001", "item0009"} & set(row["items"]) and row["fallback"] is False
    (tmp_path / "in.jsonl").write_text('["item0001"]\n{"user": "u7", "history": ["nope"]}\n\n')
    assert main(["recommend", str(tmp_path / "ix"), "--input", str(tmp_path / "in.jsonl"), "--k", "2",
                 "--output", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["user"] for r in rows] == [0, "u7"] and rows[1]["fallback"] is True
    assert "not in the catalogue" in capsys.readouterr().err


def test_build_and_recommend_errors(tmp_path, sparse_checkpoint, capsys):
    sparse_checkpoint.save(tmp_path / "ck")
    assert main(["build", str(tmp_path / "ck"), "--backend", "sparse", "--param", "depth=3",
                 "--out", str(tmp_path / "ix")]) == 2
    assert "unknown parameter 'depth'" in capsys.readouterr().err and not (tmp_path / "ix").exists()
    assert main(["build", str(tmp_path / "ck"), "--backend", "sparse", "--param", "oops",
                 "--out", str(tmp_path / "ix")]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["build", str(tmp_path / "ck"), "--backend", "sparse", "--out", str(tmp_path / "ix"), "--quiet"]) == 0
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert main(["recommend", str(tmp_path / "ix"), "--input", str(tmp_path / "bad.jsonl")]) == 2
    assert "line 1 is not valid JSON" in capsys.readouterr().err
    assert main(["recommend", str(tmp_path / "ix"), "--history", "item0001", "--k", "0"]) == 2
    assert "k must be a positive integer" in capsys.readouterr().err
    assert main(["recommend", str(tmp_path / "nope"), "--history", "a"]) == 2
    assert "not found" in capsys.readouterr().err


# ------------------------------------------------------------- parity with the Python API


@pytest.fixture(scope="module")
def split_csv(tmp_path_factory):
    """A log with its own split column, values 'fit'/'eval' (the last fifth of each user's rows is 'eval')."""
    log = make_synthetic(n_users=200, n_items=60, n_clusters=5, seed=3)
    order = np.lexsort((np.arange(len(log)), log.user))
    users, items = log.user[order], log.item[order]
    first = np.r_[True, users[1:] != users[:-1]]
    rank = np.arange(len(users)) - np.maximum.accumulate(np.where(first, np.arange(len(users)), 0))
    counts = np.bincount(np.cumsum(first) - 1)[np.cumsum(first) - 1]
    part = np.where(rank >= np.ceil(0.8 * counts), "eval", "fit")
    path = tmp_path_factory.mktemp("split") / "split.csv"
    pcsv.write_csv(pa.table({"user_id": users, "item_id": items, "part": part}), path)
    return path


def test_train_options_round_trip_into_the_checkpoint(tmp_path, split_csv, capsys):
    from elsa_index.models import ELSA

    out = tmp_path / "ck"
    assert main(["train", "--data", str(split_csv), "--split-col", "part", "--train-value", "fit", "--test-value",
                 "eval", "--model", "elsa", "--dims", "8", "--epochs", "4", "--lr", "0.05", "--validation-users", "40",
                 "--validation-holdout", "0.25", "--validation-seed", "3", "--patience", "1", "--no-refit",
                 "--metrics", "hit_recall@10", "ndcg@10", "recall@10", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    ck = Checkpoint.load(out)
    model = ck.config["model"]
    # Given options are recorded as given; the others are the model class's defaults (one source).
    assert (model["dims"], model["epochs"], model["lr"]) == (8, 4, 0.05)
    assert model["batch_size"] == ELSA.batch_size and model["n_negatives"] == ELSA.n_negatives
    assert ck.config["validation"] == {"protocol": "interactions", "users": 40, "holdout_fraction": 0.25, "seed": 3,
                                       "patience": 1, "refit": False}
    assert ck.config["metrics"] == ["hit_recall@10", "ndcg@10", "recall@10"]
    assert list(ck.metrics) == ["hit_recall@10", "ndcg@10", "recall@10"]
    spec = ck.data["spec"]
    assert (spec["split_col"], spec["train_value"], spec["test_value"]) == ("part", "fit", "eval")
    # Both recalls are printed with what they divide by.
    assert "hit_recall@k = hits in the top k / |targets|" in printed
    assert "recall@k = hits in the top k / min(k, |targets|)" in printed
    # evaluate from the checkpoint alone: its data settings and metric names, the same numbers.
    assert main(["evaluate", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(ck.metrics, abs=1e-9)


def test_fixed_split_reports_hit_recall_by_default(tmp_path, split_csv, capsys):
    out = tmp_path / "ck"
    assert main(["train", "--data", str(split_csv), "--split-col", "part", "--train-value", "fit", "--test-value",
                 "eval", "--model", "elsa", "--dims", "8", "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    assert list(Checkpoint.load(out).metrics) == ["hit_recall@20", "ndcg@20"]
    # The split values must be named when they are not train/test.
    assert main(["train", "--data", str(split_csv), "--split-col", "part", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "split column must contain 'train' and 'test', found ['eval', 'fit']" in capsys.readouterr().err


def test_checkpoint_trained_from_python_evaluates_without_data(tmp_path, log_csv, capsys):
    from elsa_index.workflow import DataSpec, load_split, make_model, train_checkpoint

    spec = DataSpec(source=str(log_csv), user_col="uid", item_col="iid", rating_col="stars", min_rating=4.0,
                    n_heldout_users=50)
    ck = train_checkpoint(make_model("elsa", dims=8, epochs=2, progress=False), load_split(spec))
    ck.save(tmp_path / "py")
    assert main(["evaluate", str(tmp_path / "py"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(ck.metrics, abs=1e-9)


def test_recipe_search_from_the_cli(tmp_path, log_csv, capsys):
    out = tmp_path / "ck"
    assert _train(log_csv, out, "--model", "elsa", "--epochs", "3", "--search-budget", "300", "--search-lrs",
                  "0.01", "0.05", "--search-dims", "8", "--validation-users", "40") == 0
    printed = capsys.readouterr().out
    recipe = Checkpoint.load(out).config["recipe"]
    main, refined = recipe["trials"][:2], recipe["trials"][2:]
    assert sorted((t["lr"], t["dims"]) for t in main) == [(0.01, 8), (0.05, 8)]
    top = max(main, key=lambda t: (t["score"], -main.index(t)))
    assert [(t["lr"], t["input_dropout"]) for t in refined] == [(top["lr"], 0.5)]  # the refinement stage
    assert f"trial lr {top['lr']:g} dims 8 input dropout 0.5:" in printed
    chosen = recipe["trials"][recipe["chosen"]]
    assert chosen["score"] == max(t["score"] for t in recipe["trials"])
    assert Checkpoint.load(out).config["model"]["lr"] == chosen["lr"]
    assert "chosen: lr" in printed and recipe["validation"]["protocol"] == "users"
    ref = recipe["reference"]
    assert f"reference: EASE l2={ref['l2']:g}, validation recall@20 {ref['score']:.4f}; the chosen model scores " \
           f"{ref['ratio']:.3f} of it" in printed


def test_recipe_search_warns_under_the_reference_and_can_skip_it(tmp_path, log_csv, capsys, caplog):
    # 2 dims are far under EASE on this data: a logged warning (stderr in a shell), the recipe keeps the numbers
    assert _train(log_csv, tmp_path / "a", "--model", "elsa", "--epochs", "2", "--search-budget", "300",
                  "--search-lrs", "0.02", "--search-dims", "2", "--validation-users", "40", "--no-search-refine") == 0
    cap = capsys.readouterr()
    ref = Checkpoint.load(tmp_path / "a").config["recipe"]["reference"]
    assert ref["ratio"] < 0.98
    assert f"reference: EASE l2={ref['l2']:g}" in cap.out
    assert any(r.levelname == "WARNING" and f"the chosen model scores {ref['ratio']:.3f} of EASE (l2={ref['l2']:g}) "
               "on the validation data" in r.getMessage() for r in caplog.records)
    caplog.clear()
    assert _train(log_csv, tmp_path / "b", "--model", "elsa", "--epochs", "2", "--search-budget", "300",
                  "--search-lrs", "0.02", "--search-dims", "2", "--validation-users", "40", "--no-search-refine",
                  "--no-search-reference") == 0
    cap = capsys.readouterr()
    assert Checkpoint.load(tmp_path / "b").config["recipe"]["reference"] is None
    assert "reference" not in cap.out and "of EASE" not in caplog.text


def test_compressed_recipe_search_tries_pruning_lengths_from_the_cli(tmp_path, log_csv, capsys):
    out = tmp_path / "ck"
    assert _train(log_csv, out, "--model", "compressed", "--nnz", "4", "--epochs", "4",
                  "--finetune-epochs", "2", "--warmup-epochs", "0", "--prune-steps", "4", "--search-budget", "300",
                  "--search-lrs", "0.03", "--search-dims", "16", "--search-prune-epochs", "1", "2",
                  "--validation-users", "40", "--no-search-refine") == 0
    printed = capsys.readouterr().out
    ck = Checkpoint.load(out)
    recipe = ck.config["recipe"]
    assert [t["prune_epochs"] for t in recipe["trials"]] == [1, 2]
    chosen = recipe["trials"][recipe["chosen"]]
    m = ck.config["model"]
    assert m["epochs"] - m["warmup_epochs"] - m["finetune_epochs"] == chosen["prune_epochs"]
    assert "pruning 1 epochs" in printed and "pruning 2 epochs" in printed


def test_recipe_search_tries_input_dropouts_from_the_cli(tmp_path, log_csv, capsys):
    out = tmp_path / "ck"
    assert _train(log_csv, out, "--model", "elsa", "--epochs", "2", "--search-budget", "300", "--search-lrs", "0.03",
                  "--search-dims", "8", "--search-input-dropouts", "0", "0.5", "--validation-users", "40") == 0
    printed = capsys.readouterr().out
    ck = Checkpoint.load(out)
    recipe = ck.config["recipe"]
    assert sorted(t["input_dropout"] for t in recipe["trials"]) == [0.0, 0.5]
    assert ck.config["model"]["input_dropout"] == recipe["trials"][recipe["chosen"]]["input_dropout"]
    assert "input dropout 0.5" in printed


def test_recipe_search_tries_sparse_starts_from_the_cli(tmp_path, log_csv, capsys):
    out = tmp_path / "ck"
    assert _train(log_csv, out, "--model", "compressed", "--nnz", "4", "--epochs", "3", "--finetune-epochs", "1",
                  "--prune-steps", "4", "--search-budget", "300", "--search-lrs", "0.03", "--search-dims", "16",
                  "--search-start-nnz", "0", "6", "--validation-users", "40", "--no-search-refine") == 0
    printed = capsys.readouterr().out
    ck = Checkpoint.load(out)
    recipe = ck.config["recipe"]
    assert [t["start_nnz"] for t in recipe["trials"]] == [None, 6]  # the model's own (dense) start first
    assert ck.config["model"]["start_nnz"] == recipe["trials"][recipe["chosen"]]["start_nnz"]
    assert "dense start" in printed and "sparse start 6" in printed


@pytest.mark.parametrize("model", ["ease", "popularity"])
def test_baseline_from_the_cli(log_csv, capsys, model):
    from elsa_index.metrics import evaluate
    from elsa_index.models import EASE, Popularity
    from elsa_index.workflow import DataSpec, load_split

    argv = ["baseline", model, "--data", str(log_csv), "--user-col", "uid", "--item-col", "iid", "--rating-col",
            "stars", "--min-rating", "4", "--heldout-users", "50"]
    if model == "ease":
        argv += ["--l2", "20", "--solver", "dual"]
    assert main(argv + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    split = load_split(DataSpec(source=str(log_csv), user_col="uid", item_col="iid", rating_col="stars",
                                min_rating=4.0, n_heldout_users=50))
    fitted = (EASE(l2=20.0) if model == "ease" else Popularity()).fit(split.train.matrix)
    expect = evaluate(fitted.score, split.fold_in, split.targets, ks=(), metrics=("recall@20", "recall@50", "ndcg@100"))
    assert res["metrics"] == pytest.approx(expect, abs=1e-5)
    if model == "ease":
        assert res["solver"] == "dual" and res["params"]["l2"] == 20.0
    assert main(argv) == 0
    assert "fitted in" in capsys.readouterr().out
    assert main(["baseline", "ease", "--data", str(log_csv), "--user-col", "uid", "--item-col", "iid", "--l2", "-1"]) == 2
    assert "l2 must be a finite number >= 0.0, got -1.0" in capsys.readouterr().err


@pytest.mark.parametrize("given,expected", [(["--negatives", "full"], (None, "popularity")),
                                            (["--negatives", "7", "--sampler", "uniform"], (7, "uniform")),
                                            (["--negatives", "auto"], ("auto", "popularity"))])
def test_output_options_round_trip_into_the_checkpoint(tmp_path, split_csv, given, expected):
    out = tmp_path / "ck"
    assert main(["train", "--data", str(split_csv), "--split-col", "part", "--train-value", "fit", "--test-value",
                 "eval", "--model", "elsa", "--dims", "4", "--epochs", "1", *given, "--out", str(out), "--quiet"]) == 0
    model = Checkpoint.load(out).config["model"]
    assert (model["n_negatives"], model["negatives"]) == expected


def test_input_dropout_option_round_trips_and_is_checked(tmp_path, split_csv, capsys):
    base = ["train", "--data", str(split_csv), "--split-col", "part", "--train-value", "fit", "--test-value", "eval",
            "--model", "elsa", "--dims", "4", "--epochs", "1", "--quiet"]
    assert main([*base, "--input-dropout", "0.25", "--out", str(tmp_path / "ck")]) == 0
    assert Checkpoint.load(tmp_path / "ck").config["model"]["input_dropout"] == 0.25
    assert main([*base, "--input-dropout", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "input_dropout must be a finite number >= 0.0 and < 1.0, got 1.0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_bad_negatives_option_is_refused(tmp_path, split_csv, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", str(split_csv), "--negatives", "many", "--out", str(tmp_path / "x")])
    assert info.value.code == 2
    assert "expected auto, full or a number of sampled items, got 'many'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
