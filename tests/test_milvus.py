"""The ``milvus`` backend on Milvus Lite (in-process, no network): dense checkpoints through the shared contract
suites, the sign split, catalogue updates, and the faults (fingerprints, dropped collections, unreachable servers,
tokens, a database locked by another process, pymilvus missing, a failed build)."""

import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.errors import BackendError, DataError, ElsaIndexError
from elsa_index.indexers import get_backend
from elsa_index.indexers.base import Backend
from elsa_index.metrics import retrieval_recall
from elsa_index.search import build_index, open_index

MilvusIndex = get_backend("milvus")
if MilvusIndex.missing_dependency():  # pragma: no cover - the test extra installs it
    pytest.skip(MilvusIndex.missing_dependency(), allow_module_level=True)

# The shared contract suites, run here over a DENSE checkpoint (test_backends.py / test_search.py run them over
# the sparse one): the imported tests take this module's `built` and `case` fixtures.
from test_backends import (test_bad_queries, test_batch_equals_one_by_one,  # noqa: E402,F401
                           test_exclusion_lists_of_very_different_lengths, test_exclusions,
                           test_facts_and_context_manager, test_padding_when_k_exceeds_catalogue,
                           test_results_agree_with_exact_scoring, test_save_load_round_trip,
                           test_saved_without_embeddings_loads_with_its_checkpoint, test_thread_safety)
from test_search import (test_empty_and_unknown_histories_fall_back_to_popularity,  # noqa: E402,F401
                         test_recommend_allow_and_deny, test_recommend_matches_exact_scoring,
                         test_save_open_round_trip, test_search_within_is_the_exact_top_k_among_candidates,
                         test_similar_items_and_search, test_thread_safe_recommend)
from test_search import \
    test_padding_when_k_exceeds_catalogue as test_index_padding_when_k_exceeds_catalogue  # noqa: E402,F401


@pytest.fixture(scope="module")
def built(dense_checkpoint):
    be = MilvusIndex().build(dense_checkpoint)
    assert be.info()["index"]["index_type"] == "HNSW"
    yield be, dense_checkpoint
    be.close()


@pytest.fixture(scope="module")
def case(dense_checkpoint, tmp_path_factory):
    index = build_index(dense_checkpoint, "milvus", tmp_path_factory.mktemp("ix") / "index")
    yield index, dense_checkpoint
    index.close()


@pytest.fixture(scope="module")
def sparse_built(sparse_checkpoint):
    with MilvusIndex(depth=30).build(sparse_checkpoint) as be:
        yield be


# ----------------------------------------------------------------- sign split


def test_signed_embeddings_agree_with_exact_after_rerank(sparse_built, sparse_checkpoint, histories):
    ckpt, be = sparse_checkpoint, sparse_built
    assert (ckpt.embeddings.data < 0).any()  # the fixture is signed
    U = sp.csr_matrix(ckpt.encode(histories))
    S = (U @ ckpt.embeddings.T).toarray().astype(np.float64)
    exact = get_backend("sparse")().build(ckpt).search(U, 10)
    res = be.search(U, 10)
    true = np.take_along_axis(S, np.clip(res.ids, 0, None), axis=1)
    np.testing.assert_allclose(res.scores, true, rtol=1e-5, atol=1e-6)  # re-ranked scores are the signed ones
    assert retrieval_recall(true, res.ids, -np.sort(-S, axis=1)[:, :10], 10).mean() >= 0.95
    # With a depth covering the catalogue the re-ranked rows are the exact backend's, ties included.
    be.set_search_params(depth=ckpt.n_items)
    try:
        full = be.search(U, 10)
    finally:
        be.set_search_params(depth=30)
    np.testing.assert_array_equal(full.ids, exact.ids)
    np.testing.assert_array_equal(full.scores, exact.scores)


def test_without_rerank_milvus_scores_the_agreeing_signs(sparse_built, sparse_checkpoint, histories):
    """Each (dimension, sign) is its own non-negative sparse dimension: Milvus's score is the sum over the
    dimensions where query and item agree in sign of |u_d| |a_jd|, the positive part of u . a_j."""
    ckpt, be = sparse_checkpoint, sparse_built
    U = sp.csr_matrix(ckpt.encode(histories))
    E = ckpt.embeddings
    pos = (U.maximum(0) @ E.maximum(0).T + (-U).maximum(0) @ (-E).maximum(0).T).toarray()
    be.set_search_params(rerank=False)
    try:
        res = be.search(U, 5)
    finally:
        be.set_search_params(rerank=True)
    got = np.take_along_axis(pos, res.ids, axis=1)
    np.testing.assert_allclose(res.scores, got, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.scores, -np.sort(-pos, axis=1)[:, :5], rtol=1e-5, atol=1e-6)


def test_query_terms_prunes_what_milvus_sees(sparse_built, sparse_checkpoint, histories):
    U = sp.csr_matrix(sparse_checkpoint.encode(histories))
    be = sparse_built
    be.set_search_params(query_terms=1, rerank=False)
    try:
        res = be.search(U[:3], 5)
    finally:
        be.set_search_params(query_terms=None, rerank=True)
    E = sparse_checkpoint.embeddings
    for r in range(3):
        u = U[r].toarray()[0]
        d = int(np.argmax(np.abs(u)))  # the one term sent
        col = E[:, d].toarray()[:, 0] * np.sign(u[d])
        expect = np.abs(u[d]) * np.maximum(col, 0)
        np.testing.assert_allclose(res.scores[r], np.take(expect, res.ids[r]), rtol=1e-5)
        assert res.scores[r, 0] == pytest.approx(expect.max(), rel=1e-5)


# ------------------------------------------------------------ catalogue updates


def test_upsert_and_delete_are_visible_to_the_next_query_and_persist(sparse_checkpoint, tmp_path):
    ckpt = sparse_checkpoint
    path = tmp_path / "ix"
    q = ckpt.embeddings[5]
    with build_index(ckpt, "milvus", path) as ix:
        assert ix.search(q, 1).ids[0, 0] == "item0005"
        # A new item pointing the query's way wins; a changed item (item0006 made to equal item0005) ties second.
        ix.upsert_items(["new-item", "item0006"], sp.vstack([q * 2, q]))
        res = ix.search(q, 3)
        assert ix.n_items == ckpt.n_items + 1 and res.ids[0, 0] == "new-item"
        assert set(res.ids[0, 1:]) == {"item0005", "item0006"}
        assert ix.checkpoint.popularity[-1] == 0 and ix.checkpoint.fingerprint != ckpt.fingerprint
        ix.delete_items(["item0005", "new-item"])
        res = ix.search(q, 2)
        assert res.ids[0, 0] == "item0006" and "item0005" not in ix.item_ids and ix.n_items == ckpt.n_items - 1
        # Row indices after the deleted row moved up; results and exact scores agree.
        np.testing.assert_allclose(res.scores[0, 0], float((q @ q.T).toarray()[0, 0]), rtol=1e-6)
        expect = ix.search(ix.checkpoint.embeddings[:20], 5)
        fp = ix.checkpoint.fingerprint
    with open_index(path) as again:  # the directory describes the updated catalogue
        assert again.checkpoint.fingerprint == fp and again.n_items == ckpt.n_items - 1
        got = again.search(again.checkpoint.embeddings[:20], 5)
        np.testing.assert_array_equal(got.ids, expect.ids)
        np.testing.assert_array_equal(got.scores, expect.scores)


def test_dense_index_takes_sparse_query_rows(built):
    be, ckpt = built
    Q = ckpt.embeddings[:4]
    a, b = be.search(Q, 5), be.search(sp.csr_matrix(Q), 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_dense_upsert_and_a_row_emptied_by_an_upsert(dense_checkpoint, sparse_checkpoint, tmp_path):
    with build_index(dense_checkpoint, "milvus", tmp_path / "dense") as ix:
        q = np.asarray(dense_checkpoint.embeddings[7])
        ix.upsert_items(["item0100"], q[None, :] * 3)
        assert ix.search(q, 1).ids[0, 0] == "item0100"
        with pytest.raises(DataError, match=r"shape \(1, 7\); expected \(1, 16\)"):
            ix.upsert_items(["x"], np.ones((1, 7)))
    ix = build_index(sparse_checkpoint, "milvus")
    q = sparse_checkpoint.embeddings[5]
    ix.upsert_items(["item0005"], sp.csr_matrix((1, sparse_checkpoint.dims)))  # no non-zero left: not stored
    assert "item0005" not in ix.search(q, 20).ids[0]
    assert ix.backend.search(q, 20).ids.max() < ix.n_items
    ix.close()


def test_updates_refused_by_other_backends_and_bad_updates(sparse_checkpoint, tmp_path):
    with build_index(sparse_checkpoint, "sparse") as ix:
        with pytest.raises(BackendError, match="rebuild the index"):
            ix.upsert_items(["a"], sp.csr_matrix((1, sparse_checkpoint.dims)))
        with pytest.raises(BackendError, match="rebuild the index"):
            ix.delete_items(["item0001"])
    ix = build_index(sparse_checkpoint, "milvus")
    with pytest.raises(DataError, match="not in the catalogue"):
        ix.delete_items(["no-such-item"])
    with pytest.raises(DataError, match="more than once"):
        ix.upsert_items(["a", "a"], sp.csr_matrix((2, sparse_checkpoint.dims)))
    with pytest.raises(DataError, match="NaN"):
        ix.upsert_items(["a"], np.full((1, sparse_checkpoint.dims), np.nan))
    assert ix.n_items == sparse_checkpoint.n_items  # nothing changed
    ix.close()


# --------------------------------------------------------------------- faults


def test_collection_fingerprint_mismatch_and_dropped_collection(sparse_checkpoint, nonneg_checkpoint, tmp_path):
    db = str(tmp_path / "shared.db")  # one Lite database holding named collections, as a server would
    a = build_index(sparse_checkpoint, "milvus", tmp_path / "a", uri=db, collection="items")
    a.close()
    with pytest.raises(BackendError, match="collection 'items' already exists.*drop_existing=True"):
        build_index(nonneg_checkpoint, "milvus", tmp_path / "b", uri=db, collection="items")
    build_index(nonneg_checkpoint, "milvus", tmp_path / "b", uri=db, collection="items", drop_existing=True).close()
    with pytest.raises(BackendError, match=f"holds checkpoint {nonneg_checkpoint.fingerprint}.*built from checkpoint "
                                           f"{sparse_checkpoint.fingerprint}"):
        open_index(tmp_path / "a")
    assert '"uri": "' + db in (tmp_path / "b" / "backend" / "milvus.json").read_text()
    from pymilvus import MilvusClient

    client = MilvusClient(db)
    client.drop_collection("items")
    client.close()
    with pytest.raises(BackendError, match="collection 'items' does not exist.*rebuild"):
        open_index(tmp_path / "b")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_within_the_timeout_and_never_shows_the_token(sparse_checkpoint, monkeypatch):
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("ELSA_TEST_MILVUS_TOKEN", "root:s3cret-pw")
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=f"cannot reach a Milvus server at {uri} within 2s") as err:
        MilvusIndex(uri=uri, token_env="ELSA_TEST_MILVUS_TOKEN", connect_timeout=2).build(sparse_checkpoint)
    assert time.perf_counter() - t0 < 10
    assert "s3cret" not in str(err.value)
    with pytest.raises(BackendError, match="'ELSA_TEST_MILVUS_UNSET' names an environment variable that is not set"):
        MilvusIndex(uri=uri, token_env="ELSA_TEST_MILVUS_UNSET").build(sparse_checkpoint)
    with pytest.raises(BackendError, match="carries credentials"):
        MilvusIndex(uri="http://root:pw@localhost:19530")
    monkeypatch.setenv("ELSA_TEST_MILVUS_URI", uri)  # the URI from the environment (benchmark configs use this)
    with pytest.raises(BackendError, match=f"cannot reach a Milvus server at {uri}"):
        MilvusIndex(uri_env="ELSA_TEST_MILVUS_URI", connect_timeout=1).build(sparse_checkpoint)


def test_the_token_is_read_from_the_environment_and_never_stored(sparse_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("ELSA_TEST_MILVUS_TOKEN", "reader:never-on-disk-42")  # Milvus Lite accepts and ignores it
    build_index(sparse_checkpoint, "milvus", tmp_path / "ix", token_env="ELSA_TEST_MILVUS_TOKEN").close()
    for f in (tmp_path / "ix").rglob("*"):
        if f.is_file():
            assert b"never-on-disk-42" not in f.read_bytes(), f
    assert '"token_env": "ELSA_TEST_MILVUS_TOKEN"' in (tmp_path / "ix" / "backend" / "backend.json").read_text()
    open_index(tmp_path / "ix").close()
    monkeypatch.delenv("ELSA_TEST_MILVUS_TOKEN")
    with pytest.raises(BackendError, match="'ELSA_TEST_MILVUS_TOKEN' names an environment variable that is not set"):
        open_index(tmp_path / "ix")


def test_a_database_locked_by_another_process(sparse_checkpoint, tmp_path):
    path = tmp_path / "ix"
    build_index(sparse_checkpoint, "milvus", path).close()
    code = ("import sys, time\nfrom pymilvus import MilvusClient\nMilvusClient(sys.argv[1])\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path / "backend" / "milvus.db")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(BackendError, match="cannot open the Milvus Lite database .*one process"):
            open_index(path)
    finally:
        holder.kill()
        holder.wait()
    open_index(path).close()  # free again


def test_pymilvus_missing_names_the_extra(tmp_path):
    code = ("import sys\nsys.modules['pymilvus'] = None\nfrom elsa_index.indexers import get_backend\n"
            "from elsa_index.errors import BackendError\nimport numpy as np\n"
            "from elsa_index.checkpoint import Checkpoint\n"
            "cls = get_backend('milvus')\nprint(cls.missing_dependency())\n"
            "ck = Checkpoint(np.eye(3, dtype=np.float32), ['a', 'b', 'c'], [1, 1, 1], kind='elsa')\n"
            "try:\n    cls().build(ck)\nexcept BackendError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "needs pymilvus" in out and 'pip install "elsa-index[milvus]"' in out
    assert "ERR backend 'milvus' needs pymilvus" in out


class _FailingInsert(MilvusIndex):
    """Fails after the collection was created and the first rows were written (a fault injected into the build)."""

    def _write_rows(self, *args, **kwargs):
        super()._write_rows(*args, **kwargs)
        raise BackendError("insert failed")


def test_failed_build_drops_the_collection_it_created(sparse_checkpoint, tmp_path):
    from pymilvus import MilvusClient

    db = str(tmp_path / "f.db")
    with pytest.raises(BackendError, match="insert failed"):
        _FailingInsert(uri=db, collection="half").build(sparse_checkpoint)
    client = MilvusClient(db)
    try:
        assert client.list_collections() == []
    finally:
        client.close()


def test_bad_parameters():
    for params, match in [({"index_type": "IVF_PQ"}, "index_type must be one of"),
                          ({"collection": "9bad-name"}, "not a valid Milvus collection name"),
                          ({"uri": "ftp://x"}, "neither a Milvus server URI"),
                          ({"depth": 20000}, "depth"), ({"connect_timeout": 0}, "positive number of seconds"),
                          ({"inverted_index_algo": "FAST"}, "inverted_index_algo")]:
        with pytest.raises(ElsaIndexError, match=match):
            MilvusIndex(**params)


def test_index_type_must_fit_the_checkpoint(sparse_checkpoint):
    with pytest.raises(BackendError, match="'HNSW' does not index sparse"):
        MilvusIndex(index_type="HNSW").build(sparse_checkpoint)


def test_lite_directory_files_carry_no_digests_but_the_rest_is_verified(sparse_built, tmp_path):
    sparse_built.save(tmp_path / "ix")
    import json

    files = json.loads((tmp_path / "ix" / "backend.json").read_text())["files"]
    assert "keys.npy" in files and not any(f.startswith("milvus.db/") for f in files)
    keys = np.load(tmp_path / "ix" / "keys.npy")
    np.save(tmp_path / "ix" / "keys.npy", keys[::-1].copy())
    with pytest.raises(BackendError, match="keys.npy"):
        Backend.load(tmp_path / "ix")
