"""Adversarial CLI inputs: every bad input ends in one ``error: ...`` line and exit 2 (never a traceback),
a value the user gave is never replaced by a default, and nothing on disk changes when a command fails.

One case per class of hostile input; tiny fixtures, in-process ``main([...])`` where possible, a
subprocess only where the failure mode is the process itself (a closed pipe).
"""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import scipy.sparse as sp

from elsa_index import _memory
from elsa_index.checkpoint import Checkpoint
from elsa_index.cli import main
from elsa_index.data.synthetic import make_synthetic
from elsa_index.errors import BackendError, TrainingError
from elsa_index.indexers import _jvm, get_backend
from elsa_index.models import ELSA, CompressedELSA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, sparse_checkpoint):
    path = tmp_path_factory.mktemp("safety") / "ck"
    sparse_checkpoint.save(path)
    return path


@pytest.fixture(scope="module")
def index_dir(ckpt_dir):
    out = ckpt_dir.parent / "idx"
    assert main(["build", str(ckpt_dir), "--backend", "sparse", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def log_csv(tmp_path_factory):
    log = make_synthetic(n_users=120, n_items=60, n_clusters=4, seed=3)
    path = tmp_path_factory.mktemp("safety-data") / "log.csv"
    pcsv.write_csv(pa.table({"uid": log.user, "iid": log.item, "stars": np.full(len(log), 5.0)}), path)
    return path


def _snapshot(root):
    """{relative path: bytes} of every file under ``root`` (to prove nothing changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _fails(capsys, argv, *needles):
    """Run the CLI; assert exit 2, one ``error:`` line naming ``needles``, no traceback; return stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


def _train_args(log_csv, out, *extra):
    return [str(a) for a in ("train", "--data", log_csv, "--user-col", "uid", "--item-col", "iid", "--heldout-users",
                             "10", "--quiet", "--no-eval", "--out", out, *extra)]


# ------------------------------------------------------------------ train / data


def test_column_named_for_two_roles(tmp_path, log_csv, capsys):
    _fails(capsys, _train_args(log_csv, tmp_path / "o", "--rating-col", "uid", "--min-rating", "4"),
           "'uid'", "user column", "rating column")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--dims", "0"], "dims must be an integer >= 1, got 0"),
    (["--model", "elsa", "--epochs", "0"], "epochs must be an integer >= 1, got 0"),
    (["--prune-steps", "1000000000", "--dims", "8", "--nnz", "2"], "prune_steps must be at most"),
])
def test_given_zero_is_refused_not_replaced_by_default(tmp_path, log_csv, capsys, extra, needle):
    _fails(capsys, _train_args(log_csv, tmp_path / "o", *extra), needle)


def test_given_dims_and_epochs_are_used(monkeypatch, tmp_path, log_csv):
    seen = {}
    import elsa_index.cli as cli

    def fake_make_model(kind, **params):
        seen.update(params, kind=kind)
        raise TrainingError("stop here")

    monkeypatch.setattr(cli, "make_model", fake_make_model)
    assert main(_train_args(log_csv, tmp_path / "o", "--model", "elsa", "--dims", "3", "--epochs", "1")) == 2
    assert seen["dims"] == 3 and seen["epochs"] == 1
    seen.clear()
    assert main(_train_args(log_csv, tmp_path / "o", "--model", "compressed")) == 2
    # Left out: not passed, so the model class's own default applies (the one source of defaults).
    assert seen["kind"] == "compressed" and "dims" not in seen and "epochs" not in seen


def test_huge_dims_refused_before_allocating(tmp_path, log_csv, capsys):
    _fails(capsys, _train_args(log_csv, tmp_path / "o", "--model", "elsa", "--dims", "100000000000", "--epochs", "1"),
           "dims=100000000000", "memory", "lower --dims")


def test_huge_negatives_refused(tmp_path, log_csv, capsys):
    _fails(capsys, _train_args(log_csv, tmp_path / "o", "--model", "elsa", "--dims", "4", "--epochs", "1",
                               "--negatives", "100000000000"), "n_negatives=100000000000", "memory")


def test_output_under_a_file_refused_before_training(tmp_path, log_csv, capsys):
    (tmp_path / "f").write_text("mine")
    _fails(capsys, _train_args(log_csv, tmp_path / "f" / "ck"), "is not a directory")
    assert (tmp_path / "f").read_text() == "mine"


def test_model_memory_check_unit(monkeypatch):
    monkeypatch.setattr(_memory, "available_bytes", lambda: 1 << 20)  # a 1 MiB machine
    X = sp.csr_matrix(np.eye(50, dtype=np.float32))
    with pytest.raises(TrainingError, match="dims=4096"):
        ELSA(4096, epochs=1, progress=False).fit(X)
    with pytest.raises(TrainingError, match="prune_steps"):
        CompressedELSA(8, 2, epochs=3, prune_steps=10**9).check_params()


# ------------------------------------------------------------------ recommend


@pytest.mark.parametrize("extra, needle", [
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--batch-size", "-1"], "--batch-size must be a positive integer"),
    (["--k", "100000000000"], "--k must be a positive integer"),
    (["--k", "2000000000"], "memory"),
])
def test_recommend_bad_sizes(index_dir, capsys, monkeypatch, extra, needle):
    monkeypatch.setattr(_memory, "available_bytes", lambda: 1 << 30)  # the same answer on any machine
    _fails(capsys, ["recommend", index_dir, "--history", "item0001", *extra], needle)


@pytest.mark.parametrize("content, needle", [
    (b'["item0001"]\n\xff\xfe oops\n', "line 2 is not UTF-8"),
    (b"[" * 200_000 + b"]" * 200_000 + b"\n", "nests JSON"),
    (b'{"user": NaN, "history": ["item0001"]}\n', "NaN is not valid JSON"),
    (b'{"user": 1e999, "history": ["item0001"]}\n', "out of range"),
    (b'["item0001", null]\n', "item ids must be strings or integers"),
    (b'{"history": "item0001"}\n', "expected a JSON list"),
    (b"not json\n", "line 1 is not valid JSON"),
])
def test_recommend_hostile_input_file(tmp_path, index_dir, capsys, content, needle):
    (tmp_path / "in.jsonl").write_bytes(content)
    (tmp_path / "out.jsonl").write_text("previous results\n")
    _fails(capsys, ["recommend", index_dir, "--input", tmp_path / "in.jsonl", "--output", tmp_path / "out.jsonl"],
           needle)
    assert (tmp_path / "out.jsonl").read_text() == "previous results\n"


def test_recommend_input_path_problems(tmp_path, index_dir, capsys):
    _fails(capsys, ["recommend", index_dir, "--input", tmp_path], "cannot read")
    _fails(capsys, ["recommend", index_dir, "--input", tmp_path / "missing.jsonl"], "cannot read")
    os.symlink(tmp_path / "loop-a", tmp_path / "loop-b")
    os.symlink(tmp_path / "loop-b", tmp_path / "loop-a")
    _fails(capsys, ["recommend", index_dir, "--input", tmp_path / "loop-a"], "cannot read")


def test_recommend_output_path_checked_first(tmp_path, index_dir, capsys):
    _fails(capsys, ["recommend", index_dir, "--history", "item0001", "--output", tmp_path / "nodir" / "r.jsonl"],
           "does not exist")
    _fails(capsys, ["recommend", index_dir, "--history", "item0001", "--output", tmp_path], "is a directory")
    assert list(tmp_path.iterdir()) == []


def test_recommend_empty_input_and_history(tmp_path, index_dir, capsys):
    (tmp_path / "e.jsonl").write_text("\n[]\n")
    assert main(["recommend", str(index_dir), "--input", str(tmp_path / "e.jsonl")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["fallback"] is True  # an empty history is served from popularity


def test_broken_pipe_exits_quietly(ckpt_dir):
    """``elsa-index info CK | head -0``: no traceback, no 'Exception ignored' at exit, SIGPIPE status."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, "-m", "elsa_index", "info", str(ckpt_dir)], stdout=w,
                              stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO)
    finally:
        os.close(w)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


# ------------------------------------------------------------------ import-npz


def _csr_npz(path, **override):
    parts = dict(format=np.array("csr"), shape=np.array([3, 5]), data=np.ones(2, np.float32),
                 indices=np.array([0, 1], np.int32), indptr=np.array([0, 1, 2, 2], np.int32))
    parts.update(override)
    np.savez(path, **parts)
    return path


def _text_file(path):
    path.write_text("hello")
    return path


@pytest.mark.parametrize("make, needle", [
    (lambda p: _text_file(p.with_suffix(".npz")), "not a .npz file"),
    (lambda p: _text_file(p.with_suffix(".npy")), "not a .npy file"),
    (lambda p: _csr_npz(p.with_suffix(".npz"), shape=np.array([10**12, 5])), "memory"),
    (lambda p: _csr_npz(p.with_suffix(".npz"), shape=np.array([3.5, 5.0])), "two non-negative integers"),
    (lambda p: _csr_npz(p.with_suffix(".npz"), indptr=np.array([0, 1, 5, 2])), "'indptr' must start at 0"),
    (lambda p: _csr_npz(p.with_suffix(".npz"), indices=np.array([0, 9])), "'indices' hold values outside"),
    (lambda p: _csr_npz(p.with_suffix(".npz"), format=np.array(5)), "declares sparse format"),
])
def test_import_hostile_embedding_files(tmp_path, capsys, make, needle):
    path = make(tmp_path / "emb")
    _fails(capsys, ["import-npz", path, "--out", tmp_path / "ck"], needle)
    assert not (tmp_path / "ck").exists()


def test_import_npy_declaring_more_than_it_holds(tmp_path, capsys):
    from numpy.lib import format as npformat

    with open(tmp_path / "big.npy", "wb") as f:
        npformat.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 5)})
        f.write(b"\0" * 40)
    _fails(capsys, ["import-npz", tmp_path / "big.npy", "--out", tmp_path / "ck"], "truncated or corrupt")


@pytest.mark.parametrize("ids, needle", [
    (b"a\n\xff\nc\n", "line 2 is not UTF-8"),
    (b"a\n\nb\n", "line 2 is empty"),
    (b"a\na\nb\n", "unique"),
])
def test_import_bad_item_id_files(tmp_path, capsys, ids, needle):
    np.save(tmp_path / "e.npy", np.eye(3, dtype=np.float32))
    (tmp_path / "ids.txt").write_bytes(ids)
    _fails(capsys, ["import-npz", tmp_path / "e.npy", "--item-ids", tmp_path / "ids.txt", "--out", tmp_path / "ck"],
           needle)


# ------------------------------------------------------------------ info / evaluate (manifests)


def _edited_copy(src, dst, edit):
    import shutil

    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.update(metrics={"recall@20": "high"}), "manifest metric 'recall@20' is 'high'; expected a finite number"),
    (lambda m: m.update(metrics=[1, 2]), "manifest field 'metrics' is list; expected an object"),
    (lambda m: m.update(n_items="300"), "n_items"),
])
def test_info_manifest_of_wrong_types(tmp_path, ckpt_dir, capsys, edit, needle):
    ck = _edited_copy(ckpt_dir, tmp_path / "ck", edit)
    _fails(capsys, ["info", ck], needle)
    _fails(capsys, ["info", ck, "--json"], needle)


def test_evaluate_recorded_data_spec_of_wrong_type(tmp_path, ckpt_dir, capsys):
    ck = _edited_copy(ckpt_dir, tmp_path / "ck", lambda m: m.update(data={"spec": {"source": 5}}))
    _fails(capsys, ["evaluate", ck], "data setting 'source' must be str")


def test_evaluate_absurd_cutoff(tmp_path, ckpt_dir, capsys):
    _fails(capsys, ["evaluate", ckpt_dir, "--data", "synthetic", "--metrics", "recall@100000000000"],
           "cut-off of 'recall@100000000000'")


# ------------------------------------------------------------------ operating-system failures during save


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_disk_full_or_read_only_during_save(tmp_path, ckpt_dir, monkeypatch, capsys, err):
    import elsa_index._io as io_mod

    def failing_save(path, array):
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(io_mod, "save_array", failing_save)
    monkeypatch.setattr("elsa_index.checkpoint.save_array", failing_save, raising=False)
    np.save(tmp_path / "e.npy", np.eye(3, dtype=np.float32))
    stderr = _fails(capsys, ["import-npz", tmp_path / "e.npy", "--out", tmp_path / "ck"], os.strerror(err))
    assert "e.npy" not in stderr.split(":")[0]  # the path named is the one being written
    assert not (tmp_path / "ck").exists()


def test_unexpected_exception_is_one_line(monkeypatch, ckpt_dir, capsys):
    import elsa_index.cli as cli

    def boom(*a, **k):
        raise TypeError("'int' object is not a mapping")

    monkeypatch.setattr(cli.Checkpoint, "load", boom)
    _fails(capsys, ["info", ckpt_dir], "unexpected TypeError", "-v")


# ------------------------------------------------------------------ build parameters, homepage


@pytest.mark.parametrize("param, needle", [
    ("M=100000000", "M must be an integer <= 65,536"),
    ("ef_search=100000000000", "ef_search must be an integer <="),
    ("threads=100000", "threads must be an integer <="),
])
def test_faiss_absurd_parameters(param, needle):
    name, value = param.split("=")
    with pytest.raises(BackendError, match=needle):
        get_backend("faiss-hnsw")(**{name: int(value)})


def test_hnsw_graph_memory_estimated(monkeypatch):
    monkeypatch.setattr(_memory, "available_bytes", lambda: 1 << 20)
    with pytest.raises(BackendError, match="M=64"):
        get_backend("faiss-hnsw")(M=64)._check_graph_memory(16, 10_000)


def test_homepage_absurd_k(index_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_memory, "available_bytes", lambda: 1 << 30)
    _fails(capsys, ["homepage", index_dir, "--history", "item0001", "--k", "100000000000", "--out",
                    tmp_path / "h.html"], "--k must be")
    _fails(capsys, ["homepage", index_dir, "--history", "item0001", "--k", "1000000000", "--out",
                    tmp_path / "h.html"], "memory")
    assert not (tmp_path / "h.html").exists()


# ------------------------------------------------------------------ JVM settings


@pytest.mark.parametrize("heap", ["6m", "63m", "1k", "65535k"])
def test_jvm_heap_floor(monkeypatch, heap):
    monkeypatch.setenv(_jvm.HEAP_ENV, heap)
    with pytest.raises(BackendError, match="too small a JVM heap.*at least 64m"):
        _jvm.heap_setting()


def test_jvm_heap_floor_accepts(monkeypatch):
    for heap in ("64m", "65536k", "1g"):
        monkeypatch.setenv(_jvm.HEAP_ENV, heap)
        assert _jvm.heap_setting() == heap


def test_jvm_crash_logs_go_to_a_temp_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = _jvm._error_file_option()
    assert opt.startswith("-XX:ErrorFile=") and "%p" in opt
    target = os.path.dirname(opt.split("=", 1)[1])
    assert os.path.isdir(target) and not os.path.abspath(target).startswith(str(tmp_path))


def test_jvm_heap_refused_through_cli(index_dir, ckpt_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(_jvm.HEAP_ENV, "6m")
    monkeypatch.setattr(_jvm, "_runtime", None)
    _fails(capsys, ["build", ckpt_dir, "--backend", "lucene", "--out", tmp_path / "lx", "--quiet"],
           "too small a JVM heap")
    assert list(tmp_path.iterdir()) == [] and not any(p.name.startswith("hs_err") for p in tmp_path.iterdir())
