"""Verified files: crafted or corrupted checkpoints, indexes and segments fail at open with a clear error.

Every artefact records the size and sha256 of its files (or a digest of its
arrays, for segments) and every array is range-checked at load. Each case
damages a fresh copy of a small artefact in one way; the copies are then
opened (and, where they open, queried) in a subprocess, so a crash of
compiled code (SIGSEGV) fails the test instead of killing pytest. Two kinds
of damage: the file alone (the recorded digest catches it) and the file with
its manifest re-recorded, as a crafted directory would be (the range checks
catch it, also with ``verify=False``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from elsa_index._io import array_digest, record_files
from elsa_index.checkpoint import Checkpoint
from elsa_index.errors import BackendError, CheckpointError
from elsa_index.indexers import get_backend
from elsa_index.indexers.base import Backend
from elsa_index.search import build_index, open_index
from elsa_index.segments import discover_segments

# Opens each case in turn; one JSON line per case, and a "start" line first so a crash names its case.
_RUNNER = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    warnings.simplefilter("ignore")
    from elsa_index.errors import ElsaIndexError
    from elsa_index.checkpoint import Checkpoint
    from elsa_index.indexers.base import Backend
    from elsa_index.search import open_index
    from elsa_index.segments import Segments
    for case in json.loads(sys.stdin.read()):
        print(json.dumps({"start": case["name"]}), flush=True)
        kind, path, kw = case["kind"], case["path"], case.get("kwargs", {})
        try:
            if kind == "checkpoint":
                obj = Checkpoint.load(path, **kw)
                obj.score_candidates(np.ones((1, obj.dims), np.float32), np.arange(obj.n_items)[None, :])
            elif kind == "index":
                with open_index(path, **kw) as ix:
                    ix.recommend([list(ix.item_ids[:3])], k=10)
                    ix.search(np.ones((2, ix.checkpoint.dims), np.float32), k=10)
            elif kind == "backend":
                with Backend.load(path, **kw) as be:
                    be.search(np.ones((2, be.dims_), np.float32), k=10)
            elif kind == "segments":
                Segments.load(path, **kw).describe()
            out = {"name": case["name"], "ok": True}
        except ElsaIndexError as exc:
            out = {"name": case["name"], "error": type(exc).__name__, "message": str(exc)}
        except Exception as exc:  # not a clear error: reported as such, the test fails
            out = {"name": case["name"], "error": "RAW " + type(exc).__name__, "message": repr(exc)}
        print(json.dumps(out), flush=True)
""")


def _run(cases: list[dict], timeout: int = 240) -> dict[str, dict]:
    """Open every case in one fresh interpreter; a crash or a raw exception fails the test, naming the case."""
    proc = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=timeout)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    started = [x["start"] for x in lines if "start" in x]
    assert proc.returncode == 0, (f"the process died (exit {proc.returncode}) while opening case "
                                  f"{started[-1] if started else '?'}: {proc.stderr[-2000:]}")
    results = {x["name"]: x for x in lines if "name" in x}
    assert set(results) == {c["name"] for c in cases}
    return results


def _check(results: dict, expected: dict[str, str | None]) -> None:
    """Each case: None = opens and answers; else an ElsaIndexError whose message holds one of the '|'-parts."""
    problems = []
    for name, want in expected.items():
        got = results[name]
        if want is None:
            if not got.get("ok"):
                problems.append(f"{name}: expected to open, got {got}")
        elif got.get("ok") or got["error"].startswith("RAW") or not any(p in got["message"] for p in want.split("|")):
            problems.append(f"{name}: expected an error with {want!r}, got {got}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------- damage helpers


def _npy(path: Path, change) -> None:
    """Rewrite one .npy file with ``change(array)`` (a new array, any dtype)."""
    np.save(path, change(np.load(path)), allow_pickle=False)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 17])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _largest(folder: Path) -> str:
    """The largest file below ``folder``, relative to the index directory (two levels up)."""
    f = max((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    return f.relative_to(folder.parent.parent).as_posix()


def _flip_sign(a):
    a = a.copy()
    a[: max(1, len(a) // 3)] *= -1
    return a


def _rerecord_checkpoint(path: Path) -> None:
    """What a crafted checkpoint would do: record the digests of the damaged files."""
    m = json.loads((path / "manifest.json").read_text())
    m["files"] = record_files(path, list(m["files"]))
    (path / "manifest.json").write_text(json.dumps(m))


def _rerecord_backend(path: Path) -> None:
    m = json.loads((path / "backend.json").read_text())
    m["files"] = record_files(path, skip=("backend.json",))
    (path / "backend.json").write_text(json.dumps(m))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- checkpoints

_CKPT_DAMAGE = {
    # name: (file, change, re-record the manifest?, expected message parts)
    "flip_sign": ("data.npy", lambda p: _npy(p, _flip_sign), False, "data.npy does not match the sha256"),
    "flip_popularity": ("popularity.npy", lambda p: _npy(p, lambda a: a[::-1].copy()), False,
                        "popularity.npy does not match"),
    "truncated_ids": ("item_ids.npy", _truncate, False, "item_ids.npy has"),
    "index_out_of_range": ("indices.npy", lambda p: _npy(p, lambda a: a + 1000), True, "column indices outside"),
    "negative_index": ("indices.npy", lambda p: _npy(p, lambda a: a - 1000), True, "column indices outside"),
    "indptr_not_monotone": ("indptr.npy", lambda p: _npy(p, lambda a: np.r_[a[:1], a[2:3], a[1:2], a[3:]]), True,
                            "not monotone"),
    "nan_value": ("data.npy", lambda p: _npy(p, lambda a: np.where(np.arange(len(a)) == 3, np.nan, a)
                                             .astype(np.float32)), True, "NaN"),
    "indices_as_float": ("indices.npy", lambda p: _npy(p, lambda a: a.astype(np.float64)), True, "dtypes"),
    "truncated_npy": ("data.npy", _truncate, True, "data.npy"),
    "popularity_negative": ("popularity.npy", lambda p: _npy(p, lambda a: a - 10**6), True, "negative counts"),
    "popularity_float": ("popularity.npy", lambda p: _npy(p, lambda a: a.astype(np.float64)), True,
                         "expected int64 counts"),
    "popularity_short": ("popularity.npy", lambda p: _npy(p, lambda a: a[:-1]), True, "shape"),
    "ids_duplicate": ("item_ids.npy", lambda p: _npy(p, lambda a: np.r_[a[:1], a[:-1]]), True, "item_ids.npy"),
    "ids_as_int": ("item_ids.npy", lambda p: _npy(p, lambda a: np.arange(len(a))), True, "unicode"),
}


def test_damaged_checkpoints_fail_at_load(sparse_checkpoint, tmp_path):
    base = sparse_checkpoint.save(tmp_path / "ck")
    cases, expected = [], {}
    for name, (file, change, rerecord, want) in _CKPT_DAMAGE.items():
        p = _copy(base, tmp_path / name)
        change(p / file)
        if rerecord:
            _rerecord_checkpoint(p)
            cases.append({"name": name + "/no-verify", "kind": "checkpoint", "path": str(p),
                          "kwargs": {"verify": False}})
            expected[name + "/no-verify"] = want
        cases.append({"name": name, "kind": "checkpoint", "path": str(p), "kwargs": {"mmap": True}})
        expected[name] = want
    cases.append({"name": "intact", "kind": "checkpoint", "path": str(base)})
    expected["intact"] = None
    _check(_run(cases), expected)


def test_checkpoint_manifest_without_digests(sparse_checkpoint, tmp_path):
    base = sparse_checkpoint.save(tmp_path / "ck")
    m = json.loads((base / "manifest.json").read_text())
    assert m["format_version"] == 2 and set(m["files"]) == {
        "data.npy", "indices.npy", "indptr.npy", "item_ids.npy", "popularity.npy"}
    assert all(len(v["sha256"]) == 64 and v["bytes"] > 0 for v in m["files"].values())

    def variant(name, edit):
        p = _copy(base, tmp_path / name)
        mm = json.loads(json.dumps(m))
        edit(mm)
        (p / "manifest.json").write_text(json.dumps(mm))
        return p

    # Format 2 without 'files': refused (a save always writes them).
    p = variant("no_files", lambda mm: mm.pop("files"))
    with pytest.raises(CheckpointError, match="lacks the field 'files'"):
        Checkpoint.load(p)
    assert Checkpoint.load(p, verify=False).fingerprint == sparse_checkpoint.fingerprint
    # Format 1 (the previous release) with a fingerprint: loads, verified by the fingerprint.
    p = variant("v1", lambda mm: (mm.pop("files"), mm.update(format_version=1)))
    back = Checkpoint.load(p)
    assert back.fingerprint == sparse_checkpoint.fingerprint
    _npy(p / "data.npy", _flip_sign)
    with pytest.raises(CheckpointError, match="fingerprint"):
        Checkpoint.load(p)
    # Format 1 without a fingerprint: nothing to verify against, refused unless verify=False.
    p = variant("v1_no_fp", lambda mm: (mm.pop("files"), mm.pop("fingerprint"), mm.update(format_version=1)))
    with pytest.raises(CheckpointError, match="neither file digests nor a fingerprint"):
        Checkpoint.load(p)
    assert Checkpoint.load(p, verify=False).fingerprint == sparse_checkpoint.fingerprint
    # A malformed 'files' entry or a bad fingerprint is a clear error too.
    p = variant("bad_files", lambda mm: mm["files"]["data.npy"].update(bytes="12"))
    with pytest.raises(CheckpointError, match="'files' must map"):
        Checkpoint.load(p)
    p = variant("bad_fp", lambda mm: mm.update(fingerprint=["x"]))
    with pytest.raises(CheckpointError, match="fingerprint must be"):
        Checkpoint.load(p)
    p = variant("escape", lambda mm: mm["files"].update({"../ck/data.npy": mm["files"]["data.npy"]}))
    with pytest.raises(CheckpointError, match="not a path inside"):
        Checkpoint.load(p)


def test_checkpoint_constructor_refuses_bad_popularity(sparse_checkpoint):
    emb, ids = sparse_checkpoint.embeddings, sparse_checkpoint.item_ids
    for pop in (np.full(emb.shape[0], -1), np.full(emb.shape[0], np.nan)):
        with pytest.raises(CheckpointError, match="non-negative"):
            Checkpoint(emb, ids, pop)


# -------------------------------------------------------------------- indexes


def _index_cases(base: Path, tmp_path: Path, damages: dict) -> tuple[list, dict]:
    cases, expected = [], {}
    for name, (file, change, rerecord, want) in damages.items():
        p = _copy(base, tmp_path / name)
        change(p / file)
        if rerecord == "backend":
            _rerecord_backend(p / "backend")
        elif rerecord == "checkpoint":
            _rerecord_checkpoint(p / "checkpoint")
        if rerecord:
            cases.append({"name": name + "/no-verify", "kind": "index", "path": str(p),
                          "kwargs": {"verify": False}})
            expected[name + "/no-verify"] = want
        cases.append({"name": name, "kind": "index", "path": str(p)})
        expected[name] = want
    cases.append({"name": "intact", "kind": "index", "path": str(base)})
    expected["intact"] = None
    return cases, expected


_SPARSE_DAMAGE = {
    "postings_flip_sign": ("backend/postings_data.npy", lambda p: _npy(p, _flip_sign), False,
                           "postings_data.npy does not match the sha256"),
    "checkpoint_flip_sign": ("checkpoint/data.npy", lambda p: _npy(p, _flip_sign), False,
                             "checkpoint/data.npy does not match"),
    "popularity_edit": ("checkpoint/popularity.npy", lambda p: _npy(p, lambda a: a[::-1].copy()), False,
                        "popularity.npy does not match"),
    # (ids widened first: the blocked postings store uint16 ids, which cannot hold the out-of-range value)
    "postings_out_of_range": ("backend/postings_indices.npy", lambda p: _npy(p, lambda a: a.astype(np.int64) + 10**6),
                              "backend", "column indices outside"),
    "postings_negative": ("backend/postings_indices.npy", lambda p: _npy(p, lambda a: a.astype(np.int64) - 10**6),
                          "backend", "column indices outside"),
    "postings_indptr": ("backend/postings_indptr.npy", lambda p: _npy(p, lambda a: a[::-1].copy()), "backend",
                        "postings_"),
    "postings_nan": ("backend/postings_data.npy", lambda p: _npy(p, lambda a: np.full_like(a, np.nan)), "backend",
                     "NaN"),
    "postings_dtype": ("backend/postings_indices.npy", lambda p: _npy(p, lambda a: a.astype(np.float32)),
                       "backend", "dtypes"),
    "postings_truncated": ("backend/postings_data.npy", _truncate, "backend", "postings_data.npy"),
    "stray_file": ("backend/extra.npy", lambda p: np.save(p, np.zeros(3)), False, "not recorded in backend.json"),
    "manifest_items": ("backend/backend.json", lambda p: p.write_text(
        json.dumps({**json.loads(p.read_text()), "n_items": 10**6})), False, "the manifest is corrupted"),
    "manifest_type": ("backend/backend.json", lambda p: p.write_text(
        json.dumps({**json.loads(p.read_text()), "dims": "64"})), False, "dims must be a non-negative integer"),
}


def test_damaged_sparse_index_fails_at_open(sparse_checkpoint, tmp_path):
    base = tmp_path / "ix"
    build_index(sparse_checkpoint, "sparse", base).close()
    m = json.loads((base / "backend" / "backend.json").read_text())
    assert m["format_version"] == 2 and set(m["files"]) == {
        "postings_data.npy", "postings_indices.npy", "postings_indptr.npy"}
    cases, expected = _index_cases(base, tmp_path, _SPARSE_DAMAGE)
    _check(_run(cases), expected)


def test_old_backend_directory_refused_unless_unverified(sparse_checkpoint, tmp_path):
    base = tmp_path / "ix"
    build_index(sparse_checkpoint, "sparse", base).close()
    p = base / "backend" / "backend.json"
    m = json.loads(p.read_text())
    m.pop("files")
    m["format_version"] = 1
    p.write_text(json.dumps(m))
    with pytest.raises(BackendError, match="older elsa-index.*rebuild the index"):
        open_index(base)
    with open_index(base, verify=False) as ix:
        assert ix.recommend([list(ix.item_ids[:3])], k=5).ids.shape == (1, 5)


def test_dense_index_and_faiss_files(dense_checkpoint, tmp_path):
    pytest.importorskip("faiss")
    import faiss

    cases, expected = [], {}
    for backend in ("sparse", "faiss-flat", "faiss-hnsw", "faiss-ivf"):
        params = {"nlist": 4} if backend == "faiss-ivf" else {}
        base = tmp_path / backend
        build_index(dense_checkpoint, backend, base, **params).close()
        c, e = _index_cases(base, tmp_path / f"{backend}-cases", {
            "checkpoint_flip": ("checkpoint/embeddings.npy", lambda p: _npy(p, _flip_sign), False,
                                "embeddings.npy does not match"),
        })
        cases += [{**x, "name": f"{backend}:{x['name']}"} for x in c]
        expected.update({f"{backend}:{k}": v for k, v in e.items()})
    # FAISS files crafted in place: the digest catches them; re-recorded, the structural checks do.
    for name, backend, edit, want in (
        ("flat_nan", "faiss-flat", lambda ix: faiss.rev_swig_ptr(ix.get_xb(), 4).__setitem__(1, np.nan), "NaN"),
        ("hnsw_link", "faiss-hnsw", lambda ix: faiss.copy_array_to_vector(
            np.where(faiss.vector_to_array(ix.hnsw.neighbors) >= 0, 10**6,
                     faiss.vector_to_array(ix.hnsw.neighbors)).astype(np.int32), ix.hnsw.neighbors),
         "neighbour ids outside|out of range"),  # faiss >= 1.12 validates HNSW links on read; older does not
        ("hnsw_entry", "faiss-hnsw", lambda ix: setattr(ix.hnsw, "entry_point", 10**6), "entry point|entry_point"),
        ("ivf_ids", "faiss-ivf", _ivf_bad_ids, "inverted list"),
    ):
        for rerecord in (False, True):
            p = _copy(tmp_path / backend, tmp_path / f"{name}-{rerecord}")
            file = p / "backend" / "faiss.index"
            ix = faiss.read_index(str(file))
            edit(ix)
            faiss.write_index(ix, str(file))
            if rerecord:
                _rerecord_backend(p / "backend")
            case = f"{name}/rerecorded" if rerecord else name
            cases.append({"name": case, "kind": "index", "path": str(p)})
            expected[case] = want if rerecord else "faiss.index"
    _check(_run(cases), expected)


def _ivf_bad_ids(ix) -> None:
    import faiss

    ivf = faiss.extract_index_ivf(ix)
    lists = ivf.invlists
    for l in range(ivf.nlist):
        if lists.list_size(l):
            faiss.rev_swig_ptr(lists.get_ids(l), lists.list_size(l))[0] = 10**6
            return


# --------------------------------------------------------------------- lucene


def test_lucene_index_files_verified(sparse_checkpoint, tmp_path):
    pytest.importorskip("pyserini")
    base = tmp_path / "ix"
    build_index(sparse_checkpoint, "lucene", base).close()
    files = json.loads((base / "backend" / "backend.json").read_text())["files"]
    assert "lucene.json" in files and any(f.startswith("lucene/segments_") for f in files)
    # A standalone backend keeps its own re-rank rows: they are recorded too.
    be = get_backend("lucene")().build(sparse_checkpoint)
    be.save(tmp_path / "standalone")
    be.close()
    cases, expected = _index_cases(base, tmp_path / "cases", {
        "rerank_flip_sign": ("checkpoint/data.npy", lambda p: _npy(p, _flip_sign), False,
                             "checkpoint/data.npy does not match"),
        "lucene_byte": ("backend/lucene.json", lambda p: p.write_text(p.read_text().replace('"scale": ', '"scale": 1')),
                        False, "lucene.json has"),
        "lucene_file_byte": (_largest(base / "backend" / "lucene"), _flip_byte, False, "does not match the sha256"),
        "stray_commit": ("backend/lucene/segments_99", lambda p: p.write_bytes(b"x"), False, "not recorded"),
    })
    p = _copy(tmp_path / "standalone", tmp_path / "standalone-flip")
    _npy(p / "embeddings_data.npy", _flip_sign)
    cases.append({"name": "standalone_flip", "kind": "backend", "path": str(p)})
    expected["standalone_flip"] = "embeddings_data.npy does not match"
    p = _copy(tmp_path / "standalone", tmp_path / "standalone-range")
    _npy(p / "embeddings_indices.npy", lambda a: a + 10**6)
    _rerecord_backend(p)
    cases.append({"name": "standalone_range", "kind": "backend", "path": str(p)})
    expected["standalone_range"] = "column indices outside"
    _check(_run(cases), expected)


def test_lucene_row_table_range_checked(sparse_checkpoint, tmp_path):
    # Lucene's hits become item rows through the saved docid -> row table: out-of-range rows are refused at load.
    if get_backend("lucene").missing_dependency():
        pytest.skip(get_backend("lucene").missing_dependency())
    path = get_backend("lucene")().build(sparse_checkpoint).save(tmp_path / "ix")
    table = np.load(path / "lucene_rows.npy")
    n = sparse_checkpoint.n_items
    for bad in (np.r_[table[:-1], n].astype(np.int32), np.r_[-1, table[1:]].astype(np.int32)):
        np.save(path / "lucene_rows.npy", bad)
        with pytest.raises(BackendError, match=rf"expected int32 item rows in \[0, {n}\)"):
            Backend.load(path, verify=False)


# ------------------------------------------------------------------- segments


def test_damaged_segments_fail_at_load(sparse_checkpoint, tmp_path):
    seg = discover_segments(sparse_checkpoint, merge_to=4)
    base = seg.save(tmp_path / "seg")

    cases, expected = [], {}
    for name, file, change, want in (
        ("key_dims", "key_dims.npy", lambda a: a + 10**6, "key dims outside"),
        ("central_range", "central_indices.npy", lambda a: a + 10**6, "central item indices outside"),
        ("central_float", "central_indices.npy", lambda a: a.astype(np.float64), "expected a 1-D integer"),
        ("assignment", "assignment.npy", lambda a: a + 10**6, "segment ids outside"),
        ("scores_nan", "central_scores.npy", lambda a: np.full_like(a, np.nan), "NaN"),
        ("vector_indptr", "vector_indptr.npy", lambda a: a[::-1].copy(), "vector_"),
    ):
        p = _copy(base, tmp_path / name)
        _npy(p / file, change)
        cases.append({"name": name, "kind": "segments", "path": str(p)})
        cases.append({"name": name + "/no-verify", "kind": "segments", "path": str(p), "kwargs": {"verify": False}})
        # dtypes and the CSR arrays are checked as they are read, the digest next, then the ranges
        early = name in ("central_float", "vector_indptr")
        expected[name] = want if early else "do not match the manifest digest"
        expected[name + "/no-verify"] = want
    p = _copy(base, tmp_path / "flip")
    _npy(p / "vector_data.npy", _flip_sign)
    cases.append({"name": "flip", "kind": "segments", "path": str(p)})
    expected["flip"] = "do not match the manifest digest"
    p = _copy(base, tmp_path / "nodigest")
    m = json.loads((p / "manifest.json").read_text())
    m.pop("arrays_digest")
    (p / "manifest.json").write_text(json.dumps(m))
    cases.append({"name": "nodigest", "kind": "segments", "path": str(p)})
    expected["nodigest"] = "lacks the field 'arrays_digest'"
    cases.append({"name": "nodigest/no-verify", "kind": "segments", "path": str(p), "kwargs": {"verify": False}})
    expected["nodigest/no-verify"] = None
    _check(_run(cases), expected)
