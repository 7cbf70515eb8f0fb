import json
import os
import threading
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.checkpoint import Checkpoint
from elsa_index.errors import DataError, ElsaIndexError
from elsa_index.search import UnknownItemsWarning, build_index, open_index


def _exact_top(ckpt, X, k, exclude=True):
    S = ckpt.score(X)
    if exclude:
        S[X.nonzero()] = -np.inf
    return S


@pytest.fixture(scope="module")
def index(sparse_checkpoint, tmp_path_factory):
    return build_index(sparse_checkpoint, "sparse", tmp_path_factory.mktemp("ix") / "index")


def test_recommend_matches_exact_scoring(index, sparse_checkpoint, histories):
    ids_lists = [list(sparse_checkpoint.item_ids.ids[histories[r].indices]) for r in range(histories.shape[0])]
    rec = index.recommend(ids_lists, k=10)
    S = _exact_top(sparse_checkpoint, histories, 10)
    for r in range(histories.shape[0]):
        expect = np.sort(S[r])[::-1][:10]
        np.testing.assert_allclose(rec.scores[r], expect, rtol=1e-5, atol=1e-6)
        assert not set(rec.indices[r]) & set(histories[r].indices)  # history excluded
        np.testing.assert_array_equal(rec.ids[r], sparse_checkpoint.item_ids.ids[rec.indices[r]])
    # CSR input gives the same answer as id lists.
    rec2 = index.recommend(histories, k=10)
    np.testing.assert_array_equal(rec2.indices, rec.indices)


def test_recommend_allow_and_deny(index, sparse_checkpoint, histories):
    ids = sparse_checkpoint.item_ids.ids
    hist = [list(ids[histories[0].indices])]
    base = index.recommend(hist, k=5)
    deny = list(base.ids[0][:2])
    denied = index.recommend(hist, k=5, deny=deny)
    assert not set(deny) & set(denied.ids[0])
    np.testing.assert_array_equal(denied.ids[0][:3], base.ids[0][2:5])
    allow = list(ids[::7])
    allowed = index.recommend(hist, k=5, allow=allow)
    assert set(allowed.ids[0]) <= set(allow)
    S = _exact_top(sparse_checkpoint, histories[0], 5)[0]
    expect = np.sort(S[::7])[::-1][:5]
    np.testing.assert_allclose(allowed.scores[0], expect, rtol=1e-5)


def test_empty_and_unknown_histories_fall_back_to_popularity(index, sparse_checkpoint):
    ids = sparse_checkpoint.item_ids.ids
    pop_order = np.argsort(-sparse_checkpoint.popularity, kind="stable")
    with pytest.warns(UnknownItemsWarning, match="not in the catalogue"):
        rec = index.recommend([[], ["no-such-item"], [ids[0]]], k=4)
    assert list(rec.fallback) == [True, True, False]
    assert list(rec.indices[0]) == list(pop_order[:4])
    np.testing.assert_array_equal(rec.scores[0], sparse_checkpoint.popularity[pop_order[:4]])
    assert list(rec.indices[1]) == list(pop_order[:4])


def test_padding_when_k_exceeds_catalogue(index, sparse_checkpoint):
    rec = index.recommend([[sparse_checkpoint.item_ids.ids[3]]], k=305)
    assert rec.ids.shape == (1, 305)
    assert (rec.indices[0, :299] >= 0).all()
    assert (rec.indices[0, 299:] == -1).all() and np.isneginf(rec.scores[0, 299:]).all()
    assert (rec.ids[0, 299:] == "").all()


def test_similar_items_and_search(index, sparse_checkpoint):
    ids = sparse_checkpoint.item_ids.ids
    sim = index.similar_items([ids[5], ids[6]], k=3)
    E = sparse_checkpoint.embeddings.toarray()
    S = E[[5, 6]] @ E.T
    S[0, 5] = S[1, 6] = -np.inf
    np.testing.assert_allclose(sim.scores, np.sort(S, axis=1)[:, ::-1][:, :3], rtol=1e-5)
    self_sim = index.similar_items([ids[5]], k=1, include_self=True)
    assert self_sim.indices[0, 0] == 5
    res = index.search(E[[5]], k=1)
    assert res.ids[0, 0] == ids[5]
    with pytest.raises(DataError, match="not in the catalogue"):
        index.similar_items(["nope"])


def test_thread_safe_recommend(index, sparse_checkpoint, histories):
    expect = index.recommend(histories, k=10).indices
    out, errors = {}, []

    def work(t):
        try:
            for _ in range(5):
                out[t] = index.recommend(histories, k=10).indices
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    for t in range(4):
        np.testing.assert_array_equal(out[t], expect)


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
