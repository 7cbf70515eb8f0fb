import json
import logging
import threading

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index._io import record_files, save_csr, write_json
from elsa_index.errors import BackendError
from elsa_index.indexers import _kernels
from elsa_index.indexers.base import Backend
from elsa_index.indexers.sparse import BlockedPostings, ExactSparse
from elsa_index.scoring import score_rows
from elsa_index.topk import topk


def _random(n_items=500, dims=40, density=0.1, seed=0, integer=False, n_queries=30):
    rng = np.random.default_rng(seed)
    E = sp.random(n_items, dims, density=density, format="csr", random_state=rng, dtype=np.float32)
    E.data = rng.standard_normal(E.nnz).astype(np.float32)  # signed
    if integer:  # small integers: many exact ties
        E.data = rng.integers(-2, 3, size=E.nnz).astype(np.float32)
    Q = sp.random(n_queries, dims, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    Q.data = (rng.integers(-2, 3, size=Q.nnz) if integer else rng.standard_normal(Q.nnz)).astype(np.float32)
    return E, Q


def _bits_equal(a, b):
    ids_a, scores_a = a
    ids_b, scores_b = b
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(np.asarray(scores_a).view(np.int32), np.asarray(scores_b).view(np.int32))


def _reference(E, Q, k):
    acc = np.zeros(E.shape[0], np.float32)
    out = _kernels.sparse_topk(sp.csr_matrix(E.T), Q, k, acc)
    assert not acc.any()
    return out


def _blocked(E, Q, k, block_items):
    postings = BlockedPostings.from_embeddings(E, block_items)
    acc = np.zeros(block_items, np.float32)
    out = _kernels.blocked_topk(postings, Q, k, acc)
    assert not acc.any()  # left zeroed for the next call
    return out


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("k", [1, 7, 500])
def test_kernel_equals_reference_topk(integer, k):
    E, Q = _random(integer=integer)
    ids, scores = _reference(E, Q, k)
    ref_ids, ref_scores = topk((Q @ E.T).toarray(), k)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    if integer:  # exact arithmetic: identical ids, ties by lower index
        np.testing.assert_array_equal(ids, ref_ids)


def _tie_catalogue(seed=1):
    # Signed integer values (exact ties), duplicated rows (equal scores at different ids) and empty rows (score 0).
    E, Q = _random(n_items=300, dims=30, density=0.08, seed=seed, integer=True, n_queries=25)
    E = sp.vstack([E, E[:60], sp.csr_matrix((40, 30), dtype=np.float32), E[200:260]]).tocsr()
    Q = sp.vstack([Q, sp.csr_matrix((2, 30), dtype=np.float32)]).tocsr()  # two empty queries: every score is 0
    Q.sort_indices()
    return E, Q


@pytest.mark.parametrize("block_items", [1, 7, 64, 100, 460, 65536])
@pytest.mark.parametrize("k", [1, 10, 333, 460])
def test_blocked_kernel_bit_identical_to_reference(block_items, k):
    # 460 items: blocks that divide it or not, one block, one item per block; k beyond the nonzero scores and k = n.
    E, Q = _tie_catalogue()
    assert E.shape[0] == 460
    _bits_equal(_blocked(E, Q, k, block_items), _reference(E, Q, k))


@pytest.mark.parametrize("k", [1, 40, 125, 126, 4000])
def test_blocked_kernel_lower_bound_keeps_ties(k):
    # 4000 items in one block: 125 groups of 32, so k <= 125 takes the lower bound from the group maxima while the
    # heap fills. Few distinct scores (many ties at the bound itself) and duplicated rows.
    E, Q = _random(n_items=2000, dims=20, density=0.1, seed=11, integer=True, n_queries=40)
    E = sp.vstack([E, E]).tocsr()
    for block_items in (65536, 1000):
        _bits_equal(_blocked(E, Q, k, block_items), _reference(E, Q, k))


def test_blocked_kernel_matches_exact_candidate_scoring_with_ties():
    # One summation order (elsa_index.scoring): the kernels and score_rows + topk agree to the bit, ties included.
    E, Q = _random(n_items=800, dims=60, density=0.15, seed=5)
    E.sort_indices()
    E = sp.vstack([E, E[:40]]).tocsr()  # duplicated rows: exact ties broken by the lower index
    S = score_rows(E, Q, np.broadcast_to(np.arange(E.shape[0]), (Q.shape[0], E.shape[0])))
    expect = topk(S, 25)
    _bits_equal(_reference(E, Q, 25), expect)
    _bits_equal(_blocked(E, Q, 25, 128), expect)


@pytest.mark.parametrize("index_dtype,value_dtype", [(np.int32, np.float32), (np.int64, np.float64)])
def test_score_rows_sums_in_stored_order_for_any_csr_dtypes(index_dtype, value_dtype):
    # The compiled candidate scorer reads the caller's arrays as they are: float32 products added one by one from 0
    # in ascending dimension order, whatever the index and value dtypes; unsorted rows are sorted on a copy.
    E, Q = _random(n_items=300, dims=50, density=0.2, seed=8)
    E.sort_indices()
    E2 = sp.csr_matrix((E.data.astype(value_dtype), E.indices.astype(index_dtype), E.indptr.astype(index_dtype)),
                       shape=E.shape)
    rng = np.random.default_rng(1)
    cand = rng.integers(-1, E.shape[0], size=(Q.shape[0], 40))
    expect = np.full(cand.shape, -np.inf, np.float32)
    Qd = Q.toarray()
    for r, c in zip(*np.nonzero(cand >= 0)):
        j = cand[r, c]
        acc = np.float32(0)
        for p in range(E.indptr[j], E.indptr[j + 1]):
            acc = np.float32(acc + np.float32(np.float32(E.data[p]) * Qd[r, E.indices[p]]))
        expect[r, c] = acc
    np.testing.assert_array_equal(score_rows(E2, Q, cand).view(np.int32), expect.view(np.int32))
    shuffled = E2.copy()
    for i in range(shuffled.shape[0]):  # reverse each row's stored order
        a, b = shuffled.indptr[i], shuffled.indptr[i + 1]
        shuffled.indices[a:b] = shuffled.indices[a:b][::-1].copy()
        shuffled.data[a:b] = shuffled.data[a:b][::-1].copy()
    shuffled.has_sorted_indices = False
    before = shuffled.indices.copy()
    np.testing.assert_array_equal(score_rows(shuffled, Q, cand).view(np.int32), expect.view(np.int32))
    np.testing.assert_array_equal(shuffled.indices, before)  # the caller's matrix is not sorted in place


def test_blocked_kernel_zero_scores_and_untouched_blocks():
    # Items 2 and 4 are the only ones with values: the other top-k entries are zero-score items, lowest ids first,
    # including items of blocks the query never touches (skipped once the k-th score is 0); negative scores last.
    E = sp.csr_matrix(np.array([[0, 0], [0, 0], [1.0, 0], [0, 0], [0, -1.0], [0, 0], [0, 0]], np.float32))
    for q, expect_ids, expect_scores in (([2.0, 1.0], [2, 0, 1, 3, 5, 6, 4], [2, 0, 0, 0, 0, 0, -1]),
                                         ([-1.0, 1.0], [0, 1, 3, 5, 6, 2, 4], [0, 0, 0, 0, 0, -1, -1])):
        Q = sp.csr_matrix(np.array([q], np.float32))
        for block_items in (1, 2, 3, 7):
            for k in (4, 7):
                ids, scores = _blocked(E, Q, k, block_items)
                assert ids.tolist() == [expect_ids[:k]] and scores.tolist() == [expect_scores[:k]]
                _bits_equal((ids, scores), _reference(E, Q, k))


def _excluding(n_queries, n_items, seed):
    # Per query: none, a few, most items, or all but 3 (fewer than k left: padding); unsorted, with duplicates.
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_queries):
        size = (0, 5, int(0.9 * n_items), n_items - 3)[r % 4]
        e = rng.choice(n_items, size=size, replace=False)
        rows.append(np.concatenate([e, e[:2]]))
    indptr = np.concatenate([[0], np.cumsum([len(e) for e in rows])])
    ex = sp.csr_matrix((np.ones(indptr[-1], bool), np.concatenate(rows), indptr), shape=(n_queries, n_items))
    ex.has_sorted_indices = False
    return ex


@pytest.mark.parametrize("block_items", [1, 64, 460, 65536])
@pytest.mark.parametrize("k", [1, 10, 333])
def test_blocked_kernel_skips_excluded_items(block_items, k):
    # Excluded items never enter the top-k; the others rank as in the reference kernel (scores and ties to the bit,
    # zero-score and untouched blocks included); rows with fewer than k items left are padded with -1 / -inf.
    E, Q = _tie_catalogue()
    ex = _excluding(Q.shape[0], E.shape[0], seed=block_items + k)
    postings = BlockedPostings.from_embeddings(E, block_items)
    acc = np.zeros(block_items, np.float32)
    ids, scores = _kernels.blocked_topk(postings, Q, k, acc, ex)
    assert not acc.any()
    full_ids, full_scores = _reference(E, Q, E.shape[0])
    for r in range(Q.shape[0]):
        keep = ~np.isin(full_ids[r], ex[r].indices)
        expect_ids, expect_scores = full_ids[r][keep][:k], full_scores[r][keep][:k]
        w = len(expect_ids)
        np.testing.assert_array_equal(ids[r, :w], expect_ids)
        np.testing.assert_array_equal(scores[r, :w].view(np.int32), expect_scores.view(np.int32))
        assert (ids[r, w:] == -1).all() and (scores[r, w:] == -np.inf).all()
    assert (ids[3::4, 3:] == -1).all()  # every 4th query keeps only 3 items


def test_blocked_postings_layout_round_trip():
    E, _ = _random(n_items=1000, seed=2)
    P = sp.csr_matrix(E.T)
    P.sort_indices()
    B = BlockedPostings.from_embeddings(E, 300)
    assert (B.n_blocks, B.indices.dtype, B.indptr.dtype, len(B.indptr)) == (4, np.uint16, np.int64, 40 * 4 + 1)
    np.testing.assert_array_equal(B.data, P.data)  # the same value order as the plain postings
    assert (B.to_postings() != P).nnz == 0
    assert B.nbytes == B.nnz * 6 + B.indptr.nbytes
    with pytest.raises(ValueError, match="block_items"):
        BlockedPostings.from_embeddings(E, 65537)


def test_kernel_threads_with_own_accumulators():
    E, Q = _random(n_items=2000, seed=3)
    B = BlockedPostings.from_embeddings(E, 256)
    expect = _reference(E, Q, 10)
    out = {}

    def work(t):
        acc = np.zeros(256, np.float32)
        out[t] = [_kernels.blocked_topk(B, Q[r : r + 1], 10, acc) for r in range(Q.shape[0])]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for t in range(4):
        _bits_equal((np.vstack([o[0] for o in out[t]]), np.vstack([o[1] for o in out[t]])), expect)


# ----------------------------------------------------------------------------------- the backend


class _Ckpt:
    """The part of a Checkpoint that Backend.build reads."""

    def __init__(self, E):
        self.embeddings, self.kind, self.fingerprint = E, "test", "f" * 32
        self.n_items, self.dims, self.sparse = E.shape[0], E.shape[1], sp.issparse(E)


def _two_kernels(E, **params):
    blocked = ExactSparse(block_items=1024, **params).build(_Ckpt(E))
    reference = ExactSparse(block_items=1024, kernel="reference", **params).build(_Ckpt(E))
    return blocked, reference


def test_backend_kernels_agree_with_exclusions_dense_queries_and_threads():
    E, Q = _random(n_items=2600, dims=50, density=0.1, seed=7, integer=True, n_queries=20)
    E = sp.vstack([E, E[:300]]).tocsr()  # 2900 items, 3 blocks, duplicated rows
    blocked, reference = _two_kernels(E)
    assert blocked.postings_.n_blocks == 3 and reference._plain_ is not None and blocked._plain_ is None
    rng = np.random.default_rng(0)
    exclude = sp.random(Q.shape[0], E.shape[0], density=0.05, format="csr", random_state=rng) != 0
    for k in (1, 50, E.shape[0]):
        a = blocked.search(Q, k, exclude=exclude)
        _bits_equal(a, reference.search(Q, k, exclude=exclude))
        assert not np.isin(a.ids[0], exclude[0].indices).any()
    # Dense queries go through the same kernel: the same scores as the sparse form, bit for bit.
    _bits_equal(blocked.search(Q.toarray(), 30), blocked.search(Q, 30))
    _bits_equal(reference.search(Q.toarray(), 30), blocked.search(Q, 30))
    # Concurrent searches, each thread with its own accumulator.
    expect = blocked.search(Q, 10)
    out = {}
    threads = [threading.Thread(target=lambda t=t: out.__setitem__(
        t, [blocked.search(Q[r : r + 1], 10) for r in range(Q.shape[0])])) for t in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for t in range(3):
        np.testing.assert_array_equal(np.vstack([r.ids for r in out[t]]), expect.ids)


def test_kernel_parameter_is_validated_and_switchable():
    E, Q = _random(n_items=1500, seed=4)
    with pytest.raises(BackendError, match=r"kernel must be one of \['blocked', 'reference'\], got 'fast'"):
        ExactSparse(kernel="fast")
    for bad in (512, 65537, 2.0, True):
        with pytest.raises(BackendError, match="block_items must be an integer in"):
            ExactSparse(block_items=bad)
    be = ExactSparse(block_items=1024).build(_Ckpt(E))
    expect = be.search(Q, 20)
    with pytest.raises(BackendError, match="kernel must be one of"):
        be.set_search_params(kernel=None)
    assert be.get_search_params()["kernel"] == "blocked"  # unchanged after a refused value
    be.set_search_params(kernel="reference")
    assert be._plain_ is not None
    _bits_equal(be.search(Q, 20), expect)
    be.set_search_params(kernel="blocked")
    assert be._plain_ is None  # the plain postings are dropped again
    assert "blocked" in ExactSparse.param_docs["kernel"] and "block_items" in ExactSparse.param_docs


def test_dense_checkpoint_unaffected():
    rng = np.random.default_rng(3)
    E = rng.standard_normal((300, 16)).astype(np.float32)
    Q = rng.standard_normal((5, 16)).astype(np.float32)
    blocked, reference = _two_kernels(E)
    assert blocked.postings_ is None and reference._plain_ is None
    ids, scores = topk(Q @ E.T, 12)
    for be in (blocked, reference):
        res = be.search(Q, 12)
        np.testing.assert_array_equal(res.ids, ids)
        np.testing.assert_allclose(res.scores, scores, rtol=1e-6)


def test_save_load_memory_mapped_blocked_postings(tmp_path):
    E, Q = _random(n_items=2500, seed=6)
    be = ExactSparse(block_items=1024).build(_Ckpt(E))
    be.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "backend.json").read_text())
    assert manifest["build_params"] == {"block_items": 1024} and manifest["search_params"]["kernel"] == "blocked"
    loaded = Backend.load(tmp_path / "ix", mmap=True)
    p = loaded.postings_
    assert isinstance(p.indices, np.memmap) and isinstance(p.data, np.memmap) and p.indices.dtype == np.uint16
    _bits_equal(loaded.search(Q, 15), be.search(Q, 15))
    loaded.set_search_params(kernel="reference")  # also works from mapped arrays
    _bits_equal(loaded.search(Q, 15), be.search(Q, 15))


def test_directory_of_the_unblocked_layout_still_loads(tmp_path, caplog):
    # A directory written before the blocked layout: plain dims x n_items postings, no block_items in backend.json.
    E, Q = _random(n_items=2500, seed=8)
    be = ExactSparse(block_items=1024).build(_Ckpt(E))
    be.save(tmp_path / "ix")
    d = tmp_path / "ix"
    for f in d.glob("postings_*.npy"):
        f.unlink()
    save_csr(d, "postings_", be.postings_.to_postings())
    m = json.loads((d / "backend.json").read_text())
    m.update(build_params={}, search_params={"batch_size": 256})
    m["files"] = record_files(d, skip=("backend.json",))
    write_json(d / "backend.json", m)
    with caplog.at_level(logging.WARNING, logger="elsa_index.indexers.sparse"):
        old = Backend.load(d, mmap=True)
    assert "older unblocked sparse layout" in caplog.text and "Rebuild" in caplog.text
    assert old.postings_.block_items == 65536 and old.postings_.indices.dtype == np.uint16
    _bits_equal(old.search(Q, 15), be.search(Q, 15))


def test_corrupt_blocked_postings_are_refused(tmp_path):
    # 2500 items in blocks of 1024: the last block holds 452 items, so a local id of 1000 there is out of range.
    E, _ = _random(n_items=2500, seed=9)
    ExactSparse(block_items=1024).build(_Ckpt(E)).save(tmp_path / "ix")
    d = tmp_path / "ix"
    indptr = np.load(d / "postings_indptr.npy")
    indices = np.load(d / "postings_indices.npy")
    last_row = 2  # dim 0, block 2
    assert indptr[last_row + 1] > indptr[last_row]
    bad = indices.copy()
    bad[indptr[last_row]] = 1000
    np.save(d / "postings_indices.npy", bad)
    with pytest.raises(BackendError, match=r"outside \[0, 452\) in the last block"):
        Backend.load(d, verify=False)
    np.save(d / "postings_indices.npy", indices.astype(np.int32))
    with pytest.raises(BackendError, match="expected float32/uint16/int64"):
        Backend.load(d, verify=False)
