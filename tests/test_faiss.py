"""FAISS dense backends: real (tiny) faiss indexes checked against the exact backend."""

import re
import sys

import numpy as np
import pytest
import scipy.sparse as sp

faiss = pytest.importorskip("faiss")

from elsa_index.errors import BackendError  # noqa: E402
from elsa_index.indexers import get_backend  # noqa: E402
from elsa_index.indexers.base import Backend  # noqa: E402
from elsa_index.indexers.faiss_dense import default_nlist  # noqa: E402
from elsa_index.metrics import retrieval_recall  # noqa: E402

NAMES = ["faiss-flat", "faiss-hnsw", "faiss-ivf"]


@pytest.fixture(scope="module")
def queries(dense_checkpoint, histories):
    """User vectors of the fixture histories plus a few random (unnormalised) ones, float32 (28, 16)."""
    U = dense_checkpoint.encode(histories)
    R = np.random.default_rng(11).normal(size=(8, dense_checkpoint.dims)) * 3.0
    return np.vstack([U, R]).astype(np.float32)


@pytest.fixture(scope="module")
def exact(dense_checkpoint):
    return get_backend("sparse")().build(dense_checkpoint)


@pytest.fixture(scope="module", params=NAMES)
def built(request, dense_checkpoint):
    return get_backend(request.param)().build(dense_checkpoint)


def _recall(ckpt, Q, res, ref, k):
    S = Q.astype(np.float64) @ ckpt.embeddings.T.astype(np.float64)
    true = np.take_along_axis(S, np.clip(res.ids, 0, None), axis=1)
    return retrieval_recall(true, res.ids, ref.scores, k)


def test_flat_equals_exact_backend(dense_checkpoint, queries, exact):
    flat = get_backend("faiss-flat")().build(dense_checkpoint)
    assert flat.exact
    res, ref = flat.search(queries, 10), exact.search(queries, 10)
    np.testing.assert_allclose(res.scores, ref.scores, rtol=1e-5, atol=1e-5)
    assert (_recall(dense_checkpoint, queries, res, ref, 10) == 1.0).all()
    # Ids agree wherever the score is not tied with a neighbour.
    s = ref.scores
    tied = np.zeros_like(s, bool)
    tied[:, 1:] |= np.isclose(s[:, 1:], s[:, :-1], atol=1e-5)
    tied[:, :-1] |= np.isclose(s[:, :-1], s[:, 1:], atol=1e-5)
    np.testing.assert_array_equal(res.ids[~tied], ref.ids[~tied])


def test_approximate_recall(built, dense_checkpoint, queries, exact):
    res, ref = built.search(queries, 10), exact.search(queries, 10)
    assert res.ids.shape == (len(queries), 10) and res.ids.dtype == np.int64 and res.scores.dtype == np.float32
    assert _recall(dense_checkpoint, queries, res, ref, 10).mean() >= 0.9
    assert (np.diff(res.scores, axis=1) <= 1e-6).all()


def test_ivf_probing_a_few_lists(dense_checkpoint, queries, exact):
    # The default nprobe (32) scans all 7 lists of the fixture; 2 of 7 is a real approximation.
    ivf = get_backend("faiss-ivf")(nprobe=2).build(dense_checkpoint)
    rec = _recall(dense_checkpoint, queries, ivf.search(queries, 10), exact.search(queries, 10), 10)
    assert 0.9 <= rec.mean() < 1.0


def test_ivf_nprobe_changes_behaviour_without_rebuild(dense_checkpoint, queries, exact):
    ivf = get_backend("faiss-ivf")(nprobe=1).build(dense_checkpoint)
    index = ivf.index_
    nlist = ivf.info()["index"]["nlist"]
    assert nlist == default_nlist(dense_checkpoint.n_items) == 7
    ref = exact.search(queries, 10)
    narrow = _recall(dense_checkpoint, queries, ivf.search(queries, 10), ref, 10)
    ivf.set_search_params(nprobe=nlist)
    full = ivf.search(queries, 10)
    assert ivf.index_ is index  # no rebuild
    assert (_recall(dense_checkpoint, queries, full, ref, 10) == 1.0).all()  # every list scanned: exact
    np.testing.assert_allclose(full.scores, ref.scores, rtol=1e-5, atol=1e-5)
    assert narrow.mean() < 1.0
    assert ivf.index_.nprobe == 1  # per-call SearchParametersIVF, the index itself is untouched


def test_hnsw_ef_search_is_per_call(dense_checkpoint, queries):
    hnsw = get_backend("faiss-hnsw")(M=4, ef_construction=8, ef_search=1).build(dense_checkpoint)
    ef_before = hnsw.index_.hnsw.efSearch
    low = hnsw.search(queries, 1)
    hnsw.set_search_params(ef_search=300)
    high = hnsw.search(queries, 1)
    assert hnsw.index_.hnsw.efSearch == ef_before
    assert high.scores.sum() > low.scores.sum() + 1e-3  # a wider search finds better items
    # ef_search is widened to the number of results fetched: ef 1 and ef k agree.
    hnsw.set_search_params(ef_search=1)
    a = hnsw.search(queries, 30)
    hnsw.set_search_params(ef_search=30)
    np.testing.assert_array_equal(hnsw.search(queries, 30).ids, a.ids)


def test_sparse_queries_are_densified(built, queries):
    dense = built.search(queries, 5)
    res = built.search(sp.csr_matrix(queries), 5)
    np.testing.assert_array_equal(res.ids, dense.ids)
    np.testing.assert_allclose(res.scores, dense.scores, rtol=1e-6)


def test_save_load_round_trip(built, queries, tmp_path, dense_checkpoint):
    # The generic round trip is in test_backends.py; here: the faiss file, bit-identical scores, versions.
    built.save(tmp_path / "ix")
    assert (tmp_path / "ix" / "faiss.index").stat().st_size > 0
    back = Backend.load(tmp_path / "ix")
    np.testing.assert_array_equal(built.search(queries, 10).scores, back.search(queries, 10).scores)
    info = back.info()
    assert info["build_params"] == built.params and info["search_params"] == built.get_search_params()
    assert info["versions"]["faiss"] == faiss.__version__


def test_corrupt_or_missing_index_file(built, tmp_path):
    built.save(tmp_path / "ix")
    (tmp_path / "ix" / "faiss.index").write_bytes(b"not a faiss index at all")
    with pytest.raises(BackendError, match="faiss.index has 24 bytes"):
        Backend.load(tmp_path / "ix")  # the recorded size and digest
    with pytest.raises(BackendError, match="not a readable faiss index"):
        Backend.load(tmp_path / "ix", verify=False)
    (tmp_path / "ix" / "faiss.index").unlink()
    with pytest.raises(BackendError, match="missing file faiss.index"):
        Backend.load(tmp_path / "ix")
    with pytest.raises(BackendError, match="lacks faiss.index"):
        Backend.load(tmp_path / "ix", verify=False)


def test_sparse_checkpoint_refused(sparse_checkpoint):
    for name in NAMES:
        with pytest.raises(BackendError, match="dense embeddings"):
            get_backend(name)().build(sparse_checkpoint)


@pytest.mark.parametrize("name, params, match", [
    ("faiss-hnsw", {"M": 0}, "M must be an integer >= 2"),
    ("faiss-hnsw", {"ef_construction": 0}, "ef_construction"),
    ("faiss-hnsw", {"ef_search": 0}, "ef_search must be an integer >= 1"),
    ("faiss-ivf", {"nlist": 0}, "nlist must be an integer >= 1"),
    ("faiss-ivf", {"nprobe": 0}, "nprobe"),
    ("faiss-ivf", {"train_seed": -1}, "train_seed"),
    ("faiss-flat", {"threads": 0}, "threads must be an integer >= 1"),
    ("faiss-hnsw", {"threads": 1.5}, "threads"),
    ("faiss-ivf", {"threads": True}, "threads"),
    ("faiss-flat", {"nprobe": 4}, "unknown parameter 'nprobe'"),
])
def test_bad_params(name, params, match):
    with pytest.raises(BackendError, match=match):
        get_backend(name)(**params)


def test_bad_search_params_keep_old_ones(built):
    key = {"faiss-flat": "threads", "faiss-hnsw": "ef_search", "faiss-ivf": "nprobe"}[built.name]
    before = built.get_search_params()
    with pytest.raises(BackendError, match=key):
        built.set_search_params(**{key: 0})
    assert built.get_search_params() == before


def test_nlist_larger_than_catalogue(dense_checkpoint):
    with pytest.raises(BackendError, match="nlist must be at most the number of items"):
        get_backend("faiss-ivf")(nlist=dense_checkpoint.n_items + 1).build(dense_checkpoint)


def test_default_nlist():
    assert default_nlist(1) == 1 and default_nlist(38) == 1 and default_nlist(300) == 7
    assert default_nlist(1_000_000) == 4000


def test_threads_pinned_and_restored(dense_checkpoint, queries):
    before = faiss.omp_get_max_threads()
    one = get_backend("faiss-ivf")(threads=1).build(dense_checkpoint)
    two = get_backend("faiss-ivf")(threads=2).build(dense_checkpoint)
    a, b = one.search(queries, 10), two.search(queries, 10)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert faiss.omp_get_max_threads() == before


def test_missing_faiss_gives_install_hint(dense_checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    be = get_backend("faiss-flat")()
    with pytest.raises(BackendError, match=re.escape(get_backend("faiss-flat").install_hint)):
        be.build(dense_checkpoint)
    assert be.info()["versions"]["faiss"] == "not installed"


def test_weak_hnsw_result_does_not_depend_on_the_batch(dense_checkpoint, queries):
    """With a tiny candidate list, HNSW's result follows the fetch size (efSearch grows with it); a user's
    result must not change because another user of the same batch has more history to exclude."""
    hnsw = get_backend("faiss-hnsw")(M=4, ef_construction=8, ef_search=1).build(dense_checkpoint)
    n = queries.shape[0]
    for r in range(n):
        alone = hnsw.search(queries[r : r + 1], 5)  # fetches 5
        other = queries[(r + 1) % n][None, :]
        # The other user excludes 3 items: it needs 8 candidates, in the same power-of-two bucket as 5.
        batch = hnsw.search(np.vstack([queries[r : r + 1], other]), 5, exclude=[np.array([], np.int64), np.arange(3)])
        np.testing.assert_array_equal(alone.ids[0], batch.ids[0])
        np.testing.assert_array_equal(alone.scores[0], batch.scores[0])
