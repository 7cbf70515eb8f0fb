"""Tests for elsa_index.recipes: a seeded recipe search on validation data drawn by the split's protocol."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.checkpoint import Checkpoint
from elsa_index.data import Interactions, Log, column_split, strong_generalization_split
from elsa_index.data.synthetic import make_synthetic
from elsa_index.errors import DataError, TrainingError
from elsa_index.models import ELSA
from elsa_index import recipes
from elsa_index.metrics import evaluate
from elsa_index.models.baselines import EASE
from elsa_index.recipes import REFERENCE_L2S, class_defaults, fit_recipe, search_recipe
from elsa_index.workflow import validation_split


@pytest.fixture(scope="module")
def log():
    return make_synthetic(n_users=160, n_items=50, n_clusters=4, seed=5)


@pytest.fixture(scope="module")
def fixed_split(log):
    """A fixed split: every third interaction of each user (in log order) is a test interaction."""
    order = np.lexsort((np.arange(len(log)), log.user))
    users, items = log.user[order], log.item[order]
    part = np.where(np.arange(len(users)) % 3 == 2, "test", "train")
    return column_split(Log.from_arrays(users, items, split=part))


@pytest.fixture(scope="module")
def users_split(log):
    return strong_generalization_split(Interactions.from_log(log), 30, seed=1)


def _with_other_test_data(split, seed):
    """The same split with different test histories and targets (random, same shapes)."""
    rng = np.random.default_rng(seed)
    shape = split.targets.shape
    fold = sp.csr_matrix((rng.random(shape) < 0.2).astype(np.float32))
    tgt = sp.csr_matrix((rng.random(shape) < 0.1).astype(np.float32))
    return dataclasses.replace(split, fold_in=fold, targets=tgt)


SEARCH = dict(lrs=(0.01, 0.05), widths=(4, 8), max_epochs=3, patience=1, budget_seconds=600.0,
              validation_users=40, seed=2)


def test_fixed_split_validation_comes_from_training_interactions_only(fixed_split):
    inner = validation_split(fixed_split, 40, holdout_fraction=0.25, seed=0)
    assert inner.protocol == "interactions"
    X = fixed_split.train.matrix
    rows = fixed_split.train.user_ids.index(inner.heldout_user_ids.ids)
    place = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.arange(len(rows)))), shape=(X.shape[0], len(rows)))
    held = (place @ inner.targets).tocsr()
    # The validation targets plus what the validation model trains on are exactly the training matrix:
    # no test interaction is among them.
    assert (inner.train.matrix + held != X).nnz == 0 and inner.train.matrix.multiply(held).nnz == 0


@pytest.mark.parametrize("which", ["fixed", "users"])
def test_search_never_reads_the_test_data(fixed_split, users_split, which):
    # Replacing the test histories and targets by random ones changes nothing in the search.
    split = fixed_split if which == "fixed" else users_split
    small = {**SEARCH, "widths": (4,)}
    a = search_recipe("elsa", split, **small)
    b = search_recipe("elsa", _with_other_test_data(split, 9), **small)
    assert [(t["lr"], t["dims"], t["score"], t["best_epoch"]) for t in a["trials"]] == \
        [(t["lr"], t["dims"], t["score"], t["best_epoch"]) for t in b["trials"]]
    assert a["validation"]["protocol"] == ("interactions" if which == "fixed" else "users")
    assert a["metric"] == ("hit_recall@20" if which == "fixed" else "recall@20")


def test_held_out_user_validation_draws_training_users(users_split):
    inner = validation_split(users_split, 0.25, seed=0)
    assert inner.protocol == "users" and inner.fold_in.shape[0] == round(0.25 * users_split.train.n_users)
    assert set(inner.heldout_user_ids.ids) <= set(users_split.train.user_ids.ids)
    assert set(inner.heldout_user_ids.ids).isdisjoint(users_split.heldout_user_ids.ids)
    with pytest.raises(DataError, match=r"fraction of validation users must be in \(0, 1\), got 1.5"):
        validation_split(users_split, 1.5)


def test_search_is_seeded_and_deterministic(fixed_split):
    a = search_recipe("elsa", fixed_split, **SEARCH)
    b = search_recipe("elsa", fixed_split, **SEARCH)
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"} | {  # noqa: E731
        "trials": [{k: v for k, v in t.items() if k != "seconds"} for t in r["trials"]],
        "reference": {k: v for k, v in r["reference"].items() if k != "seconds"}}
    assert strip(a) == strip(b)
    assert len(a["trials"]) == 5 and a["untried"] == []
    main = a["trials"][:4]
    assert {(t["lr"], t["dims"]) for t in main} == {(0.01, 4), (0.05, 4), (0.01, 8), (0.05, 8)}
    # then the refinement: the main search's winner again with input dropout
    top = max(main, key=lambda t: t["score"])
    assert (a["trials"][4]["lr"], a["trials"][4]["dims"], a["trials"][4]["input_dropout"]) == (top["lr"], top["dims"],
                                                                                               0.5)
    assert all("input_dropout" not in t for t in main) and a["refined"] == {"input_dropout": 0.5}
    chosen = a["trials"][a["chosen"]]
    assert chosen["score"] == max(t["score"] for t in a["trials"])
    assert (a["params"]["lr"], a["params"]["dims"], a["params"]["epochs"]) == (chosen["lr"], chosen["dims"],
                                                                               chosen["best_epoch"])
    # Another seed draws other validation interactions.
    c = search_recipe("elsa", fixed_split, **{**SEARCH, "seed": 3})
    assert [t["score"] for t in c["trials"]] != [t["score"] for t in a["trials"]]


def test_budget_limits_the_trials_and_the_defaults_go_first(fixed_split):
    d = class_defaults("elsa")
    assert d["lr"] == ELSA.lr and d["dims"] == ELSA.dims
    r = search_recipe("elsa", fixed_split, lrs=(0.05, d["lr"]), widths=(4, d["dims"]), max_epochs=2, patience=1,
                      budget_seconds=1e-6, validation_users=30, seed=0)
    assert len(r["trials"]) == 1 and len(r["untried"]) == 3 + 1  # and the refinement of the one trial
    assert r["untried"][-1] == {"lr": d["lr"], "dims": d["dims"], "input_dropout": 0.5}
    assert (r["trials"][0]["lr"], r["trials"][0]["dims"]) == (d["lr"], d["dims"])


def test_fit_recipe_records_the_recipe_in_the_checkpoint(fixed_split, tmp_path):
    recipe = search_recipe("elsa", fixed_split, **{**SEARCH, "widths": (4,), "lrs": (0.02,)})
    ckpt = fit_recipe(recipe, fixed_split)
    assert ckpt.config["model"]["lr"] == 0.02 and ckpt.dims == 4
    assert len(ckpt.history) == recipe["best_epoch"]
    assert list(ckpt.metrics) == ["hit_recall@20", "ndcg@20"]
    ckpt.save(tmp_path / "ck")
    assert Checkpoint.load(tmp_path / "ck").config["recipe"] == ckpt.config["recipe"]
    assert ckpt.config["recipe"]["trials"][recipe["chosen"]]["score"] == recipe["score"]


def test_search_errors(fixed_split):
    with pytest.raises(TrainingError, match="budget_seconds"):
        search_recipe("elsa", fixed_split, budget_seconds=0)
    with pytest.raises(TrainingError, match="dims"):
        search_recipe("elsa", fixed_split, widths=(0,), budget_seconds=1)
    with pytest.raises(TrainingError, match="not a recipe"):
        fit_recipe({"params": {}}, fixed_split)


def test_compressed_search_tries_pruning_lengths(users_split):
    base = dict(nnz=2, epochs=6, warmup_epochs=0, finetune_epochs=4, prune_steps=4, batch_size=64)
    r = search_recipe("compressed", users_split, base=base, lrs=(0.03,), widths=(8,), patience=2, refine=False,
                      budget_seconds=600.0, validation_users=30, seed=0)
    # The model's own length (6 - 0 - 4 = 2 epochs) first, then twice it.
    assert [t["prune_epochs"] for t in r["trials"]] == [2, 4]
    chosen = r["trials"][r["chosen"]]
    p = r["params"]
    assert p["warmup_epochs"] + chosen["prune_epochs"] + p["finetune_epochs"] == p["epochs"]
    assert p["epochs"] == max(r["best_epoch"], chosen["prune_epochs"])
    given = search_recipe("compressed", users_split, base=base, lrs=(0.03,), widths=(8,), prune_epochs=(3,),
                          refine=False, max_epochs=4, patience=1, budget_seconds=600.0, validation_users=30, seed=0)
    assert [t["prune_epochs"] for t in given["trials"]] == [3]
    with pytest.raises(TrainingError, match="exceeds the 4 epochs"):
        search_recipe("compressed", users_split, base=base, prune_epochs=(5,), max_epochs=4, budget_seconds=1)
    with pytest.raises(TrainingError, match="prune_epochs must be an integer >= 1"):
        search_recipe("compressed", users_split, base=base, prune_epochs=(0,), max_epochs=4, budget_seconds=1)
    with pytest.raises(TrainingError, match="Compressed ELSA only"):
        search_recipe("elsa", users_split, prune_epochs=(2,), budget_seconds=1)


def test_search_tries_input_dropouts_and_records_the_choice(users_split):
    d = class_defaults("elsa")
    r = search_recipe("elsa", users_split, lrs=(d["lr"],), widths=(d["dims"],), input_dropouts=(0.5, 0.0, 0.5),
                      max_epochs=3, patience=1, budget_seconds=600.0, validation_users=30, seed=0)
    # Duplicates count once; the model's own settings (input dropout: the class default 0) go first.
    assert [t["input_dropout"] for t in r["trials"]] == [0.0, 0.5]
    assert r["trials"][0]["score"] != r["trials"][1]["score"]  # the share changes the model
    assert r["params"]["input_dropout"] == r["trials"][r["chosen"]]["input_dropout"]
    own = search_recipe("elsa", users_split, base={"input_dropout": 0.5}, lrs=(d["lr"],), widths=(d["dims"],),
                        input_dropouts=(0.0, 0.5), max_epochs=2, patience=1, budget_seconds=1e-6,
                        validation_users=30, seed=0)
    assert [t["input_dropout"] for t in own["trials"]] == [0.5]  # base's share is the one tried first
    plain = search_recipe("elsa", users_split, lrs=(0.03,), widths=(8,), max_epochs=2, patience=1, refine=False,
                          budget_seconds=600.0, validation_users=30, seed=0)
    assert "input_dropout" not in plain["trials"][0] and plain["params"]["input_dropout"] == 0.0
    for bad in ((1.0,), (-0.2,), ()):
        with pytest.raises(TrainingError, match="input_dropouts"):
            search_recipe("elsa", users_split, input_dropouts=bad, budget_seconds=1)


def test_compressed_search_tries_sparse_starts(users_split):
    base = dict(nnz=2, epochs=4, warmup_epochs=0, finetune_epochs=2, prune_steps=4, batch_size=64)
    r = search_recipe("compressed", users_split, base=base, lrs=(0.03,), widths=(8, 16),
                      start_nnzs=(3, None, 12, 3), patience=1, budget_seconds=600.0, validation_users=30, seed=0,
                      refine=False)
    # Duplicates count once; a start at or above a width is that width's dense start (one trial per width).
    got = [(t["dims"], t["start_nnz"]) for t in r["trials"] if t["prune_epochs"] == 2]
    assert sorted(got, key=str) == sorted([(8, 3), (8, None), (16, 3), (16, None), (16, 12)], key=str)
    assert r["params"]["start_nnz"] == r["trials"][r["chosen"]]["start_nnz"]
    assert r["params"]["dims"] == r["trials"][r["chosen"]]["dims"]
    # The model's own start goes first at the class defaults (here a sparse start of 3).
    d = class_defaults("compressed")
    for own, first in ((None, None), (3, 3)):
        o = search_recipe("compressed", users_split, base={**base, "start_nnz": own}, lrs=(d["lr"],),
                          widths=(d["dims"],), prune_epochs=(2,), start_nnzs=(3, None), patience=1, refine=False,
                          budget_seconds=1e-6, validation_users=30, seed=0)
        assert [t["start_nnz"] for t in o["trials"]] == [first]
    with pytest.raises(TrainingError, match="nnz must be an integer in \\[1, 1\\]"):  # a start below nnz
        search_recipe("compressed", users_split, base=base, widths=(8,), start_nnzs=(1,), budget_seconds=1)
    with pytest.raises(TrainingError, match="start_nnzs is empty"):
        search_recipe("compressed", users_split, base=base, start_nnzs=(), budget_seconds=1)
    with pytest.raises(TrainingError, match="Compressed ELSA only"):
        search_recipe("elsa", users_split, start_nnzs=(4,), budget_seconds=1)


def test_refinement_tries_the_winner_with_dropout_and_a_sparse_start(users_split):
    base = dict(nnz=2, epochs=4, warmup_epochs=0, finetune_epochs=2, prune_steps=4, batch_size=64)
    r = search_recipe("compressed", users_split, base=base, lrs=(0.01, 0.03), widths=(8,), patience=1,
                      budget_seconds=600.0, validation_users=30, seed=0)
    main, refined = r["trials"][:2], r["trials"][2:]
    assert sorted(t["lr"] for t in main) == [0.01, 0.03]
    top = max(main, key=lambda t: (t["score"], -main.index(t)))
    # the winner with dropout, with a sparse start of 2 x nnz = 4, and with both; nothing else
    assert [(t["lr"], t.get("input_dropout"), t.get("start_nnz")) for t in refined] == [
        (top["lr"], 0.0, 4), (top["lr"], 0.5, None), (top["lr"], 0.5, 4)]
    assert r["refined"] == {"input_dropout": 0.5, "start_nnz": 4}
    chosen = r["trials"][r["chosen"]]
    assert chosen["score"] == max(t["score"] for t in r["trials"])
    assert (r["params"]["input_dropout"], r["params"]["start_nnz"]) == (chosen.get("input_dropout", 0.0),
                                                                        chosen.get("start_nnz"))
    # settings given in base, or searched explicitly, are not refined; refine=False turns the stage off
    own = search_recipe("compressed", users_split, base={**base, "start_nnz": 4, "input_dropout": 0.25},
                        lrs=(0.03,), widths=(8,), patience=1, budget_seconds=600.0, validation_users=30, seed=0)
    assert len(own["trials"]) == 1 and own["refined"] == {}
    given = search_recipe("compressed", users_split, base=base, lrs=(0.03,), widths=(8,), input_dropouts=(0.0,),
                          patience=1, budget_seconds=600.0, validation_users=30, seed=0)
    assert [t.get("start_nnz") for t in given["trials"]] == [None, 4] and given["refined"] == {"start_nnz": 4}
    off = search_recipe("compressed", users_split, base=base, lrs=(0.03,), widths=(8,), patience=1, refine=False,
                        budget_seconds=600.0, validation_users=30, seed=0)
    assert len(off["trials"]) == 1 and off["refined"] == {}
    # a start of 2 x nnz at or above the width would be the dense start again: only dropout is tried
    wide = search_recipe("compressed", users_split, base={**base, "nnz": 4}, lrs=(0.03,), widths=(8,), patience=1,
                         budget_seconds=600.0, validation_users=30, seed=0)
    assert [(t.get("input_dropout"), t.get("start_nnz")) for t in wide["trials"]] == [(None, None), (0.5, None)]
    assert wide["refined"] == {"input_dropout": 0.5}


@pytest.mark.parametrize("which", ["fixed", "users"])
def test_reference_is_ease_on_the_same_validation_data(fixed_split, users_split, which, caplog):
    split = fixed_split if which == "fixed" else users_split
    r = search_recipe("elsa", split, **{**SEARCH, "widths": (4,), "lrs": (0.02,)}, refine=False)
    ref = r["reference"]
    # EASE fitted here on the validation draw the search used, never on the test data
    inner = validation_split(split, SEARCH["validation_users"], seed=SEARCH["seed"])
    scores = {l2: evaluate(EASE(l2=l2).fit(inner.train.matrix).score, inner.fold_in, inner.targets, ks=(),
                           metrics=(r["metric"],))[r["metric"]] for l2 in REFERENCE_L2S}
    assert ref["scores"] == pytest.approx({str(k): v for k, v in scores.items()})
    best = max(REFERENCE_L2S, key=lambda v: (scores[v], -v))
    assert (ref["model"], ref["l2"]) == ("ease", best) and ref["score"] == pytest.approx(scores[best])
    assert ref["ratio"] == pytest.approx(r["score"] / scores[best])
    # 4 dims on this data are far under EASE: the search says so
    assert ref["ratio"] < recipes.REFERENCE_RATIO
    assert "scores %.3f of EASE" % ref["ratio"] in caplog.text
    # random test data changes nothing
    other = search_recipe("elsa", _with_other_test_data(split, 4), **{**SEARCH, "widths": (4,), "lrs": (0.02,)},
                          refine=False)
    assert other["reference"]["scores"] == ref["scores"]


def test_reference_can_be_skipped(fixed_split, monkeypatch):
    small = {**SEARCH, "widths": (4,), "lrs": (0.02,)}
    assert search_recipe("elsa", fixed_split, **small, refine=False, reference=False)["reference"] is None
    monkeypatch.setattr(recipes, "REFERENCE_MAX_SIZE", 10)  # the data's 50 items: over the limit
    ref = search_recipe("elsa", fixed_split, **small, refine=False)["reference"]
    assert ref == {"model": "ease", "skipped": "EASE's system of 50 x 50 is larger than 10 (run `elsa-index "
                                               "baseline ease` for it)"}
    monkeypatch.undo()
    from elsa_index import _memory

    # enough memory to train 4 dims (about 270 KiB), not for EASE's plan (about 256 MiB)
    monkeypatch.setattr(_memory, "available_bytes", lambda: 200 * 2**20)
    ref = search_recipe("elsa", fixed_split, **small, refine=False)["reference"]
    assert set(ref) == {"model", "skipped"}
    assert ref["skipped"].startswith("EASE's system of 50 x 50 needs about ")
    assert ref["skipped"].endswith("but only 200.0 MiB is available")
