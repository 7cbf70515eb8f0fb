"""Fresh-process memory probes and query files (elsa_index.eval.memprobe)."""

import numpy as np
import scipy.sparse as sp

from elsa_index.eval.memprobe import alloc_rss, baseline_rss, load_queries, peak_rss_bytes, save_queries


def test_memory_probe_sees_a_known_allocation():
    own = peak_rss_bytes()
    assert own["peak"] > 10 << 20 and own["ru_maxrss"] > 0
    base = baseline_rss(repeats=1)
    big = alloc_rss(200)
    assert 20 << 20 < base < 2 << 30
    assert (big - base) >= 180 << 20
    assert (big - base) < 400 << 20


def test_query_files_round_trip(tmp_path):
    Q = sp.random(5, 20, density=0.3, format="csr", dtype=np.float32, random_state=1)
    X = sp.random(5, 50, density=0.1, format="csr", random_state=2)
    save_queries(tmp_path / "q.npz", Q, X)
    Q2, X2 = load_queries(tmp_path / "q.npz")
    assert (Q2 != Q).nnz == 0 and np.array_equal(X2.toarray(), X.toarray() != 0)
    D = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_queries(tmp_path / "d.npz", D)
    D2, none = load_queries(tmp_path / "d.npz")
    assert np.array_equal(D, D2) and none is None
