"""Shared fixtures: tiny checkpoints with planted structure and known answers.

The suite runs on pytest-xdist workers (``addopts`` in pyproject.toml, ``--dist loadfile``): each module is one
work unit, so its module-scoped fixtures run once, and the modules that share a costly runtime
(:data:`SHARED_RUNTIME`) are one unit together, so that one worker pays for that runtime.
"""

import threading

import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.checkpoint import Checkpoint


def planted_sparse_embeddings(n_items=300, dims=64, nnz=4, n_groups=8, *, signed=True, seed=0):
    """Items in ``n_groups`` groups; each group owns a few dimensions, items add noise dims.

    Rows are L2-normalised, exactly ``nnz`` entries each, values signed unless
    ``signed=False``. Returns a CSR float32 matrix.
    """
    rng = np.random.default_rng(seed)
    group = np.arange(n_items) % n_groups
    per_group = dims // n_groups
    rows, cols, vals = [], [], []
    for i in range(n_items):
        own = group[i] * per_group + rng.choice(per_group, size=min(2, nnz), replace=False)
        others = np.setdiff1d(np.arange(dims), own)
        extra = rng.choice(others, size=nnz - len(own), replace=False)
        c = np.concatenate([own, extra])
        v = np.concatenate([rng.uniform(0.5, 1.0, len(own)), rng.uniform(0.05, 0.3, len(extra))])
        if signed:
            v *= rng.choice([-1.0, 1.0], size=len(v), p=[0.3, 0.7])
        rows.append(np.full(nnz, i)), cols.append(c), vals.append(v / np.linalg.norm(v))
    m = sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, dims)
    )
    m.sort_indices()
    return m


#: Test modules that share a costly runtime, run on one xdist worker: the JVM of the Lucene backend (started in
#: the process, 1-2 s), and torch for training (its import and the torch._dynamo that its optimizers import).
SHARED_RUNTIME = {
    "jvm": ("test_backends.py", "test_lucene.py", "test_search.py", "test_segments.py"),
    "torch": ("test_cli.py", "test_demo.py", "test_harness.py", "test_models.py", "test_segment_study.py",
              "test_studies.py"),
}
_RUNTIME_OF = {module: runtime for runtime, modules in SHARED_RUNTIME.items() for module in modules}


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook (absent without the plugin)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the modules of one :data:`SHARED_RUNTIME` entry as one work unit.

    (``--dist loadgroup`` with ``xdist_group`` marks would do the same, but pytest-xdist 3.8 marks the groups by
    rewriting node ids, which pytest 9 no longer allows: the marks are silently ignored.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedRuntimeScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return _RUNTIME_OF.get(module.rpartition("/")[2], module)

    return SharedRuntimeScheduling(config, log)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread_for_training(request):
    """The training modules run torch on one intra-op thread: their tiny models gain nothing from a second
    thread, and OpenMP threads that spin waiting for a core busy with another worker slow training severalfold."""
    if _RUNTIME_OF.get(request.path.name) != "torch":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ckpt(emb, kind, seed=0):
    n = emb.shape[0]
    rng = np.random.default_rng(seed)
    return Checkpoint(emb, [f"item{i:04d}" for i in range(n)], rng.integers(1, 1000, n), kind=kind)


@pytest.fixture(scope="session")
def sparse_checkpoint():
    """Signed Compressed-ELSA-like checkpoint: 300 items, 64 dims, 4 nnz per row."""
    return _ckpt(planted_sparse_embeddings(), "compressed_elsa")


@pytest.fixture(scope="session")
def nonneg_checkpoint():
    """Like ``sparse_checkpoint`` but with non-negative values."""
    return _ckpt(planted_sparse_embeddings(signed=False, seed=1), "imported")


@pytest.fixture(scope="session")
def dense_checkpoint():
    """Dense ELSA-like checkpoint: 300 items x 16 dims, unit rows, clustered."""
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(8, 16))
    emb = centers[np.arange(300) % 8] + 0.4 * rng.normal(size=(300, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return _ckpt(emb.astype(np.float32), "elsa")


@pytest.fixture(scope="session")
def histories():
    """Sparse binary histories (20 users x 300 items), 1-8 items each, group-coherent."""
    rng = np.random.default_rng(7)
    rows, cols = [], []
    for u in range(20):
        g = u % 8
        items = rng.choice(np.arange(g, 300, 8), size=rng.integers(1, 9), replace=False)
        rows += [u] * len(items)
        cols += items.tolist()
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(20, 300))


def run_in_threads(work, n_threads: int = 4) -> dict:
    """Run ``work(t)`` in ``n_threads`` threads at once; return ``{t: result}``; re-raise the first error."""
    out, errors = {}, []

    def body(t):
        try:
            out[t] = work(t)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(t,)) for t in range(n_threads)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    if errors:
        raise errors[0]
    return out


@pytest.fixture(scope="session")
def in_threads():
    """:func:`run_in_threads`, the one thread-safety worker of the suites."""
    return run_in_threads


TOY_BACKEND = ("toy", "toy_backend:ToyBackend")  # tests/toy_backend.py, importable from tests/


@pytest.fixture(scope="module")
def toy_registered():
    """Register the test-only ``toy`` backend for one module, then remove it again."""
    from elsa_index.indexers import BACKENDS, register_backend

    register_backend(*TOY_BACKEND)
    yield TOY_BACKEND[0]
    BACKENDS.pop(TOY_BACKEND[0], None)


@pytest.fixture(scope="session")
def backend_case(sparse_checkpoint, dense_checkpoint):
    """``backend_case(name) -> (class, checkpoint)``: the checkpoint the backend accepts (sparse
    unless it takes only dense ones); skips the test when the backend's optional dependency is missing."""
    from elsa_index.indexers import get_backend

    def pick(name: str):
        cls = get_backend(name)
        missing = cls.missing_dependency()
        if missing:
            pytest.skip(missing)
        return cls, (dense_checkpoint if cls.accepts == "dense" else sparse_checkpoint)

    return pick
