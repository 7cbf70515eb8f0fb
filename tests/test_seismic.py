"""The ``seismic`` backend (pyseismic-lsr) beyond the shared contract suites: exactness when its candidates cover the
catalogue, refused input, its files, the large-vocabulary index class, and the missing-dependency message."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.errors import BackendError
from elsa_index.indexers import get_backend
from elsa_index.indexers.base import Backend

Seismic = get_backend("seismic")
pytestmark = pytest.mark.skipif(Seismic.missing_dependency() is not None, reason=str(Seismic.missing_dependency()))

#: build parameters that keep every posting (no pruning) on the 300-item fixtures
FULL = {"n_postings": 1000, "max_fraction": 10.0}


@pytest.fixture(scope="module")
def queries(sparse_checkpoint, histories):
    return sparse_checkpoint.encode(histories)


def _exact(ckpt, Q, k):
    return get_backend("sparse")().build(ckpt).search(Q, k)


def test_equals_exact_when_candidates_cover_the_catalogue(sparse_checkpoint, queries):
    """Unpruned postings, every query component visited and the whole catalogue as candidates: the top k are the
    exact top k (ids and bit-identical scores) wherever the exact k-th score is positive (an item scoring above 0
    shares an agreeing component with the query, so Seismic finds it)."""
    n = sparse_checkpoint.n_items
    be = Seismic(**FULL, candidates=n, query_mass=None, query_cut=None).build(sparse_checkpoint)
    got, want = be.search(queries, 10), _exact(sparse_checkpoint, queries, 10)
    positive = want.scores[:, -1] > 0
    assert positive.sum() >= 0.8 * len(positive)
    np.testing.assert_array_equal(got.ids[positive], want.ids[positive])
    np.testing.assert_array_equal(got.scores[positive], want.scores[positive])


def test_scores_are_exact_whatever_the_query_budget(sparse_checkpoint, queries):
    """A tight query-term budget and query cut change which items are found, never their (exact, signed) scores."""
    be = Seismic(query_terms=2, query_cut=1, candidates=20).build(sparse_checkpoint)
    res = be.search(queries, 10)
    E = sparse_checkpoint.embeddings
    for r in range(queries.shape[0]):
        ok = res.ids[r] >= 0
        true = np.asarray(queries[r] @ E[res.ids[r][ok]].T).ravel()
        np.testing.assert_allclose(res.scores[r][ok], true, rtol=1e-5, atol=1e-6)
        assert (np.diff(res.scores[r][ok]) <= 0).all()


def test_query_cut_caps_the_lists_visited(sparse_checkpoint, queries):
    """query_cut=1 wins over min_query_cut and query_mass: every item found carries the query's largest
    dimension with the query's sign."""
    n = sparse_checkpoint.n_items
    E = sparse_checkpoint.embeddings.toarray()
    be = Seismic(**FULL, query_mass=1.0, min_query_cut=16, query_cut=1, candidates=n).build(sparse_checkpoint)
    res = be.search(queries, n)
    for r in range(queries.shape[0]):
        u = np.asarray(queries[r], dtype=np.float32).ravel()
        d = int(np.argmax(np.abs(u)))
        found = res.ids[r][res.ids[r] >= 0]
        assert len(found) and (np.sign(E[found, d]) == np.sign(u[d])).all()


def test_query_mass_visits_the_largest_components_first(sparse_checkpoint, queries):
    """A tiny mass share visits one posting list, the query's largest |u_d|: every item found carries that
    dimension with the query's sign; the whole mass finds every item sharing an agreeing component."""
    n = sparse_checkpoint.n_items
    E = sparse_checkpoint.embeddings.toarray()
    one = Seismic(**FULL, query_mass=1e-9, min_query_cut=1, candidates=n).build(sparse_checkpoint)
    full = Seismic(**FULL, query_mass=1.0, candidates=n).build(sparse_checkpoint)
    res_one, res_full = one.search(queries, n), full.search(queries, n)
    for r in range(queries.shape[0]):
        u = np.asarray(queries[r], dtype=np.float32).ravel()
        d = int(np.argmax(np.abs(u)))
        found = res_one.ids[r][res_one.ids[r] >= 0]
        assert len(found) and (np.sign(E[found, d]) == np.sign(u[d])).all()
        agreeing = np.flatnonzero(((np.sign(E) == np.sign(u)) & (E != 0) & (u != 0)).any(axis=1))
        np.testing.assert_array_equal(np.sort(res_full.ids[r][res_full.ids[r] >= 0]), agreeing)


def test_dense_checkpoint_refused(dense_checkpoint):
    with pytest.raises(BackendError, match="indexes sparse embeddings, but this checkpoint is dense"):
        Seismic().build(dense_checkpoint)


@pytest.mark.parametrize("params, match", [
    ({"n_postings": 0}, "n_postings must be an integer >= 1"),
    ({"n_postings": 2.5}, "n_postings must be an integer"),
    ({"max_fraction": 0}, "max_fraction must be a finite number > 0"),
    ({"centroid_fraction": 1.5}, "centroid_fraction must be a finite number > 0 and <= 1"),
    ({"min_cluster_size": 0}, "min_cluster_size"),
    ({"summary_energy": 0.0}, "summary_energy must be a finite number > 0"),
    ({"doc_cut": -1}, "doc_cut"),
    ({"threads": -1}, "threads must be an integer >= 0"),
    ({"candidates": 0}, "candidates must be an integer >= 1"),
    ({"query_cut": 0}, "query_cut must be an integer >= 1"),
    ({"heap_factor": 0}, "heap_factor must be a finite number > 0"),
    ({"heap_factor": float("nan")}, "heap_factor must be a finite number"),
    ({"query_terms": 0}, "query_terms must be an integer >= 1"),
    ({"query_mass": 0}, "query_mass must be a finite number > 0 and <= 1"),
    ({"query_mass": 1.5}, "query_mass must be a finite number > 0 and <= 1"),
    ({"min_query_cut": 0}, "min_query_cut must be an integer >= 1"),
    ({"query_terms": True}, "query_terms must be an integer"),
])
def test_bad_parameters_refused(params, match):
    with pytest.raises(BackendError, match=match):
        Seismic(**params)


def test_bad_search_parameter_keeps_the_old_ones(sparse_checkpoint):
    be = Seismic(heap_factor=0.8)
    with pytest.raises(BackendError, match="heap_factor"):
        be.set_search_params(heap_factor=-1.0)
    assert be.get_search_params()["heap_factor"] == 0.8


def test_files_round_trip_and_corruption(sparse_checkpoint, queries, tmp_path, capfd):
    """Seismic's own file plus a manifest; nothing printed to standard output; a truncated or mislabelled index
    is refused with BackendError (not a crash), even without digest verification."""
    be = Seismic().build(sparse_checkpoint)
    be.save(tmp_path / "ix")
    assert capfd.readouterr().out == ""  # Seismic's progress lines went to the log
    names = sorted(p.name for p in (tmp_path / "ix").iterdir())
    assert "seismic.index.seismic" in names and "seismic.json" in names and "embeddings_data.npy" in names
    back = Backend.load(tmp_path / "ix")
    a, b = be.search(queries, 10), back.search(queries, 10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert back.info()["index"]["n_indexed"] == sparse_checkpoint.n_items

    f = tmp_path / "ix" / "seismic.index.seismic"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackendError, match="seismic.index.seismic"):
        Backend.load(tmp_path / "ix")  # digest check
    with pytest.raises(BackendError, match="Seismic could not read|could not load"):
        Backend.load(tmp_path / "ix", verify=False)
    f.write_bytes(data)
    m = json.loads((tmp_path / "ix" / "seismic.json").read_text())
    m["index_class"] = "SomethingElse"
    (tmp_path / "ix" / "seismic.json").write_text(json.dumps(m))
    with pytest.raises(BackendError, match="unknown index_class"):
        Backend.load(tmp_path / "ix", verify=False)


def test_closed_backend_refuses_to_search(sparse_checkpoint, queries):
    be = Seismic().build(sparse_checkpoint)
    be.close()
    with pytest.raises(BackendError, match="closed"):
        be.search(queries, 3)


def test_large_vocabulary_uses_the_u32_index(tmp_path):
    """More than 65,536 (dimension, sign) components: Seismic's large-vocabulary classes, same answers."""
    from elsa_index.checkpoint import Checkpoint

    rng = np.random.default_rng(0)
    n, dims = 60, 40_000
    cols = np.concatenate([np.sort(rng.choice(dims, 4, replace=False)) for _ in range(n)])
    vals = rng.uniform(0.2, 1.0, 4 * n) * rng.choice([-1.0, 1.0], 4 * n)
    E = sp.csr_matrix((vals.astype(np.float32), cols, np.arange(0, 4 * n + 1, 4)), shape=(n, dims))
    ckpt = Checkpoint(E, [f"i{i}" for i in range(n)], np.ones(n, np.int64), kind="imported")
    be = Seismic(**FULL, candidates=n).build(ckpt)
    assert be.info()["index"]["index_class"] == "SeismicIndexLV"
    Q = E[:5] + E[5:10]  # each query matches (at least) its two items
    got, want = be.search(Q, 3), _exact(ckpt, Q, 3)
    np.testing.assert_array_equal(got.ids[:, :2], want.ids[:, :2])
    np.testing.assert_array_equal(got.scores[:, :2], want.scores[:, :2])
    # Items scoring <= 0 share no agreeing component with the query: never candidates, so the rows are padded.
    assert ((got.ids[:, 2] == want.ids[:, 2]) | ((got.ids[:, 2] == -1) & (want.scores[:, 2] <= 0))).all()
    be.save(tmp_path / "ix")
    np.testing.assert_array_equal(Backend.load(tmp_path / "ix").search(Q, 3).ids, got.ids)


def test_missing_dependency_names_the_extra(sparse_checkpoint):
    """The message of a missing pyseismic-lsr, from the same check the CLI and the build use."""

    class Unavailable(Seismic):
        requires = ("elsa_index_no_such_module",)

    msg = Unavailable.missing_dependency()
    assert "elsa_index_no_such_module" in msg and 'pip install "elsa-index[seismic]"' in msg
    with pytest.raises(BackendError, match=r"elsa-index\[seismic\]"):
        Unavailable().build(sparse_checkpoint)
    assert Seismic.requires == ("seismic",) and "elsa-index[seismic]" in Seismic.install_hint
