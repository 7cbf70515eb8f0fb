"""One contract suite for the Index API (recommend, similar_items, search, persistence), run over every backend."""

import json
import os

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.errors import DataError, ElsaIndexError
from elsa_index.indexers import BACKENDS
from elsa_index.metrics import retrieval_recall
from elsa_index.search import UnknownItemsWarning, build_index, open_index

#: every registered backend, plus the test-only "toy" one (tests/toy_backend.py)
NAMES = sorted(BACKENDS) + ["toy"]


def _exact_top(ckpt, X, k, exclude=True):
    S = ckpt.score(X)
    if exclude:
        S[X.nonzero()] = -np.inf
    return S


@pytest.fixture(scope="module", params=NAMES)
def case(request, toy_registered, backend_case, tmp_path_factory):
    """(index built and reopened from disk, its checkpoint) for each backend."""
    cls, ckpt = backend_case(request.param)
    index = build_index(ckpt, request.param, tmp_path_factory.mktemp("ix") / "index")
    yield index, ckpt
    index.close()


@pytest.fixture(scope="module")
def index(sparse_checkpoint, tmp_path_factory):
    """A sparse index, for the checks of the index directory itself."""
    with build_index(sparse_checkpoint, "sparse", tmp_path_factory.mktemp("ix") / "index") as ix:
        yield ix


def _assert_top_k(index, ckpt, S, rec_indices, rec_scores, k):
    """Exact backends return the exact top k; approximate ones near-exact sets with exact scores."""
    top = -np.sort(-S, axis=1)[:, :k]
    if index.backend.exact:
        np.testing.assert_allclose(rec_scores, top, rtol=1e-5, atol=1e-6)
        return
    true = np.where(rec_indices >= 0, np.take_along_axis(S, np.clip(rec_indices, 0, None), axis=1), -np.inf)
    np.testing.assert_allclose(rec_scores[rec_indices >= 0], true[rec_indices >= 0], rtol=1e-4, atol=1e-5)
    assert retrieval_recall(true, rec_indices, top, k).mean() >= 0.9


def test_recommend_matches_exact_scoring(case, histories):
    index, ckpt = case
    ids_lists = [list(ckpt.item_ids.ids[histories[r].indices]) for r in range(histories.shape[0])]
    rec = index.recommend(ids_lists, k=10)
    S = _exact_top(ckpt, histories, 10)
    _assert_top_k(index, ckpt, S, rec.indices, rec.scores, 10)
    for r in range(histories.shape[0]):
        assert not set(rec.indices[r]) & set(histories[r].indices)  # history excluded
        np.testing.assert_array_equal(rec.ids[r], ckpt.item_ids.ids[rec.indices[r]])
    # CSR input gives the same answer as id lists.
    rec2 = index.recommend(histories, k=10)
    np.testing.assert_array_equal(rec2.indices, rec.indices)


def test_search_within_is_the_exact_top_k_among_candidates(case, histories):
    # Backends with their own restricted search (lucene) and exact candidate scoring (all others) give the
    # same rows: exact scores in the shared summation order, ties to the lower index.
    from elsa_index.topk import topk

    index, ckpt = case
    U = ckpt.encode(histories)
    n = ckpt.n_items
    cand = np.arange(1, n, 3)[::-1]  # any order
    S = ckpt.score_candidates(U, np.broadcast_to(np.arange(n), (U.shape[0], n)))
    masked = np.full_like(S, -np.inf)
    masked[:, cand] = S[:, cand]
    masked[histories.nonzero()] = -np.inf
    ref_ids, ref_scores = topk(masked, 7)
    ref_ids[np.isneginf(ref_scores)] = -1
    rec = index.search_within(U, 7, cand, exclude=histories)
    np.testing.assert_array_equal(rec.indices, ref_ids)
    np.testing.assert_array_equal(rec.scores, ref_scores.astype(np.float32))
    assert not rec.fallback.any()
    np.testing.assert_array_equal(rec.ids[rec.indices >= 0], ckpt.item_ids.ids[rec.indices[rec.indices >= 0]])
    # the same rows as recommend(allow=...) with external ids
    hist = [list(ckpt.item_ids.ids[histories[r].indices]) for r in range(3)]
    allow = index.recommend(hist, 7, allow=ckpt.item_ids.ids[cand].tolist())
    np.testing.assert_array_equal(allow.indices, rec.indices[:3])
    # fewer candidates than k: padded
    few = index.search_within(U[:2], 5, [4, 2])
    assert (few.indices[:, 2:] == -1).all() and np.isneginf(few.scores[:, 2:]).all()
    assert set(few.indices[0, :2]) <= {2, 4} and (few.ids[:, 2:] == "").all()


def test_recommend_allow_and_deny(case, histories):
    index, ckpt = case
    ids = ckpt.item_ids.ids
    hist = [list(ids[histories[0].indices])]
    base = index.recommend(hist, k=5)
    deny = list(base.ids[0][:2])
    denied = index.recommend(hist, k=5, deny=deny)
    assert not set(deny) & set(denied.ids[0])
    if index.backend.exact:
        np.testing.assert_array_equal(denied.ids[0][:3], base.ids[0][2:5])
    allow = list(ids[::7])
    allowed = index.recommend(hist, k=5, allow=allow)
    assert set(allowed.ids[0]) <= set(allow)
    S = _exact_top(ckpt, histories[0], 5)[0]
    expect = np.sort(S[::7])[::-1][:5]
    np.testing.assert_allclose(allowed.scores[0], expect, rtol=1e-5)  # the allow-list is always scored exactly
    assert not set(allowed.indices[0]) & set(histories[0].indices)


def test_empty_and_unknown_histories_fall_back_to_popularity(case):
    index, ckpt = case
    ids = ckpt.item_ids.ids
    pop_order = np.argsort(-ckpt.popularity, kind="stable")
    with pytest.warns(UnknownItemsWarning, match="not in the catalogue"):
        rec = index.recommend([[], ["no-such-item"], [ids[0]]], k=4)
    assert list(rec.fallback) == [True, True, False]
    assert list(rec.indices[0]) == list(pop_order[:4])
    np.testing.assert_array_equal(rec.scores[0], ckpt.popularity[pop_order[:4]])
    assert list(rec.indices[1]) == list(pop_order[:4])
    with pytest.warns(UnknownItemsWarning):  # the popular items honour allow and deny too
        rec = index.recommend([["no-such-item"]], k=3, allow=list(ids[::2]), deny=[ids[pop_order[0]]])
    expect = [i for i in pop_order if i % 2 == 0 and i != pop_order[0]][:3]
    assert rec.fallback[0] and list(rec.indices[0]) == expect


def test_padding_when_k_exceeds_catalogue(case):
    index, ckpt = case
    rec = index.recommend([[ckpt.item_ids.ids[3]]], k=305)
    assert rec.ids.shape == (1, 305)
    if index.backend.exact:
        assert (rec.indices[0, :299] >= 0).all()
    assert (rec.indices[0, 299:] == -1).all() and np.isneginf(rec.scores[0, 299:]).all()
    assert (rec.ids[0, 299:] == "").all()
    assert (rec.ids[0][rec.indices[0] < 0] == "").all()


def test_similar_items_and_search(case):
    index, ckpt = case
    ids = ckpt.item_ids.ids
    sim = index.similar_items([ids[5], ids[6]], k=3)
    E = ckpt.embeddings.toarray() if sp.issparse(ckpt.embeddings) else np.asarray(ckpt.embeddings)
    S = E[[5, 6]] @ E.T
    S[0, 5] = S[1, 6] = -np.inf
    _assert_top_k(index, ckpt, S, sim.indices, sim.scores, 3)
    assert 5 not in sim.indices[0] and 6 not in sim.indices[1]
    self_sim = index.similar_items([ids[5]], k=1, include_self=True)
    assert self_sim.indices[0, 0] == 5
    res = index.search(E[[5]], k=1)
    assert res.ids[0, 0] == ids[5]
    res = index.search(E[[5]], k=2, exclude=[[5]])
    assert 5 not in res.indices[0]
    with pytest.raises(DataError, match="not in the catalogue"):
        index.similar_items(["nope"])


def test_thread_safe_recommend(case, histories, in_threads):
    index, ckpt = case
    expect = index.recommend(histories, k=10)
    allowed = list(ckpt.item_ids.ids[::3])
    expect_allow = index.recommend(histories, k=5, allow=allowed)

    def work(t):
        return [(index.recommend(histories, k=10), index.recommend(histories, k=5, allow=allowed)) for _ in range(3)]

    for runs in in_threads(work).values():
        for rec, rec_allow in runs:
            np.testing.assert_array_equal(rec.indices, expect.indices)
            np.testing.assert_array_equal(rec.scores, expect.scores)
            np.testing.assert_array_equal(rec_allow.indices, expect_allow.indices)


def test_save_open_round_trip(case, histories):
    index, ckpt = case
    expect = index.recommend(histories, k=10)
    for mmap in (True, False):
        with open_index(index.path, mmap=mmap) as again:
            assert again.backend.name == index.backend.name
            assert again.checkpoint.fingerprint == ckpt.fingerprint
            rec = again.recommend(histories, k=10)
            np.testing.assert_array_equal(rec.indices, expect.indices)
            np.testing.assert_array_equal(rec.scores, expect.scores)
    with open_index(index.path, checkpoint=ckpt) as shared:  # one checkpoint shared, not the stored copy
        assert shared.checkpoint is ckpt
        np.testing.assert_array_equal(shared.recommend(histories, k=10).indices, expect.indices)


def _mapped(a) -> bool:
    """Whether an array's memory is a memory-mapped file."""
    import mmap

    while a is not None:
        if isinstance(a, mmap.mmap):
            return True
        a = getattr(a, "base", None)
    return False


def test_open_maps_arrays_and_stores_embeddings_once(index, case):
    # The stored checkpoint and the sparse backend's postings are memory-mapped, read-only.
    opened = open_index(index.path)
    E, P = opened.checkpoint.embeddings, opened.backend.postings_
    assert _mapped(E.data) and _mapped(E.indices) and _mapped(P.data) and _mapped(P.indices)
    assert not P.data.flags.writeable
    with pytest.raises(ValueError):
        E.data[0] = 1.0
    assert not _mapped(open_index(index.path, mmap=False).checkpoint.embeddings.data)
    # A backend that re-ranks with the embeddings uses the checkpoint's arrays, and its directory has no copy.
    ix, ckpt = case
    emb = getattr(ix.backend, "emb_", None)
    if ix.backend.name == "lucene":
        assert emb.data is ix.checkpoint.embeddings.data or np.shares_memory(emb.data, ix.checkpoint.embeddings.data)
        assert not list((ix.path / "backend").glob("embeddings_*.npy"))


def test_open_checks_fingerprint_and_directory(index, sparse_checkpoint, nonneg_checkpoint, tmp_path):
    reopened = open_index(index.path, checkpoint=sparse_checkpoint)
    assert reopened.backend.name == "sparse"
    with pytest.raises(ElsaIndexError, match="rebuild the index"):
        open_index(index.path, checkpoint=nonneg_checkpoint)
    with pytest.raises(ElsaIndexError, match="not found"):
        open_index(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    with pytest.raises(ElsaIndexError, match="index.json"):
        open_index(tmp_path / "bad")


def test_corrupted_and_newer_index(tmp_path, sparse_checkpoint):
    ix = build_index(sparse_checkpoint, "sparse", tmp_path / "ix")
    m = json.loads((tmp_path / "ix" / "index.json").read_text())
    m["format_version"] = 99
    (tmp_path / "ix" / "index.json").write_text(json.dumps(m))
    with pytest.raises(ElsaIndexError, match="upgrade elsa-index"):
        open_index(tmp_path / "ix")
    m["format_version"] = 1
    (tmp_path / "ix" / "index.json").write_text(json.dumps(m))
    os.remove(tmp_path / "ix" / "backend" / "postings_indptr.npy")
    with pytest.raises(ElsaIndexError, match="postings_indptr.npy"):
        open_index(tmp_path / "ix")


def test_failed_build_leaves_nothing(tmp_path, sparse_checkpoint):
    with pytest.raises(ElsaIndexError, match="unknown parameter"):
        build_index(sparse_checkpoint, "sparse", tmp_path / "ix", depth=3)
    with pytest.raises(ElsaIndexError, match="unknown backend"):
        build_index(sparse_checkpoint, "annoy", tmp_path / "ix")
    assert os.listdir(tmp_path) == []


def test_bad_queries(index):
    with pytest.raises(ElsaIndexError, match="k must be a positive integer"):
        index.recommend([["item0001"]], k=0)
    with pytest.raises(ElsaIndexError, match="dims"):
        index.search(np.ones((1, 3)), k=2)
    with pytest.raises(DataError, match="list of item ids"):
        index.recommend(["item0001"], k=2)
    with pytest.raises(DataError, match="not in the catalogue"):
        index.recommend([["item0001"]], k=2, deny=["zzz"])
    q = np.ones((1, index.checkpoint.dims), np.float32)
    for bad, match in ((np.array([[1, 2]]), "1-D array of integer"), (np.array([0.5]), "1-D array of integer"),
                       ([index.n_items], "outside"), ([-1], "outside")):
        with pytest.raises(ElsaIndexError, match=match):
            index.search_within(q, 2, bad)
    with pytest.raises(ElsaIndexError, match="k must be a positive integer"):
        index.search_within(q, 0, [1])
    with pytest.raises(ElsaIndexError, match="exclude has 2 rows"):
        index.search_within(q, 2, [1], exclude=[[1], [2]])
    with pytest.raises(ElsaIndexError, match="no restricted search of its own"):
        index.backend.search_within(q, 2, [1])


def test_a_closed_index_refuses_every_query(sparse_checkpoint, tmp_path):
    from elsa_index.errors import BackendError

    index = build_index(sparse_checkpoint, "sparse", tmp_path / "ix")
    ids = list(sparse_checkpoint.item_ids.ids[:2])
    index.close()
    index.close()  # idempotent
    Q = sparse_checkpoint.encode(sparse_checkpoint.histories_to_matrix([ids])[0])
    for call in (lambda: index.recommend([ids], 3), lambda: index.similar_items(ids[:1], 3),
                 lambda: index.search(Q, 3), lambda: index.search_within(Q, 3, [0, 1, 2])):
        with pytest.raises(BackendError, match="index is closed"):
            call()
    with open_index(tmp_path / "ix") as again:  # reopening works
        assert again.recommend([ids], 3).ids.shape == (1, 3)
