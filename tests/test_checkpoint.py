import json
import os

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.checkpoint import FORMAT_VERSION, Checkpoint
from elsa_index.importing import import_embeddings
from elsa_index.errors import CheckpointError


def _sparse_ckpt(n=50, d=32, nnz=4, seed=0):
    rng = np.random.default_rng(seed)
    cols = np.stack([rng.choice(d, nnz, replace=False) for _ in range(n)])
    vals = rng.normal(size=(n, nnz)).astype(np.float32)
    vals /= np.linalg.norm(vals, axis=1, keepdims=True)
    emb = sp.csr_matrix((vals.ravel(), cols.ravel(), np.arange(0, n * nnz + 1, nnz)), shape=(n, d))
    ids = [f"item-{i:03d}" for i in range(n)]
    pop = rng.integers(0, 100, n)
    return Checkpoint(emb, ids, pop, kind="compressed_elsa", config={"model": {"nnz": nnz}},
                      data={"fingerprint": "abc"}, metrics={"recall@20": 0.25}, history=[{"epoch": 1, "loss": 0.5}])


def _dense_ckpt(n=40, d=8, seed=1):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    return Checkpoint(emb, [str(i) for i in range(n)], np.arange(n), kind="elsa")


@pytest.mark.parametrize("make", [_sparse_ckpt, _dense_ckpt])
def test_round_trip_is_bit_identical(tmp_path, make):
    ck = make()
    ck.save(tmp_path / "ck")
    back = Checkpoint.load(tmp_path / "ck")
    if ck.sparse:
        assert back.sparse
        for a in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(back.embeddings, a), getattr(ck.embeddings, a))
        assert back.embeddings.data.dtype == np.float32
    else:
        assert back.embeddings.dtype == np.float32
        assert back.embeddings.tobytes() == ck.embeddings.tobytes()
    np.testing.assert_array_equal(back.item_ids.ids, ck.item_ids.ids)
    np.testing.assert_array_equal(back.popularity, ck.popularity)
    assert back.manifest() == ck.manifest()
    assert back.fingerprint == ck.fingerprint


def test_manifest_describes_the_checkpoint(tmp_path):
    ck = _sparse_ckpt(n=30, d=16, nnz=3)
    ck.save(tmp_path / "ck")
    m = json.loads((tmp_path / "ck" / "manifest.json").read_text())
    assert m["format_version"] == FORMAT_VERSION
    assert m["kind"] == "compressed_elsa" and m["storage"] == "csr"
    assert (m["n_items"], m["dims"]) == (30, 16)
    assert m["nnz_per_row"] == {"min": 3, "max": 3, "mean": 3.0}
    assert m["metrics"] == {"recall@20": 0.25}
    assert m["data"]["fingerprint"] == "abc"
    assert sorted(os.listdir(tmp_path / "ck")) == sorted(
        ["manifest.json", "data.npy", "indices.npy", "indptr.npy", "item_ids.npy", "popularity.npy"]
    )


def test_save_refuses_existing_directory_unless_overwrite(tmp_path):
    ck = _dense_ckpt()
    ck.save(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="already exists"):
        ck.save(tmp_path / "ck")
    ck2 = _dense_ckpt(seed=5)
    ck2.save(tmp_path / "ck", overwrite=True)
    assert Checkpoint.load(tmp_path / "ck").fingerprint == ck2.fingerprint
    assert os.listdir(tmp_path) == ["ck"]  # no temporary leftovers


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import elsa_index.checkpoint as mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(mod, "write_json", boom)
    with pytest.raises(CheckpointError, match="disk full"):  # a full disk is a clear error, not a traceback
        _dense_ckpt().save(tmp_path / "ck")
    assert os.listdir(tmp_path) == []


def test_encode_and_score_match_definition():
    ck = _sparse_ckpt(n=20, d=10, nnz=3)
    X = sp.csr_matrix(np.eye(20, dtype=np.float32)[[0, 3]] + np.eye(20, dtype=np.float32)[[5, 5]])
    A = ck.embeddings.toarray()
    np.testing.assert_allclose(ck.encode(X), X.toarray() @ A, rtol=1e-6)
    np.testing.assert_allclose(ck.score(X), X.toarray() @ A @ A.T, rtol=1e-5, atol=1e-6)
    with pytest.raises(CheckpointError, match="20 items"):
        ck.score(sp.csr_matrix((2, 7)))


# ------------------------------------------------------------ bad checkpoints


def test_load_missing_or_incomplete(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Checkpoint.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="manifest.json"):
        Checkpoint.load(tmp_path / "empty")
    _sparse_ckpt().save(tmp_path / "ck")
    os.remove(tmp_path / "ck" / "indices.npy")
    with pytest.raises(CheckpointError, match="missing file indices.npy"):
        Checkpoint.load(tmp_path / "ck")


def test_load_newer_format_version(tmp_path):
    _dense_ckpt().save(tmp_path / "ck")
    p = tmp_path / "ck" / "manifest.json"
    m = json.loads(p.read_text())
    m["format_version"] = FORMAT_VERSION + 1
    p.write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="newer than this elsa-index supports"):
        Checkpoint.load(tmp_path / "ck")


def test_load_other_format_and_bad_json(tmp_path):
    _dense_ckpt().save(tmp_path / "ck")
    p = tmp_path / "ck" / "manifest.json"
    p.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Checkpoint.load(tmp_path / "ck")
    p.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an elsa-index checkpoint"):
        Checkpoint.load(tmp_path / "ck")


def test_load_refuses_pickled_arrays(tmp_path):
    _dense_ckpt().save(tmp_path / "ck")
    ids = np.array([f"{i}" for i in range(40)], dtype=object)
    np.save(tmp_path / "ck" / "item_ids.npy", ids, allow_pickle=True)
    with pytest.raises(CheckpointError, match="pickled"):
        Checkpoint.load(tmp_path / "ck")


def test_load_detects_tampered_arrays(tmp_path):
    ck = _dense_ckpt()
    ck.save(tmp_path / "ck")
    emb = ck.embeddings.copy()
    emb[0, 0] += 1.0
    np.save(tmp_path / "ck" / "embeddings.npy", emb)
    with pytest.raises(CheckpointError, match="embeddings.npy does not match the sha256"):
        Checkpoint.load(tmp_path / "ck")
    emb[0, 0] = np.nan
    np.save(tmp_path / "ck" / "embeddings.npy", emb)
    with pytest.raises(CheckpointError, match="NaN/inf"):
        Checkpoint.load(tmp_path / "ck", verify=False)  # range checks run without verification too


def test_load_detects_shape_mismatch(tmp_path):
    ck = _dense_ckpt()
    ck.save(tmp_path / "ck")
    np.save(tmp_path / "ck" / "embeddings.npy", ck.embeddings[:, :4].copy())
    with pytest.raises(CheckpointError, match="shape"):
        Checkpoint.load(tmp_path / "ck")


def test_constructor_validation():
    with pytest.raises(CheckpointError, match="NaN/inf"):
        Checkpoint(np.array([[np.inf, 0.0]]), ["a"], [0])
    with pytest.raises(CheckpointError, match="one id per row"):
        Checkpoint(np.ones((3, 2)), ["a", "b"], [0, 0, 0])
    with pytest.raises(CheckpointError, match="kind"):
        Checkpoint(np.ones((1, 2)), ["a"], [0], kind="bert")
    with pytest.raises(ValueError, match="unique"):
        Checkpoint(np.ones((2, 2)), ["a", "a"], [0, 0])


# ------------------------------------------------------------------- import


def test_import_npz_csr_with_ids(tmp_path):
    m = sp.random(30, 64, density=0.1, format="csr", dtype=np.float32, random_state=3)
    sp.save_npz(tmp_path / "emb.npz", m)
    (tmp_path / "ids.txt").write_text("\n".join(f"b{i}" for i in range(30)) + "\n")
    with pytest.warns(UserWarning, match="not unit length"):
        ck = import_embeddings(tmp_path / "emb.npz", tmp_path / "ids.txt", normalize=False)
    assert ck.sparse and ck.kind == "imported" and ck.embeddings.shape == (30, 64)
    assert abs(ck.embeddings - m).max() == 0 and ck.data["normalized"] is False
    assert ck.item_ids.ids[7] == "b7"
    np.testing.assert_array_equal(ck.popularity, np.zeros(30))
    ck.save(tmp_path / "ck")
    back = Checkpoint.load(tmp_path / "ck")
    assert abs(back.embeddings - m).max() == 0


@pytest.mark.parametrize("fmt", ["csc", "coo"])
def test_import_npz_other_sparse_formats(tmp_path, fmt):
    m = sp.random(12, 9, density=0.3, format=fmt, dtype=np.float64, random_state=1)
    sp.save_npz(tmp_path / "e.npz", m)
    with pytest.warns(UserWarning, match="not unit length"):
        ck = import_embeddings(tmp_path / "e.npz", normalize=False)
    np.testing.assert_allclose(ck.embeddings.toarray(), m.toarray(), rtol=1e-6)
    assert list(ck.item_ids.ids[:3]) == ["0", "1", "2"]


def test_import_dense_npy(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "e.npy", a)
    with pytest.warns(UserWarning, match="not unit length"):
        ck = import_embeddings(tmp_path / "e.npy", ["w", "x", "y", "z"], normalize=False)
    assert not ck.sparse
    np.testing.assert_array_equal(ck.embeddings, a)


@pytest.mark.parametrize("fmt", ["npz", "npy"])
def test_import_scales_rows_to_unit_length_and_records_it(tmp_path, fmt):
    m = sp.random(20, 16, density=0.3, format="csr", dtype=np.float32, random_state=5)
    m = sp.vstack([m, sp.csr_matrix((1, 16), dtype=np.float32)]).tocsr()  # one row with no active dimension
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    if fmt == "npz":
        sp.save_npz(tmp_path / "e.npz", m)
    else:
        np.save(tmp_path / "e.npy", m.toarray())
    ck = import_embeddings(tmp_path / f"e.{fmt}")
    E = ck.embeddings.toarray() if ck.sparse else ck.embeddings
    got = np.sqrt((E.astype(np.float64) ** 2).sum(axis=1))
    np.testing.assert_allclose(got[norms > 0], 1.0, rtol=1e-5)
    assert got[-1] == 0 and ck.data["zero_rows"] == 1 and ck.data["normalized"] is True
    assert ck.data["row_norms"]["max"] == pytest.approx(norms.max(), rel=1e-5)
    # Directions are kept: each row is the original scaled by its norm.
    np.testing.assert_allclose(E[:-1] * norms[:-1, None], m.toarray()[:-1], rtol=1e-4, atol=1e-6)


def test_import_popularity_ranks_the_cold_start_fallback(tmp_path):
    import warnings

    from elsa_index.errors import NoPopularityWarning, UnknownItemsWarning
    from elsa_index.search import build_index

    m = sp.random(10, 8, density=0.5, format="csr", dtype=np.float32, random_state=2)
    sp.save_npz(tmp_path / "e.npz", m)
    pop = np.array([3, 9, 0, 1, 7, 2, 2, 5, 4, 6])
    np.save(tmp_path / "pop.npy", pop)
    ck = import_embeddings(tmp_path / "e.npz", popularity=tmp_path / "pop.npy")
    np.testing.assert_array_equal(ck.popularity, pop)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoPopularityWarning)
        warnings.simplefilter("ignore", UnknownItemsWarning)
        rec = build_index(ck, "sparse", tmp_path / "ix").recommend([["unknown"]], 3)
    assert rec.fallback[0] and rec.ids[0].tolist() == ["1", "4", "9"]
    # Without popularity the fallback has nothing to rank by, and says so.
    bare = build_index(import_embeddings(tmp_path / "e.npz"), "sparse", tmp_path / "ix2")
    with pytest.warns(NoPopularityWarning, match="no popularity"), pytest.warns(UnknownItemsWarning):
        bare.recommend([["unknown"]], 3)
    for bad, message in [(np.arange(9), "10 integer counts"), (-np.ones(10, int), "non-negative"),
                         (np.full(10, 0.5), "integer counts")]:
        with pytest.raises(CheckpointError, match=message):
            import_embeddings(tmp_path / "e.npz", popularity=bad)


def test_import_bad_inputs(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        import_embeddings(tmp_path / "missing.npz")
    m = sp.random(5, 4, density=0.5, format="csr", random_state=0)
    sp.save_npz(tmp_path / "e.npz", m)
    with pytest.raises(CheckpointError, match="3 item ids for 5 embedding rows"):
        import_embeddings(tmp_path / "e.npz", ["a", "b", "c"])
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    with pytest.raises(CheckpointError, match="not a scipy sparse matrix"):
        import_embeddings(tmp_path / "other.npz")
    np.savez(tmp_path / "pickled.npz", format=np.array("csr"), data=np.array([{"a": 1}], dtype=object),
             indices=np.zeros(1), indptr=np.zeros(2), shape=np.array([1, 1]))
    with pytest.raises(CheckpointError, match="pickled"):
        import_embeddings(tmp_path / "pickled.npz")
    bad = m.copy()
    bad.data[0] = np.nan
    sp.save_npz(tmp_path / "nan.npz", bad)
    with pytest.raises(CheckpointError, match="NaN/inf"):
        import_embeddings(tmp_path / "nan.npz")
    (tmp_path / "e.txt").write_text("1 2 3")
    with pytest.raises(CheckpointError, match="unsupported embedding file"):
        import_embeddings(tmp_path / "e.txt")


def test_fingerprint_is_computed_once_over_read_only_own_arrays(tmp_path):
    import elsa_index.checkpoint as cp

    ck = _sparse_ckpt()
    calls = []
    real = cp._digest
    cp._digest = lambda *a: calls.append(1) or real(*a)
    try:
        fp = ck.fingerprint
        assert ck.fingerprint == fp and len(calls) == 1
    finally:
        cp._digest = real
    for a in (ck.embeddings.data, ck.embeddings.indices, ck.embeddings.indptr, ck.item_ids.ids):
        assert not a.flags.writeable
    # The caller's arrays are copied, not frozen: changing them does not change the checkpoint.
    src = np.ones((3, 2), np.float32)
    dense = Checkpoint(src, ["a", "b", "c"], np.zeros(3))
    before = dense.fingerprint
    src[0, 0] = 5.0
    assert dense.fingerprint == before and dense.embeddings[0, 0] == 1.0 and src.flags.writeable
    # Assigning new embeddings revalidates and refingerprints.
    dense.embeddings = np.full((3, 2), 2.0)
    assert dense.fingerprint != before and not dense.embeddings.flags.writeable
    with pytest.raises(CheckpointError, match="one row per id"):
        dense.embeddings = np.ones((4, 2))
    ck.save(tmp_path / "c")
    for mmap in (False, True):
        back = Checkpoint.load(tmp_path / "c", mmap=mmap)
        assert back.fingerprint == ck.fingerprint
        assert (back.embeddings != ck.embeddings).nnz == 0


def test_score_candidates_matches_definition():
    ck = _sparse_ckpt()
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(3, ck.dims)).astype(np.float32)
    cand = np.array([[0, 5, -1], [7, 7, 2], [-1, -1, -1]])
    S = ck.score_candidates(Q, cand)
    full = Q.astype(np.float64) @ ck.embeddings.toarray().T.astype(np.float64)
    expect = np.where(cand >= 0, np.take_along_axis(full, np.clip(cand, 0, None), axis=1), -np.inf)
    assert S.dtype == np.float32 and S.shape == (3, 3)
    np.testing.assert_allclose(S, expect, rtol=1e-6)
    # The shared summation order: float32 products added in float32 in ascending dims, sparse or dense query.
    seq = np.full(cand.shape, -np.inf, np.float32)
    E = ck.embeddings
    for r, c in zip(*np.nonzero(cand >= 0)):
        acc = np.float32(0)
        for j in range(E.indptr[cand[r, c]], E.indptr[cand[r, c] + 1]):
            acc = np.float32(acc + E.data[j] * Q[r, E.indices[j]])
        seq[r, c] = acc
    np.testing.assert_array_equal(S, seq)
    S64 = ck.score_candidates(sp.csr_matrix(Q), cand, dtype=np.float64)
    assert S64.dtype == np.float64
    np.testing.assert_array_equal(S64, seq.astype(np.float64))
    dense = _dense_ckpt()
    q = rng.normal(size=dense.dims)
    np.testing.assert_allclose(dense.score_candidates(q, [1, 3])[0], dense.embeddings[[1, 3]] @ q, rtol=1e-5)
    with pytest.raises(CheckpointError, match="outside"):
        ck.score_candidates(Q, np.full((3, 1), ck.n_items))
    with pytest.raises(CheckpointError, match="shape"):
        ck.score_candidates(Q[:, :3], cand)


def test_histories_to_matrix_warns_and_flags_empty_rows():
    from elsa_index.errors import DataError, UnknownItemsWarning

    ck = _sparse_ckpt()
    ids = ck.item_ids.ids
    with pytest.warns(UnknownItemsWarning, match="not in the catalogue"):
        X, empty = ck.histories_to_matrix([[ids[1], ids[1], ids[4]], ["zzz"], []])
    assert X.shape == (3, ck.n_items) and X.dtype == np.float32
    assert X[0].indices.tolist() == [1, 4] and X[0].data.tolist() == [1.0, 1.0]
    assert empty.tolist() == [False, True, True]
    X2, empty2 = ck.histories_to_matrix(X)
    assert (X2 != X).nnz == 0 and empty2.tolist() == empty.tolist()
    with pytest.raises(DataError, match="list of item ids"):
        ck.histories_to_matrix([ids[0]])
    with pytest.raises(DataError, match="columns"):
        ck.histories_to_matrix(sp.csr_matrix((1, 3)))


@pytest.mark.parametrize("field, value, message", [
    ("metrics", "0.3", "expected an object"),
    ("metrics", {"recall@20": "high"}, "expected a finite number"),
    ("metrics", {"recall@20": float("nan")}, "expected a finite number"),
    ("config", [1, 2], "expected an object"),
    ("history", {"epoch": 1}, "expected a list"),
])
def test_manifest_fields_of_the_wrong_type_are_refused(tmp_path, dense_checkpoint, field, value, message):
    import json

    dense_checkpoint.save(tmp_path / "ck")
    m = json.loads((tmp_path / "ck" / "manifest.json").read_text())
    m[field] = value
    (tmp_path / "ck" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match=f"manifest (field|metric) .*{message}"):
        Checkpoint.load(tmp_path / "ck")
