"""The approximate sparse backend: exact when unlimited, accurate at its defaults, strict about its parameters."""

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import _ckpt, planted_sparse_embeddings
from elsa_index.errors import BackendError, ElsaIndexError
from elsa_index.indexers import get_backend
from elsa_index.indexers.base import Backend
from elsa_index.metrics import retrieval_recall
from elsa_index.scoring import score_rows

#: budgets that read every agreeing posting: heap_factor <= 1 / nnz_max makes the stopping bound safe
UNLIMITED = {"heap_factor": 1e-6, "query_share": 1.0, "max_postings": 0}


def _approx(**params):
    """The backend with its approximate search on (these catalogues are small enough for the exact path)."""
    return get_backend("sparse-approx")(**{"exact_below": 0, **params})


@pytest.fixture(scope="module")
def catalogue():
    """1,500 signed items (8 of 128 dims each, planted groups) and 40 signed queries of ~60 terms."""
    E = planted_sparse_embeddings(n_items=1500, dims=128, nnz=8, n_groups=16, seed=5)
    ck = _ckpt(E, "compressed_elsa")
    rng = np.random.default_rng(11)
    Q = sp.random(40, 128, density=0.45, random_state=12, dtype=np.float32, format="csr")
    Q.data = rng.normal(size=Q.nnz).astype(np.float32)
    return ck, Q


@pytest.fixture(scope="module")
def exact(catalogue):
    return get_backend("sparse")().build(catalogue[0])


def _tied_queries(dims: int, n: int, rng) -> sp.csr_matrix:
    """Queries with a few distinct weights on few dims: many items tie."""
    Q = sp.random(n, dims, density=0.1, random_state=3, dtype=np.float32, format="csr")
    Q.data = rng.choice(np.array([-1.0, 0.5, 1.0], np.float32), size=Q.nnz)
    return Q


def _agree_in_threads(backend, Q, expect, in_threads, k=10):
    """Four threads search ``Q`` one query at a time; every result equals ``expect`` row for row."""
    def work(t):
        return [backend.search(Q[r : r + 1], k) for r in range(Q.shape[0])]

    for results in in_threads(work, 4).values():
        for r, res in enumerate(results):
            np.testing.assert_array_equal(res.ids[0], expect.ids[r])
            np.testing.assert_array_equal(res.scores[0], expect.scores[r])


def test_unlimited_budgets_equal_exact_bit_for_bit(catalogue, exact):
    ck, Q = catalogue
    ap = _approx(**UNLIMITED).build(ck)
    for k in (1, 10, 200, ck.n_items):
        a, b = exact.search(Q, k), ap.search(Q, k)
        np.testing.assert_array_equal(b.ids, a.ids)
        np.testing.assert_array_equal(b.scores, a.scores)  # same summation order: identical floats


def test_exclusions_are_skipped_inside_the_search(catalogue, exact):
    # The approximate search counts excluded items as met: with unlimited budgets it equals the exact search with
    # the same exclusions (none returned, rows padded when fewer than k items are left), it never asks for more
    # than k, and a query's result does not depend on the other queries' exclusions.
    ck, Q = catalogue
    ap = _approx(**UNLIMITED).build(ck)
    rng = np.random.default_rng(4)
    n = Q.shape[0]
    ex = [rng.choice(ck.n_items, size=(0, 5, 300, ck.n_items - 3)[r % 4], replace=False) for r in range(n)]
    for k in (10, 200):
        a, b = exact.search(Q, k, exclude=ex), ap.search(Q, k, exclude=ex)
        np.testing.assert_array_equal(b.ids, a.ids)
        np.testing.assert_array_equal(b.scores, a.scores)
        for r in range(n):
            assert not np.isin(b.ids[r], ex[r]).any()
        assert (b.ids[3::4, 3:] == -1).all() and (b.ids[3::4, :3] >= 0).all()
    asked = []
    inner = ap._search
    ap._search = lambda queries, k, exclude=None: asked.append(k) or inner(queries, k, exclude)
    defaults = _approx().build(ck)
    one = [defaults.search(Q[r : r + 1], 10, exclude=[ex[r]]) for r in range(n)]
    both = defaults.search(Q, 10, exclude=ex)
    np.testing.assert_array_equal(np.vstack([o.ids for o in one]), both.ids)
    ap.search(Q, 10, exclude=ex)
    assert asked == [10]


def test_unlimited_budgets_keep_the_tie_rule(exact, catalogue):
    """Quantised values and weights make many equal scores: both backends keep the lower item index."""
    ck, _ = catalogue
    E = ck.embeddings.copy()
    E.data = np.round(E.data * 4).astype(np.float32) / 4
    tied = _ckpt(E, "compressed_elsa")
    Q = _tied_queries(ck.dims, 30, np.random.default_rng(2))
    ex = get_backend("sparse")().build(tied)
    ap = _approx(**UNLIMITED).build(tied)
    a, b = ex.search(Q, 50), ap.search(Q, 50)
    assert (np.diff(a.scores, axis=1) == 0).any()  # the case has ties
    np.testing.assert_array_equal(b.ids, a.ids)
    np.testing.assert_array_equal(b.scores, a.scores)


def test_scores_are_exact_and_recall_high_at_defaults(catalogue, exact):
    ck, Q = catalogue
    ap = _approx().build(ck)
    res = ap.search(Q, 10)
    # Every returned score is the exact inner product in the shared summation order.
    np.testing.assert_array_equal(res.scores, score_rows(ck.embeddings, Q, res.ids))
    ref = exact.search(Q, 10)
    true = np.where(res.ids >= 0, res.scores, -np.inf)
    assert retrieval_recall(true, res.ids, ref.scores, 10).mean() >= 0.9
    # ...and it reads less than everything.
    ap.search_stats()
    ap.search(Q, 10)
    lazy = ap.search_stats()["postings"]
    ap.set_search_params(**UNLIMITED)
    ap.search(Q, 10)
    assert lazy < ap.search_stats()["postings"]


def test_budgets_trade_recall_for_work(catalogue, exact):
    ck, Q = catalogue
    ap = _approx().build(ck)
    ref = exact.search(Q, 10)
    recall, work = [], []
    for params in ({"max_postings": 20}, {"query_share": 0.3}, {}, UNLIMITED):
        ap.set_search_params(**{**ap.search_params, "exact_below": 0, **params})
        ap.search_stats()
        res = ap.search(Q, 10)
        work.append(ap.search_stats()["postings"])
        recall.append(retrieval_recall(np.where(res.ids >= 0, res.scores, -np.inf), res.ids, ref.scores, 10).mean())
    assert work[0] <= 20 * Q.shape[0] and work[0] < work[-1]
    assert recall[0] < recall[-1] == 1.0


def test_posting_share_prunes_lists(catalogue):
    ck, Q = catalogue
    full = _approx().build(ck)
    half = _approx(posting_share=0.5).build(ck)
    assert len(half.lids_) < 0.6 * len(full.lids_)
    assert (half.search(Q, 5).ids >= 0).all()  # still k results


def test_deterministic_and_thread_safe(catalogue, in_threads):
    ck, Q = catalogue
    a = _approx().build(ck)
    b = _approx().build(ck)
    expect = a.search(Q, 10)
    np.testing.assert_array_equal(b.search(Q, 10).ids, expect.ids)
    np.testing.assert_array_equal(a.perm_, b.perm_)

    _agree_in_threads(a, Q, expect, in_threads)


def test_all_negative_query_returns_zero_score_items_first(catalogue, exact):
    """No agreeing list holds anything positive: the top k are items scoring 0, lowest index first."""
    ck, _ = catalogue
    q = np.zeros((1, ck.dims), np.float32)
    q[0, :3] = -1.0
    ap = _approx().build(ck)
    a, b = exact.search(q, 20), ap.search(q, 20)
    np.testing.assert_array_equal(b.ids, a.ids)
    np.testing.assert_array_equal(b.scores, a.scores)


@pytest.mark.parametrize("params, match", [
    ({"heap_factor": 0}, "heap_factor must be a finite number > 0.0 and <= 1.0"),
    ({"heap_factor": -0.5}, "heap_factor"),
    ({"heap_factor": 1.5}, "heap_factor"),
    ({"query_share": 0.0}, "query_share must be a finite number > 0.0 and <= 1.0"),
    ({"query_share": 1.01}, "query_share"),
    ({"max_postings": -1}, "max_postings must be an integer >= 0"),
    ({"max_postings": 2.5}, "max_postings"),
    ({"posting_share": 0}, "posting_share must be a finite number > 0.0 and <= 1.0"),
    ({"posting_share": float("nan")}, "posting_share"),
    ({"exact_below": -1}, "exact_below must be an integer >= 0"),
    ({"exact_below": 1.5}, "exact_below"),
])
def test_bad_parameters_are_refused(params, match):
    with pytest.raises(BackendError, match=match):
        _approx(**params)


def test_bad_search_parameters_leave_the_old_ones(catalogue):
    ap = _approx().build(catalogue[0])
    with pytest.raises(BackendError, match="heap_factor"):
        ap.set_search_params(heap_factor=0)
    assert ap.get_search_params() == {**ap.search_params, "exact_below": 0}


def test_dense_checkpoint_refused(dense_checkpoint):
    with pytest.raises(ElsaIndexError, match="indexes sparse embeddings"):
        _approx().build(dense_checkpoint)


def test_wider_query_refused(catalogue):
    ck, _ = catalogue
    ap = _approx().build(ck)
    with pytest.raises(ElsaIndexError, match="dims"):
        ap.search(sp.csr_matrix((1, ck.dims + 3), dtype=np.float32), 5)


def test_corrupted_files_refused(catalogue, tmp_path):
    ck, Q = catalogue
    ap = _approx().build(ck)
    ap.save(tmp_path / "ix")
    back = Backend.load(tmp_path / "ix", mmap=True)
    np.testing.assert_array_equal(back.search(Q, 10).ids, ap.search(Q, 10).ids)
    items = np.load(tmp_path / "ix" / "lists_items.npy")
    items[0] = ck.n_items + 7  # points outside the catalogue
    np.save(tmp_path / "ix" / "lists_items.npy", items)
    with pytest.raises(ElsaIndexError, match=r"lists arrays: column indices outside"):
        Backend.load(tmp_path / "ix", verify=False)
    with pytest.raises(ElsaIndexError, match="lists_items.npy"):
        Backend.load(tmp_path / "ix")  # the recorded digest no longer matches


@pytest.mark.parametrize("name, edit, message", [
    ("forward_values.npy", lambda a: np.where(np.arange(len(a)) == 0, np.nan, a).astype(a.dtype), "values contain NaN"),
    ("forward_values.npy", lambda a: a.astype(np.float64), "float32 values"),
    ("forward_dims.npy", lambda a: np.full_like(a, 60000), "column indices outside"),
    ("forward_indptr.npy", lambda a: np.r_[a[:1], a[2:3], a[1:2], a[3:]], "not monotone"),
])
def test_corrupted_forward_rows_refused(catalogue, tmp_path, name, edit, message):
    ck, _ = catalogue
    ap = _approx().build(ck)
    ap.save(tmp_path / "ix")
    np.save(tmp_path / "ix" / name, edit(np.load(tmp_path / "ix" / name)))
    with pytest.raises(ElsaIndexError, match=message):
        Backend.load(tmp_path / "ix", verify=False)


def test_default_heap_factor_follows_the_query_density(catalogue):
    from elsa_index.indexers.sparse_approx import default_heap_factor

    # 0.55 while an item shares at most one query term on average, lower the more it shares.
    assert default_heap_factor(16, 200, 4096) == 0.55 == default_heap_factor(8, 10, 128)
    terms = np.array([50, 200, 455, 710])
    h = default_heap_factor(16, terms, 1024)
    assert (np.diff(h) < 0).all() and h[0] == 0.55 and abs(h[2] - 0.55 * (16 * 455 / 1024) ** -0.15) < 1e-12
    np.testing.assert_allclose([default_heap_factor(16, t, 1024) for t in terms], h, rtol=1e-12)
    ck, Q = catalogue
    ap = _approx().build(ck)
    assert ap.get_search_params()["heap_factor"] is None and ap.heap_factor_ is None
    assert ap.info()["heap_factor_in_use"] == "per query"
    # Each query gets the heap factor of its own number of terms.
    mean = ck.embeddings.nnz / ck.n_items
    for r in range(5):
        q = Q[r : r + 1]
        explicit = _approx(heap_factor=default_heap_factor(mean, q.nnz, ck.dims)).build(ck)
        np.testing.assert_array_equal(ap.search(q, 10).ids, explicit.search(q, 10).ids)


def test_long_rows_are_searched_exactly_by_default(monkeypatch):
    from elsa_index.indexers import sparse_approx

    monkeypatch.setattr(sparse_approx, "DEFAULT_EXACT_BELOW", 0)  # only the long-row clause of the default rule
    short = _ckpt(planted_sparse_embeddings(n_items=200, dims=128, nnz=16, seed=1), "compressed_elsa")
    long = _ckpt(planted_sparse_embeddings(n_items=200, dims=128, nnz=17, seed=1), "compressed_elsa")
    a = get_backend("sparse-approx")().build(short)
    b = get_backend("sparse-approx")().build(long)
    assert a.info()["search_path"] == "approximate" and b.info()["search_path"] == "exact"
    b.set_search_params(exact_below=0)  # an explicit threshold replaces the default rule
    assert b.info()["search_path"] == "approximate"


def test_touched_bytes_model(catalogue):
    ck, _ = catalogue
    ap = _approx().build(ck)
    tb, model = type(ap).touched_bytes(ap.info(), ap.get_search_params(), 10, None, 2)
    # 10 items found through one 5-byte list entry each, scored from rows of 8 entries (6 B each); rows of
    # one length are found without their offset
    assert ap.info()["uniform_rows"]
    np.testing.assert_allclose(tb, np.full(2, 10 * (5 + 8 * 6)))
    assert "forward row" in model
    tb, model = type(ap).touched_bytes({**ap.info(), "uniform_rows": False}, {}, 10, None, 2)
    np.testing.assert_allclose(tb, np.full(2, 10 * (5 + 8 * 6 + 8.0)))
    assert "offset" in model
    tb, model = type(ap).touched_bytes({"n_items": 5, "dims": 4}, {}, 10, None, 2)
    assert np.isnan(tb).all() and model == "n/a"


def test_code_threshold_selects_the_entries_that_reach_tau():
    """The per-term code threshold of the posting loop keeps exactly the entries whose level x weight >= tau."""
    from elsa_index.indexers import _approx_kernels as K

    rng = np.random.default_rng(4)
    codes = np.arange(K.CODE_MAX + 1)
    for m, tau in zip(10.0 ** rng.uniform(-3, 3, 300), 10.0 ** rng.uniform(-5, 3, 300)):
        # include taus that sit exactly on a level
        for t in (tau, K.LEVELS[int(rng.integers(1, K.CODE_MAX + 1))] * m):
            cth = K._code_at_least(K.LEVELS, m, t)
            np.testing.assert_array_equal(codes[1:] >= cth, K.LEVELS[1:] * m >= t)


def test_empty_rows_and_unlimited_budgets_equal_exact():
    """Items without entries (first, middle and last rows) are scored as 0 and keep the exact ranking."""
    rng = np.random.default_rng(8)
    E = sp.random(300, 40, density=0.1, random_state=9, dtype=np.float32, format="lil")
    for i in (0, 150, 299):
        E[i, :] = 0
    E = sp.csr_matrix(E)
    E.eliminate_zeros()
    E.data = rng.normal(size=E.nnz).astype(np.float32)
    assert np.diff(E.indptr)[[0, 150, 299]].sum() == 0
    ck = _ckpt(E, "compressed_elsa")
    Q = sp.random(12, 40, density=0.3, random_state=10, dtype=np.float32, format="csr")
    Q.data = rng.normal(size=Q.nnz).astype(np.float32)
    ex = get_backend("sparse")().build(ck)
    ap = _approx(**UNLIMITED).build(ck)
    for k in (5, 300):
        a, b = ex.search(Q, k), ap.search(Q, k)
        np.testing.assert_array_equal(b.ids, a.ids)
        np.testing.assert_array_equal(b.scores, a.scores)


@pytest.mark.parametrize("nnz", [16, 20])
def test_uniform_rows_score_bit_for_bit(nnz):
    """Rows of one length are addressed without their offsets (16 entries: a fixed-length loop; 20: the
    eight-entry steps and a tail); both keep the exact backend's scores and ranking."""
    from elsa_index.indexers import _approx_kernels as K

    E = planted_sparse_embeddings(n_items=800, dims=96, nnz=nnz, n_groups=8, seed=3)
    assert (np.diff(sp.csr_matrix(E).indptr) == nnz).all()
    ck = _ckpt(E, "compressed_elsa")
    rng = np.random.default_rng(6)
    Q = sp.random(20, 96, density=0.5, random_state=7, dtype=np.float32, format="csr")
    Q.data = rng.normal(size=Q.nnz).astype(np.float32)
    ap = _approx(**UNLIMITED).build(ck)
    assert ap.row_stride_ == nnz
    a, b = get_backend("sparse")().build(ck).search(Q, 50), ap.search(Q, 50)
    np.testing.assert_array_equal(b.ids, a.ids)
    np.testing.assert_array_equal(b.scores, a.scores)
    assert K.uniform_stride(np.array([0, 3, 6, 9]), 3) == 3
    assert K.uniform_stride(np.array([0, 3, 5, 9]), 4) == 0  # ragged rows: offsets are read


def test_small_catalogues_are_searched_exactly(catalogue, exact, in_threads, tmp_path):
    ck, Q = catalogue
    default = get_backend("sparse-approx")().build(ck)  # 1,500 items < exact_below
    assert default.info()["search_path"] == "exact"
    for k in (1, 10, ck.n_items):
        a, b = exact.search(Q, k), default.search(Q, k)
        np.testing.assert_array_equal(b.ids, a.ids)
        np.testing.assert_array_equal(b.scores, a.scores)
    assert default.search_stats() == {"postings": 0, "scored": 0}  # the approximate kernel never ran
    # The threshold is a strict bound on the number of items, and a search parameter.
    default.set_search_params(exact_below=ck.n_items)
    assert default.info()["search_path"] == "approximate"
    default.search(Q, 10)
    assert default.search_stats()["scored"] > 0
    default.set_search_params(exact_below=ck.n_items + 1)
    assert default.info()["search_path"] == "exact"
    # Concurrent first searches of a fresh index make its exact postings once and agree.
    fresh = get_backend("sparse-approx")().build(ck)
    expect = exact.search(Q, 10)

    _agree_in_threads(fresh, Q, expect, in_threads)
    # A saved and reopened (memory-mapped) index takes the same path with the same results.
    fresh.save(tmp_path / "ix")
    back = Backend.load(tmp_path / "ix", mmap=True)
    assert back.info()["search_path"] == "exact"
    np.testing.assert_array_equal(back.search(Q, 10).ids, expect.ids)
    np.testing.assert_array_equal(back.search(Q, 10).scores, expect.scores)
    tb, model = type(back).touched_bytes(back.info(), back.get_search_params(), 10, np.array([100.0]), 1)
    assert tb.tolist() == [75.0] and model.startswith("exact path")
