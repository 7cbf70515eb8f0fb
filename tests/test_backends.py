"""One contract suite, run against every registered backend (and the test-only ``toy`` backend)."""

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.errors import ElsaIndexError
from elsa_index.indexers import BACKENDS, backend_names, get_backend, register_backend
from elsa_index.indexers.base import Backend
from elsa_index.metrics import retrieval_recall

#: every registered backend, plus "toy" (tests/toy_backend.py, registered by the toy_registered fixture)
NAMES = sorted(BACKENDS) + ["toy"]
#: backends built with parameters besides their defaults: (name, parameters) under an id of their own
VARIANTS = {"sparse-approx[approximate]": ("sparse-approx", {"exact_below": 0})}  # the defaults search small
# catalogues such as these exactly; this runs its approximate search through the contract too


@pytest.fixture(scope="module", params=NAMES + list(VARIANTS))
def built(request, toy_registered, backend_case):
    name, params = VARIANTS.get(request.param, (request.param, {}))
    cls, ckpt = backend_case(name)
    be = cls(**params).build(ckpt)
    yield be, ckpt
    be.close()


def _queries(ckpt, histories):
    U = ckpt.encode(histories)
    return U


def _exact(ckpt, Q, k, exclude=None):
    S = np.asarray(Q @ (ckpt.embeddings.T), dtype=np.float64)
    S = S.toarray() if sp.issparse(S) else np.asarray(S)
    if exclude is not None:
        S[exclude.nonzero()] = -np.inf
    top = -np.sort(-S, axis=1)[:, :k]
    return S, top


def test_results_agree_with_exact_scoring(built, histories):
    be, ckpt = built
    Q = _queries(ckpt, histories)
    res = be.search(Q, 10)
    assert res.ids.shape == (20, 10) and res.ids.dtype == np.int64 and res.scores.dtype == np.float32
    S, top = _exact(ckpt, Q, 10)
    true = np.take_along_axis(S, np.clip(res.ids, 0, None), axis=1)
    rec = retrieval_recall(true, res.ids, top, 10)
    assert rec.mean() >= (1.0 if be.exact else 0.9), rec
    if be.exact:
        np.testing.assert_allclose(res.scores, top, rtol=1e-4, atol=1e-5)
    # Rows are sorted by descending score.
    assert (np.diff(res.scores, axis=1) <= 1e-6).all()


def test_batch_equals_one_by_one(built, histories):
    be, ckpt = built
    Q = _queries(ckpt, histories)
    batch = be.search(Q, 7)
    for r in range(Q.shape[0]):
        single = be.search(Q[r : r + 1], 7)
        np.testing.assert_array_equal(single.ids[0], batch.ids[r])
        np.testing.assert_allclose(single.scores[0], batch.scores[r], rtol=1e-6)


def test_exclusions(built, histories):
    be, ckpt = built
    Q = _queries(ckpt, histories)
    plain = be.search(Q, 5)
    ex = [plain.ids[r, :3] for r in range(Q.shape[0])]
    res = be.search(Q, 5, exclude=ex)
    for r in range(Q.shape[0]):
        assert not set(res.ids[r]) & set(ex[r].tolist())
        assert (res.ids[r] >= 0).all()  # over-fetching still fills k
    # Same exclusions given as a sparse matrix.
    M = sp.csr_matrix((np.ones(3 * Q.shape[0]), (np.repeat(np.arange(Q.shape[0]), 3), np.concatenate(ex))),
                      shape=(Q.shape[0], be.n_items_))
    np.testing.assert_array_equal(be.search(Q, 5, exclude=M).ids, res.ids)


def test_exclusion_lists_of_very_different_lengths(built, histories):
    """A batch mixing short and long exclusion lists matches one-query-at-a-time searches on every backend
    (a query's result never depends on its batch), and never returns an excluded item."""
    be, ckpt = built
    Q = _queries(ckpt, histories)
    n_items = be.n_items_
    rng = np.random.default_rng(3)
    lengths = [0, 1, 3, 20, 60, 150, n_items - 4, 0, 7, 90] * 2
    ex = [rng.choice(n_items, size=m, replace=False) for m in lengths]
    res = be.search(Q, 5, exclude=ex)
    for r in range(Q.shape[0]):
        got = res.ids[r][res.ids[r] >= 0]
        assert not set(got.tolist()) & set(ex[r].tolist())
        if be.exact or lengths[r] < n_items - 4:
            assert len(got) == min(5, n_items - lengths[r]), (r, res.ids[r])
        single = be.search(Q[r : r + 1], 5, exclude=[ex[r]])
        np.testing.assert_array_equal(single.ids[0], res.ids[r])
        np.testing.assert_allclose(single.scores[0], res.scores[r], rtol=1e-6)


def test_padding_when_k_exceeds_catalogue(built, histories):
    be, ckpt = built
    Q = _queries(ckpt, histories)[:2]
    res = be.search(Q, be.n_items_ + 5)
    assert res.ids.shape == (2, be.n_items_ + 5)
    assert (res.ids[:, -5:] == -1).all() and np.isneginf(res.scores[:, -5:]).all()
    valid = res.ids[res.ids >= 0]
    assert len(set(res.ids[0][res.ids[0] >= 0])) == (res.ids[0] >= 0).sum()  # no duplicates
    assert valid.max() < be.n_items_


def test_save_load_round_trip(built, histories, tmp_path):
    be, ckpt = built
    Q = _queries(ckpt, histories)
    be.save(tmp_path / "ix")
    back = Backend.load(tmp_path / "ix")
    assert type(back) is type(be) and back.fingerprint_ == ckpt.fingerprint
    a, b = be.search(Q, 10), back.search(Q, 10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    info = back.info()
    assert info["backend"] == be.name and info["bytes_on_disk"] > 0 and info["n_items"] == ckpt.n_items


def test_thread_safety(built, histories, in_threads):
    be, ckpt = built
    Q = _queries(ckpt, histories)
    expect = be.search(Q, 10)

    def work(t):
        return [be.search(Q[r : r + 1], 10) for r in range(Q.shape[0])] + [be.search(Q, 10)]

    for results in in_threads(work).values():
        for r, res in enumerate(results[:-1]):
            np.testing.assert_array_equal(res.ids[0], expect.ids[r])
            np.testing.assert_allclose(res.scores[0], expect.scores[r], rtol=1e-6)
        np.testing.assert_array_equal(results[-1].ids, expect.ids)
        np.testing.assert_array_equal(results[-1].scores, expect.scores)


def test_facts_and_context_manager(built, tmp_path):
    be, ckpt = built
    cls = type(be)
    assert cls.missing_dependency() is None
    if cls.__module__.startswith("elsa_index."):  # shipped backends document every parameter
        assert set(cls.param_docs) == set(cls.build_params) | set(cls.search_params)
    assert set(cls.param_docs) <= set(cls.build_params) | set(cls.search_params)
    assert all(isinstance(v, str) and v for v in cls.param_docs.values())
    assert isinstance(cls.requires, tuple) and (cls.install_hint or not cls.requires)
    tb, model = cls.touched_bytes(be.info(), be.get_search_params(), 10, None, 3)
    assert tb.shape == (3,) and tb.dtype == np.float64 and isinstance(model, str)
    be.save(tmp_path / "ix")
    with Backend.load(tmp_path / "ix") as back:
        assert back.search(np.zeros((1, ckpt.dims), np.float32), 2).ids.shape == (1, 2)
    back.close()  # idempotent


def test_saved_without_embeddings_loads_with_its_checkpoint(built, histories, tmp_path, nonneg_checkpoint):
    be, ckpt = built
    Q = _queries(ckpt, histories)
    be.save(tmp_path / "ix", with_embeddings=False)
    manifest = (tmp_path / "ix" / "backend.json").read_text()
    assert '"with_embeddings": false' in manifest
    with pytest.raises(ElsaIndexError, match="checkpoint"):
        Backend.load(tmp_path / "ix")
    if nonneg_checkpoint.sparse == ckpt.sparse:
        with pytest.raises(ElsaIndexError, match="was built from checkpoint"):
            Backend.load(tmp_path / "ix", checkpoint=nonneg_checkpoint)
    for mmap in (False, True):
        with Backend.load(tmp_path / "ix", checkpoint=ckpt, mmap=mmap) as back:
            a, b = be.search(Q, 10), back.search(Q, 10)
            np.testing.assert_array_equal(a.ids, b.ids)
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_bad_queries(built):
    be, ckpt = built
    with pytest.raises(ElsaIndexError, match="k must be a positive integer"):
        be.search(np.zeros((1, ckpt.dims)), 0)
    with pytest.raises(ElsaIndexError, match="dims"):
        be.search(np.zeros((1, ckpt.dims + 1)), 3)
    with pytest.raises(ElsaIndexError, match="NaN"):
        be.search(np.full((1, ckpt.dims), np.nan), 3)
    with pytest.raises(ElsaIndexError, match="exclude has 2 rows"):
        be.search(np.zeros((1, ckpt.dims)), 3, exclude=[[1], [2]])
    with pytest.raises(ElsaIndexError, match="unknown search parameter"):
        be.set_search_params(no_such_param=1)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter_and_unbuilt(name, toy_registered):
    cls = get_backend(name)
    with pytest.raises(ElsaIndexError, match="unknown parameter"):
        cls(no_such_param=3)
    with pytest.raises(ElsaIndexError, match="not built"):
        cls().search(np.zeros((1, 4)), 3)


def test_unknown_backend():
    with pytest.raises(ElsaIndexError, match="unknown backend 'annoy'"):
        get_backend("annoy")


def test_retrieval_recall_with_ties():
    exact = np.array([[3.0, 2.0, 2.0, 1.0]])
    # Item 9 ties with the 2nd/3rd exact results: as good as them.
    assert retrieval_recall(np.array([[3.0, 2.0]]), np.array([[0, 9]]), exact, 2)[0] == 1.0
    assert retrieval_recall(np.array([[3.0, 1.0]]), np.array([[0, 7]]), exact, 2)[0] == 0.5
    assert retrieval_recall(np.array([[3.0, -np.inf]]), np.array([[0, -1]]), exact, 2)[0] == 0.5
    # Fewer exact results than k: normalised by what exists.
    assert retrieval_recall(np.array([[5.0, -np.inf]]), np.array([[1, -1]]), np.array([[5.0, -np.inf]]), 2)[0] == 1.0


def test_batch_fetch_grows_only_for_queries_with_long_exclusions(sparse_checkpoint, histories):
    # The shared path (Backend._search_excluding) fetches k plus the exclusions; the reference kernel uses it.
    be = get_backend("sparse")(kernel="reference").build(sparse_checkpoint)
    Q = sparse_checkpoint.encode(histories)
    fetched = []
    inner = be._search

    def spy(queries, k):
        fetched.append((queries.shape[0], k))
        return inner(queries, k)

    be._search = spy
    ex = [np.arange(200) if r == 0 else np.arange(r % 3) for r in range(Q.shape[0])]
    be.search(Q, 5, exclude=ex)
    # 19 queries need at most 5 + 2 results; only the one excluding 200 items fetches 205.
    assert sorted(fetched) == [(1, 205), (19, 7)]
    fetched.clear()
    be.search(Q, 5)
    assert fetched == [(Q.shape[0], 5)]
    # The blocked kernel skips excluded items itself: one call, no fetch beyond k, the same results.
    expect = be.search(Q, 5, exclude=ex)
    be.set_search_params(kernel="blocked")
    fetched.clear()
    got = be.search(Q, 5, exclude=ex)
    assert fetched == []
    np.testing.assert_array_equal(got.ids, expect.ids)
    np.testing.assert_array_equal(got.scores, expect.scores)


def test_toy_backend_is_one_module_and_one_registry_line(toy_registered):
    assert "toy" in backend_names() and BACKENDS["toy"] == "toy_backend:ToyBackend"
    cls = get_backend("toy")
    assert cls.__module__ == "toy_backend" and issubclass(cls, Backend)
    with pytest.raises(ElsaIndexError, match="already registered"):
        register_backend("toy", "toy_backend:Other")


@pytest.mark.parametrize("name, info, search, k, expect", [
    # exact sparse on a dense checkpoint and faiss-flat: every vector, n x dims x 4 B
    ("sparse", {"n_items": 10_000, "dims": 64}, {}, 10, 10_000 * 64 * 4),
    ("faiss-flat", {"n_items": 10_000, "dims": 64}, {"threads": 1}, 10, 10_000 * 64 * 4),
    # IVF: centroids + nprobe/nlist of the vectors and their 8-byte ids
    ("faiss-ivf", {"n_items": 10_000, "dims": 64, "build_params": {"nlist": 100}}, {"nprobe": 8}, 10,
     100 * 64 * 4 + 0.08 * 10_000 * (64 * 4 + 8)),
    ("faiss-ivf", {"n_items": 10_000, "dims": 64, "build_params": {"nlist": None}, "index": {"nlist": 50}},
     {"nprobe": 100}, 10, 50 * 64 * 4 + 10_000 * (64 * 4 + 8)),
    ("faiss-ivf", {"n_items": 10_000, "dims": 64, "build_params": {"nlist": 100}}, {}, 10,
     100 * 64 * 4 + 0.32 * 10_000 * (64 * 4 + 8)),  # the default nprobe (32)
    # HNSW: max(ef_search, k) x 2M vectors and neighbour ids
    ("faiss-hnsw", {"n_items": 10_000, "dims": 64, "build_params": {"M": 16}}, {"ef_search": 32}, 100,
     100 * 2 * 16 * (64 * 4 + 4)),
    ("faiss-hnsw", {"n_items": 10_000, "dims": 64, "build_params": {"M": 16}}, {"ef_search": 256}, 100,
     256 * 2 * 16 * (64 * 4 + 4)),
    ("faiss-hnsw", {"n_items": 10_000, "dims": 64, "build_params": {}}, {}, 10, 64 * 2 * 32 * (64 * 4 + 4)),
])
def test_touched_bytes_models(name, info, search, k, expect):
    tb, model = get_backend(name).touched_bytes(info, search, k, None, 3)
    np.testing.assert_allclose(tb, np.full(3, float(expect)))
    assert model and model != "n/a"


def test_touched_bytes_of_postings_and_unknowns():
    posting = np.array([800.0, 1600.0])  # 8 B per posting (float32 value, int32 id)
    for name, search, share in (("sparse", {}, 0.75), ("sparse", {"kernel": "reference"}, 1.0), ("lucene", {}, 1.0)):
        tb, model = get_backend(name).touched_bytes({"n_items": 5, "dims": 4}, search, 10, posting, 2)
        np.testing.assert_array_equal(tb, posting * share)  # sparse's blocked postings: uint16 ids, 6 B each
        assert "postings" in model
    tb, model = get_backend("lucene").touched_bytes({"n_items": 5, "dims": 4}, {}, 10, None, 2)
    assert np.isnan(tb).all() and model == "n/a"
    tb, model = get_backend("faiss-ivf").touched_bytes({"n_items": 5, "dims": 4, "build_params": {}}, {}, 10, None, 2)
    assert np.isnan(tb).all() and "nlist unknown" in model
    tb, model = Backend.touched_bytes({}, {}, 10, None, 2)
    assert np.isnan(tb).all() and model == "n/a"
