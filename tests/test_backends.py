"""One contract suite, run against every registered backend."""

import threading

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.errors import ElsaIndexError
from elsa_index.indexers import BACKENDS, get_backend
from elsa_index.indexers.base import Backend
from elsa_index.metrics import retrieval_recall

NAMES = sorted(BACKENDS)


@pytest.fixture(scope="module", params=NAMES)
def built(request, sparse_checkpoint, dense_checkpoint):
    cls = get_backend(request.param)
    ckpt = dense_checkpoint if cls.accepts == "dense" else sparse_checkpoint
    return cls().build(ckpt), ckpt


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
    """A batch mixing short and long exclusion lists (searched in groups of similar need) matches
    one-query-at-a-time searches for exact backends, and never returns an excluded item."""
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
        if be.exact:
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


def test_thread_safety(built, histories):
    be, ckpt = built
    Q = _queries(ckpt, histories)
    expect = be.search(Q, 10).ids
    out, errors = {}, []

    def work(t):
        try:
            for r in range(Q.shape[0]):
                out[(t, r)] = be.search(Q[r : r + 1], 10).ids[0]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for (t, r), ids in out.items():
        np.testing.assert_array_equal(ids, expect[r])


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
def test_unknown_parameter_and_unbuilt(name):
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
    be = get_backend("sparse")().build(sparse_checkpoint)
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
