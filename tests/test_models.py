import numpy as np
import pytest
import scipy.sparse as sp

from elsa_index.models.baselines import Popularity
from elsa_index.data import Interactions, strong_generalization_split
from elsa_index.errors import TrainingError
from elsa_index.metrics import evaluate
from elsa_index.models import ELSA, SCHEDULES, CompressedELSA
from elsa_index.data.synthetic import make_synthetic


@pytest.fixture(scope="module")
def planted():
    log = make_synthetic(n_users=1200, n_items=300, n_clusters=10, seed=3)
    return strong_generalization_split(Interactions.from_log(log), 200, seed=1)


def _recall(split, model):
    return evaluate(model.score, split.fold_in, split.targets, ks=(), metrics=("recall@20",))["recall@20"]


# ---------------------------------------------------------------- training


def test_dense_and_compressed_beat_popularity(planted):
    pop = _recall(planted, Popularity().fit(planted.train.matrix))
    dense = ELSA(32, epochs=12, lr=0.03, progress=False, seed=0).fit(planted.train.matrix)
    comp = CompressedELSA(128, 4, epochs=12, lr=0.03, finetune_epochs=4, progress=False, seed=0).fit(
        planted.train.matrix
    )
    r_dense, r_comp = _recall(planted, dense), _recall(planted, comp)
    assert r_dense > pop + 0.15, (r_dense, pop)
    assert r_comp > pop + 0.15, (r_comp, pop)
    # Dense rows are unit-norm; compressed rows too, with exactly nnz stored entries each.
    np.testing.assert_allclose(np.linalg.norm(dense.embeddings_, axis=1), 1.0, rtol=1e-5)
    E = comp.embeddings_
    assert sp.isspmatrix_csr(E) and E.shape == (300, 128)
    assert (np.diff(E.indptr) == 4).all()
    np.testing.assert_allclose(np.sqrt(E.multiply(E).sum(axis=1)).A1, 1.0, rtol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("restart", [False, True])
def test_every_schedule_reaches_target_nnz(planted, schedule, restart):
    m = CompressedELSA(64, 5, schedule=schedule, restart=restart, epochs=4, warmup_epochs=1, finetune_epochs=1,
                       prune_steps=4, batch_size=256, progress=False).fit(planted.train.matrix)
    assert (np.diff(m.embeddings_.indptr) == 5).all()
    nnz = [h["nnz"] for h in m.history_]
    assert nnz[0] == 64 and nnz[-1] == 5  # dense warm-up epoch, target during fine-tuning
    assert all(a >= b for a, b in zip(nnz, nnz[1:]))


def test_sampled_outputs_train_well(planted):
    pop = _recall(planted, Popularity().fit(planted.train.matrix))
    m = ELSA(32, epochs=12, lr=0.03, n_negatives=60, progress=False).fit(planted.train.matrix)
    assert _recall(planted, m) > pop + 0.1


def test_training_is_deterministic_per_seed(planted):
    X = planted.train.matrix
    a = CompressedELSA(32, 4, epochs=3, finetune_epochs=1, progress=False, seed=5).fit(X).embeddings_
    b = CompressedELSA(32, 4, epochs=3, finetune_epochs=1, progress=False, seed=5).fit(X).embeddings_
    c = CompressedELSA(32, 4, epochs=3, finetune_epochs=1, progress=False, seed=6).fit(X).embeddings_
    assert (a != b).nnz == 0
    assert (a != c).nnz > 0


def test_multithreaded_cpu_training_is_bit_reproducible():
    # Some CPU kernels sum in a thread-timing order; with a sparse start that used to give different models.
    import torch

    X = Interactions.from_log(make_synthetic(n_users=3000, n_items=2000, n_clusters=8, seed=1)).matrix
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for kw in (dict(dims=256), dict(dims=256, start_nnz=48, input_dropout=0.5)):
            runs = [CompressedELSA(nnz=32, epochs=3, finetune_epochs=1, batch_size=256, progress=False, **kw).fit(X)
                    for _ in range(2)]
            a, b = (r.embeddings_ for r in runs)
            assert (a != b).nnz == 0, kw
    finally:
        torch.set_num_threads(threads)
    assert not torch.are_deterministic_algorithms_enabled()  # the global setting is restored after training


def test_validation_keeps_best_epoch_at_target(planted):
    inner = strong_generalization_split(planted.train, 150, seed=9)
    m = CompressedELSA(64, 4, epochs=8, warmup_epochs=1, finetune_epochs=3, lr=0.03, progress=False)
    m.fit(inner.train.matrix, validation=(inner.fold_in, inner.targets), patience=None)
    assert len(m.history_) == 8
    vals = [h["val_recall@20"] for h in m.history_]
    eligible = [i for i, h in enumerate(m.history_) if h["nnz"] == 4]
    best = max(eligible, key=lambda i: vals[i])
    assert m.best_epoch_ == best + 1
    # The kept weights are the best epoch's: re-measuring gives its score.
    r = evaluate(m.score, inner.fold_in, inner.targets, ks=(), metrics=("recall@20",))["recall@20"]
    assert r == pytest.approx(vals[best], abs=1e-6)


def test_early_stopping_stops(planted):
    inner = strong_generalization_split(planted.train, 150, seed=9)
    m = ELSA(16, epochs=200, lr=0.1, progress=False)
    m.fit(inner.train.matrix, validation=(inner.fold_in, inner.targets), patience=2)
    assert len(m.history_) < 200
    assert len(m.history_) - m.best_epoch_ == 2


# ---------------------------------------------------------------- bad input


def _tiny():
    X = sp.random(40, 20, density=0.2, format="csr", random_state=0, dtype=np.float32)
    X.data[:] = 1
    return X


@pytest.mark.parametrize(
    "model,match",
    [
        (lambda: CompressedELSA(16, 32), r"nnz must be an integer in \[1, 16\], got 32 \(dims=16\)"),
        (lambda: CompressedELSA(16, 0), "nnz must be"),
        (lambda: CompressedELSA(16, 4, schedule="cosine"), "unknown pruning schedule"),
        (lambda: CompressedELSA(16, 4, epochs=3, warmup_epochs=2, finetune_epochs=1), "warmup_epochs"),
        (lambda: ELSA(0), r"dims must be an integer >= 1, got 0"),
        (lambda: ELSA(8, epochs=0), "epochs must be"),
        (lambda: ELSA(8, lr=-1.0), "lr must be"),
        (lambda: ELSA(8, lr=float("nan")), "lr must be"),
        (lambda: ELSA(8, n_negatives=-3), r"n_negatives must be an integer >= 0, got -3 \(or None for all items, or .auto.\)"),
        (lambda: ELSA(8, batch_size=2.5), r"batch_size must be an integer >= 1, got 2.5"),
        (lambda: ELSA(8, epochs=True), r"epochs must be an integer >= 1, got True"),
        (lambda: CompressedELSA(16, 4, epochs=3, prune_steps=0), r"prune_steps must be an integer >= 1, got 0"),
        (lambda: CompressedELSA(16, 4, epochs=3, warmup_epochs=-1), r"warmup_epochs must be an integer >= 0"),
        (lambda: ELSA(8, input_dropout=1.0), r"input_dropout must be a finite number >= 0.0 and < 1.0, got 1.0"),
        (lambda: ELSA(8, input_dropout=-0.1), r"input_dropout must be a finite number >= 0.0"),
        (lambda: ELSA(8, input_dropout="half"), r"input_dropout must be a finite number"),
    ],
)
def test_bad_parameters(model, match):
    with pytest.raises(TrainingError, match=match):
        model().fit(_tiny())


def test_bad_data():
    with pytest.raises(TrainingError, match="scipy sparse"):
        ELSA(8, progress=False).fit(np.ones((3, 3)))
    with pytest.raises(TrainingError, match="interactions"):
        ELSA(8, progress=False).fit(sp.csr_matrix((5, 5)))
    with pytest.raises(TrainingError, match="validation matrices"):
        ELSA(8, progress=False).fit(_tiny(), validation=(sp.csr_matrix((2, 3)), sp.csr_matrix((2, 3))))


def test_nan_loss_raises():
    X = _tiny()
    X.data[0] = np.nan
    with pytest.raises(TrainingError, match="loss became nan"):
        ELSA(8, epochs=2, progress=False).fit(X)


def test_unavailable_device():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(TrainingError, match="CUDA is not available"):
        ELSA(8, device="cuda", progress=False).fit(_tiny())
    with pytest.raises(TrainingError, match="unknown device"):
        ELSA(8, device="tpu-9", progress=False).fit(_tiny())


def test_unfitted_model():
    with pytest.raises(TrainingError, match="not fitted"):
        ELSA(8).score(_tiny())


# ---------------------------------------------------------------- outputs and sampling


def test_auto_outputs_are_full_within_the_cap_and_sampled_beyond(planted, monkeypatch):
    from elsa_index.models import elsa as elsa_mod

    X = planted.train.matrix
    full = ELSA(16, epochs=2, progress=False, seed=3).fit(X)
    auto = ELSA(16, epochs=2, n_negatives="auto", progress=False, seed=3).fit(X)
    none = ELSA(16, epochs=2, n_negatives=None, progress=False, seed=3).fit(X)
    assert auto.n_outputs_ == none.n_outputs_ == X.shape[1]
    np.testing.assert_array_equal(auto.embeddings_, none.embeddings_)
    np.testing.assert_array_equal(full.embeddings_, none.embeddings_)
    # A catalogue over the cap (here: a cap of 4 batches' worth of 8 items) switches to sampling.
    monkeypatch.setattr(elsa_mod, "FULL_OUTPUT_CAP", 8 * 256)
    m = ELSA(16, epochs=1, batch_size=256, progress=False).fit(X)
    assert m.n_outputs_ == 8 and ELSA(16, batch_size=256).n_outputs(X.shape[1]) == 8


def test_sampling_correction_leaves_full_outputs_unchanged(planted):
    # The correction only weights sampled columns: full-output training is the same with it off.
    X = planted.train.matrix

    class Uncorrected(ELSA):
        _sampling_correction = False

    a = ELSA(16, epochs=2, n_negatives=None, progress=False, seed=1).fit(X)
    b = Uncorrected(16, epochs=2, n_negatives=None, progress=False, seed=1).fit(X)
    np.testing.assert_array_equal(a.embeddings_, b.embeddings_)


@pytest.mark.parametrize("negatives", ["popularity", "uniform"])
def test_sampled_weights_estimate_full_sums_without_bias(negatives):
    from elsa_index.models.elsa import _NegativeSampler

    rng = np.random.default_rng(0)
    n = 50
    counts = rng.integers(0, 30, n).astype(float)
    f = rng.random(n) ** 3  # any per-item quantity, e.g. a user's squared prediction
    Xb = sp.csr_matrix((np.ones(3, np.float32), [2, 7, 40], [0, 2, 3]), shape=(2, n))
    s = _NegativeSampler(n, 10, counts if negatives == "popularity" else None)
    est = []
    for _ in range(4000):
        cols, w = s.sample(Xb, rng)
        assert (np.diff(cols) > 0).all()
        assert set([2, 7, 40]) <= set(cols.tolist())
        np.testing.assert_array_equal(w[np.isin(cols, [2, 7, 40])], 1.0)  # positives: always scored, weight 1
        est.append(np.dot(w, f[cols]))
    se = np.std(est) / np.sqrt(len(est))
    assert abs(np.mean(est) - f.sum()) < 4 * se, (np.mean(est), f.sum(), se)
    # Uncorrected sums fall short of the full one.
    raw = [f[s.sample(Xb, rng)[0]].sum() for _ in range(200)]
    assert np.mean(raw) < f.sum() - 10 * se


def test_corrected_sampled_outputs_train_well(planted):
    pop = _recall(planted, Popularity().fit(planted.train.matrix))
    for negatives in ("popularity", "uniform"):
        m = ELSA(32, epochs=12, lr=0.03, n_negatives=60, negatives=negatives, progress=False).fit(planted.train.matrix)
        assert m.n_outputs_ == 60
        assert _recall(planted, m) > pop + 0.1, negatives


# ---------------------------------------------------------------- compact state after pruning


def test_compact_product_matches_dense_with_gradients(monkeypatch):
    import torch

    from elsa_index.models import elsa as elsa_mod

    monkeypatch.setattr(elsa_mod, "_CHUNK_FLOATS", 24)  # 3 rows of 8 dims a chunk: several chunks
    g = torch.Generator().manual_seed(0)
    n, d, k, b = 10, 8, 3, 4
    cols = torch.stack([torch.randperm(d, generator=g)[:k].sort().values for _ in range(n)])
    values = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    out = elsa_mod._sparse_rows_product(u, values, cols)
    w = torch.randn(b, n, generator=g, dtype=torch.float64)
    (out * w).sum().backward()
    dense = torch.zeros(n, d, dtype=torch.float64).scatter(1, cols, values.detach()).requires_grad_(True)
    u2 = u.detach().clone().requires_grad_(True)
    ref = u2 @ dense.T
    (ref * w).sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(u.grad, u2.grad)
    torch.testing.assert_close(values.grad, torch.gather(dense.grad, 1, cols))


@pytest.mark.parametrize("n_negatives", [None, 40])
@pytest.mark.parametrize("restart", [False, True])
def test_compact_training_gives_the_masked_dense_model(planted, n_negatives, restart):
    class Masked(CompressedELSA):
        _compact_after_pruning = False

    kw = dict(epochs=4, warmup_epochs=0, finetune_epochs=2, prune_steps=5, lr=0.03, batch_size=256,
              n_negatives=n_negatives, restart=restart, progress=False, seed=2)
    inner = strong_generalization_split(planted.train, 150, seed=9)
    a = CompressedELSA(48, 6, **kw).fit(inner.train.matrix, validation=(inner.fold_in, inner.targets), patience=None)
    b = Masked(48, 6, **kw).fit(inner.train.matrix, validation=(inner.fold_in, inner.targets), patience=None)
    Ea, Eb = a.embeddings_, b.embeddings_
    np.testing.assert_array_equal(Ea.indices, Eb.indices)
    np.testing.assert_allclose(Ea.data, Eb.data, atol=2e-5)
    assert a.best_epoch_ == b.best_epoch_
    np.testing.assert_allclose([h["loss"] for h in a.history_], [h["loss"] for h in b.history_], rtol=1e-4)
    # and it did train after the switch: the fine-tuned model differs from the pruned one
    pruned = CompressedELSA(48, 6, **dict(kw, epochs=2, finetune_epochs=0)).fit(inner.train.matrix).embeddings_
    assert abs(Ea - pruned).max() > 1e-3


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_lean_loss_is_the_normalised_mse(weighted, dropout):
    import torch
    import torch.nn.functional as F

    from elsa_index.models.elsa import _elsa_loss

    g = torch.Generator().manual_seed(0)
    b, n = 5, 12
    X = sp.random(b, n, density=0.3, format="csr", random_state=1, dtype=np.float32)
    X.data[:] = 1
    X = sp.csr_matrix(sp.diags(np.array([1, 1, 1, 0, 1], np.float32)) @ X)  # user 3: empty history
    X.eliminate_zeros()
    w = torch.ones(n, dtype=torch.float64)
    if weighted:
        w[np.setdiff1d(np.arange(n), X.indices)] = torch.rand(n - len(np.unique(X.indices)), generator=g,
                                                             dtype=torch.float64) * 5
    scores = torch.randn(b, n, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.from_numpy(X.toarray()).double()
    # Input dropout: only the visible entries are subtracted; every entry stays a target.
    visible = torch.from_numpy((np.arange(X.nnz) % 3 != 0).astype(np.float64)) if dropout else None
    shown = target.clone()
    if dropout:
        shown[np.repeat(np.arange(b), np.diff(X.indptr))[::3], X.indices[::3]] = 0
    ref = (F.normalize(torch.relu(scores - shown) * w.sqrt(), dim=-1) - F.normalize(target, dim=-1)).pow(2).sum(-1).mean()
    ref.backward()
    g_ref = scores.grad.clone()
    scores.grad = None
    rows = torch.from_numpy(np.repeat(np.arange(b), np.diff(X.indptr)))
    cols = torch.from_numpy(X.indices.astype(np.int64))
    data = torch.from_numpy(X.data).double()
    lean = _elsa_loss(scores.clone(), rows, cols, data, w.sqrt() if weighted else None, visible)
    lean.backward()
    torch.testing.assert_close(lean, ref)
    torch.testing.assert_close(scores.grad, g_ref)


@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_fused_loss_equals_the_unfused_one_with_gradients(monkeypatch, compact, weighted, dropout):
    import torch

    from elsa_index.models import elsa as elsa_mod

    monkeypatch.setattr(elsa_mod, "FUSED_CHUNK_FLOATS", 5 * 3)  # 3 items a chunk for 5 users: several chunks
    monkeypatch.setattr(elsa_mod, "_CHUNK_FLOATS", 3 * 8)
    g = torch.Generator().manual_seed(3)
    b, n, d, k = 5, 13, 8, 3
    X = sp.random(b, n, density=0.3, format="csr", random_state=4, dtype=np.float32)
    X.data[:] = 1
    X = sp.csr_matrix(sp.diags(np.array([1, 1, 0, 1, 1], np.float32)) @ X)  # user 2: empty history
    X.eliminate_zeros()
    rows = torch.from_numpy(np.repeat(np.arange(b), np.diff(X.indptr)))
    hist = torch.from_numpy(X.indices.astype(np.int64))
    data = torch.from_numpy(X.data).double()
    visible = torch.from_numpy((np.arange(X.nnz) % 2 == 0).astype(np.float64)) if dropout else None
    sqrt_w = None
    if weighted:  # weights off the history columns, as sampled outputs have
        w = torch.ones(n, dtype=torch.float64)
        off = np.setdiff1d(np.arange(n), X.indices)
        w[off] = torch.rand(len(off), generator=g, dtype=torch.float64) * 4
        sqrt_w = w.sqrt()
    xA = torch.randn(b, d, generator=g, dtype=torch.float64)
    if compact:
        cols = torch.stack([torch.randperm(d, generator=g)[:k].sort().values for _ in range(n)])
        W = torch.randn(n, k, generator=g, dtype=torch.float64)
    else:
        cols, W = None, torch.randn(n, d, generator=g, dtype=torch.float64)
    seen = {}

    def run(fused):
        u, w_ = xA.clone().requires_grad_(True), W.clone().requires_grad_(True)
        got = []
        sink = (lambda lo, hi, full: got.append((lo, full.clone()))) if compact else None
        if fused:
            loss = elsa_mod._fused_elsa_loss(u, w_, cols, rows, hist, data, sqrt_w, sink, visible)
        else:
            S = elsa_mod._sparse_rows_product(u, w_, cols, sink) if compact else u @ w_.T
            loss = elsa_mod._elsa_loss(S, rows, hist, data, sqrt_w, visible)
        loss.backward()
        seen[fused] = torch.cat([f for _, f in sorted(got, key=lambda t: t[0])]) if got else None
        return loss.detach(), u.grad, w_.grad

    for a, b_ in zip(run(True), run(False)):
        torch.testing.assert_close(a, b_)
    if compact:  # the regrowth recorder sees the same dense gradients
        torch.testing.assert_close(seen[True], seen[False])


def test_fused_outputs_train_the_same_model(planted):
    class Fused(ELSA):
        _fused_outputs = True

    class Unfused(ELSA):
        _fused_outputs = False

    kw = dict(epochs=2, batch_size=256, lr=0.03, progress=False, seed=1)
    a = Fused(32, **kw).fit(planted.train.matrix).embeddings_
    b = Unfused(32, **kw).fit(planted.train.matrix).embeddings_
    np.testing.assert_allclose(a, b, atol=2e-5)

    class FusedC(CompressedELSA):
        _fused_outputs = True

    class UnfusedC(CompressedELSA):
        _fused_outputs = False

    ckw = dict(kw, epochs=3, warmup_epochs=0, finetune_epochs=1, prune_steps=4, n_negatives=40, start_nnz=12)
    Ea, Eb = FusedC(48, 6, **ckw).fit(planted.train.matrix).embeddings_, UnfusedC(48, 6, **ckw).fit(
        planted.train.matrix).embeddings_
    np.testing.assert_array_equal(Ea.indices, Eb.indices)
    np.testing.assert_allclose(Ea.data, Eb.data, atol=2e-5)


def test_epoch_seconds_exclude_validation(planted, monkeypatch):
    import time

    from elsa_index.models import elsa as elsa_mod
    from elsa_index.workflow import train_checkpoint

    real = elsa_mod._validation_recall

    def slow(*args):
        time.sleep(1.0)  # a validation pass far slower than a training epoch here
        return real(*args)

    monkeypatch.setattr(elsa_mod, "_validation_recall", slow)
    model = ELSA(8, epochs=2, batch_size=2000, progress=False)
    t0 = time.perf_counter()
    ckpt = train_checkpoint(model, planted, validation_users=100, patience=None, refit=False, evaluate_heldout=False)
    assert time.perf_counter() - t0 > 2.0
    assert all(h["seconds"] < 1.0 for h in model.history_)
    assert 0 < ckpt.config["seconds_per_epoch"] < 1.0


# ---------------------------------------------------------------- sparse start


@pytest.mark.parametrize("restart", [False, True])
def test_sparse_start_reaches_exactly_nnz_and_learns(planted, restart):
    pop = _recall(planted, Popularity().fit(planted.train.matrix))
    m = CompressedELSA(128, 4, start_nnz=16, epochs=12, lr=0.03, finetune_epochs=4, restart=restart,
                       progress=False, seed=0).fit(planted.train.matrix)
    E = m.embeddings_
    assert sp.isspmatrix_csr(E) and E.shape == (300, 128)
    assert (np.diff(E.indptr) == 4).all()
    assert all((np.diff(E.indices[lo:lo + 4]) > 0).all() for lo in E.indptr[:-1])  # sorted, distinct columns
    np.testing.assert_allclose(np.sqrt(E.multiply(E).sum(axis=1)).A1, 1.0, rtol=1e-5)
    nnz = [h["nnz"] for h in m.history_]
    assert nnz[0] < 16 and nnz[-1] == 4 and all(a >= b for a, b in zip(nnz, nnz[1:]))
    if not restart:  # (restarting after each of many pruning events learns less; the shape is what is checked)
        assert _recall(planted, m) > pop + 0.15, (_recall(planted, m), pop)


def test_sparse_start_never_makes_the_dense_state(planted, monkeypatch):
    from elsa_index.models import elsa as elsa_mod

    def no_dense(*a, **k):
        raise AssertionError("the dense state was made")

    monkeypatch.setattr(elsa_mod._DenseState, "__init__", no_dense)
    m = CompressedELSA(64, 4, start_nnz=8, epochs=2, finetune_epochs=1, progress=False).fit(planted.train.matrix)
    assert (np.diff(m.embeddings_.indptr) == 4).all()


def test_sparse_start_is_deterministic_per_seed(planted):
    X = planted.train.matrix
    kw = dict(start_nnz=8, epochs=3, finetune_epochs=1, progress=False)
    a = CompressedELSA(32, 4, seed=5, **kw).fit(X).embeddings_
    b = CompressedELSA(32, 4, seed=5, **kw).fit(X).embeddings_
    c = CompressedELSA(32, 4, seed=6, **kw).fit(X).embeddings_
    assert (a != b).nnz == 0
    assert (a.indices != c.indices).any()


def test_start_nnz_equal_to_dims_is_the_dense_start(planted):
    X = planted.train.matrix
    kw = dict(epochs=3, finetune_epochs=1, progress=False, seed=1)
    a = CompressedELSA(32, 4, start_nnz=32, **kw).fit(X).embeddings_
    b = CompressedELSA(32, 4, **kw).fit(X).embeddings_
    assert (a != b).nnz == 0


def test_compact_pruning_keeps_the_largest_magnitudes_and_their_moments():
    import torch

    from elsa_index.models.elsa import _CompactState

    values = torch.nn.Parameter(torch.tensor([[0.1, -0.9, 0.3, 0.5], [2.0, 0.0, -3.0, 1.0]]))
    cols = torch.tensor([[1, 4, 6, 9], [0, 2, 3, 7]])
    init = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    state = _CompactState(values, cols, 10, init)
    opt = torch.optim.NAdam([values], lr=0.1)
    values.grad = torch.arange(8, dtype=torch.float32).view(2, 4)
    opt.step()
    kept_before = opt.state[values]["exp_avg"].clone()
    new, new_opt = state.pruned(2, opt, 0.1)
    expect_cols = torch.tensor([[4, 9], [0, 3]])
    torch.testing.assert_close(new.cols, expect_cols)
    torch.testing.assert_close(new.values.detach(), torch.gather(values.detach(), 1, torch.tensor([[1, 3], [0, 2]])))
    torch.testing.assert_close(new_opt.state[new.values]["exp_avg"], torch.gather(kept_before, 1, torch.tensor([[1, 3], [0, 2]])))
    torch.testing.assert_close(new.init, torch.tensor([[2.0, 4.0], [5.0, 7.0]]))
    # With restart the kept entries return to their initial values and the optimiser starts afresh.
    again, fresh = state.pruned(2, opt, 0.1, restart=True)
    torch.testing.assert_close(again.values.detach(), torch.tensor([[2.0, 4.0], [5.0, 7.0]]))
    assert not fresh.state


def test_sparse_start_memory_estimate_is_smaller():
    import torch

    cpu = torch.device("cpu")
    kw = dict(batch_size=64)  # small batches: the weights' state dominates
    dense, _, _ = CompressedELSA(1024, 32, **kw)._state_bytes(50_000, 25_000, cpu)
    sparse, what, hint = CompressedELSA(1024, 32, start_nnz=64, **kw)._state_bytes(50_000, 25_000, cpu)
    assert sparse < 0.3 * dense, (sparse, dense)
    assert "start_nnz=64" in what and "--start-nnz" in hint


@pytest.mark.parametrize(
    "model,match",
    [
        (lambda: CompressedELSA(16, 4, start_nnz=32), r"start_nnz must be an integer in \[1, 16\], got 32"),
        (lambda: CompressedELSA(16, 4, start_nnz=0), r"start_nnz must be an integer in \[1, 16\], got 0"),
        (lambda: CompressedELSA(16, 8, start_nnz=4), r"nnz must be an integer in \[1, 4\], got 8 \(at most start_nnz=4\)"),
        (lambda: CompressedELSA(16, 4, start_nnz=2.5), r"start_nnz must be an integer"),
    ],
)
def test_bad_start_nnz(model, match):
    with pytest.raises(TrainingError, match=match):
        model().fit(_tiny())


def test_regrowth_candidates_are_the_dead_columns_of_largest_gradient(monkeypatch):
    import torch

    from elsa_index.models import elsa as elsa_mod

    monkeypatch.setattr(elsa_mod, "_CHUNK_FLOATS", 24)  # several item chunks
    g = torch.Generator().manual_seed(0)
    n, d, k, b = 9, 8, 3, 4
    cols = torch.stack([torch.randperm(d, generator=g)[:k].sort().values for _ in range(n)])
    values = torch.nn.Parameter(torch.randn(n, k, generator=g, dtype=torch.float64))
    u = torch.randn(b, d, generator=g, dtype=torch.float64)
    w = torch.randn(b, n, generator=g, dtype=torch.float64)
    state = elsa_mod._CompactState(values, cols, d)
    state.grow = 2
    (elsa_mod._sparse_rows_product(u, values, cols, lambda lo, hi, gr: state._record_growth(None, lo, hi, gr)) * w).sum().backward()
    dense_grad = (w.T @ u).abs().scatter(1, cols, -1.0)  # d/dA of sum(w * u Aᵀ), live columns excluded
    expect = torch.topk(dense_grad, 2, dim=1).indices
    torch.testing.assert_close(state.grow_cols.sort(dim=1).values, expect.sort(dim=1).values)


def test_pruning_with_regrowth_swaps_the_smallest_kept_entries_for_candidates():
    import torch

    from elsa_index.models.elsa import _CompactState

    values = torch.nn.Parameter(torch.tensor([[0.1, -0.9, 0.3, 0.5], [2.0, 0.0, -3.0, 1.0]]))
    cols = torch.tensor([[1, 4, 6, 9], [0, 2, 3, 7]])
    state = _CompactState(values, cols, 10)
    opt = torch.optim.NAdam([values], lr=0.1)
    values.grad = torch.ones(2, 4)
    opt.step()
    state.grow_cols = torch.tensor([[0, 2], [-1, -1]])  # row 1: no candidate (zero gradient everywhere dead)
    new, new_opt = state.pruned(3, opt, 0.1, regrow=1)
    # Row 0 keeps its 2 largest (cols 4, 9) and regrows col 0 at 0; row 1 keeps its 3 largest.
    torch.testing.assert_close(new.cols, torch.tensor([[0, 4, 9], [0, 3, 7]]))
    v = values.detach()
    torch.testing.assert_close(new.values.detach(), torch.stack([torch.stack([v.new_tensor(0.0), v[0, 1], v[0, 3]]),
                                                                 v[1, [0, 2, 3]]]))
    m = new_opt.state[new.values]["exp_avg"]
    assert m[0, 0] == 0 and (m[0, 1:] != 0).all() and (m[1] != 0).all()


def test_regrowth_is_off_with_zero_and_ignored_with_the_dense_start(planted):
    X = planted.train.matrix
    kw = dict(epochs=3, finetune_epochs=1, progress=False, seed=1)
    a = CompressedELSA(32, 4, regrow=0.5, **kw).fit(X).embeddings_
    b = CompressedELSA(32, 4, regrow=0.0, **kw).fit(X).embeddings_
    assert (a != b).nnz == 0
    c = CompressedELSA(32, 4, start_nnz=16, regrow=0.5, **kw).fit(X).embeddings_
    d = CompressedELSA(32, 4, start_nnz=16, regrow=0.0, **kw).fit(X).embeddings_
    assert (c.indices != d.indices).any()
    assert (np.diff(c.indptr) == 4).all()
    assert all((np.diff(c.indices[lo:lo + 4]) > 0).all() for lo in c.indptr[:-1])


def test_bad_regrow():
    with pytest.raises(TrainingError, match=r"regrow must be"):
        CompressedELSA(16, 4, start_nnz=8, regrow=1.5).fit(_tiny())


def test_input_dropout_trains_deterministically_and_survives_empty_inputs():
    # Users of one item lose their whole input half of the time: their scores are 0 and the loss stays finite (the
    # chunked loss once spread a NaN gradient from them to every item). Chunked and plain losses train the same
    # model, a seed gives one model, and hiding inputs changes the model.
    X = sp.random(60, 40, density=0.15, format="csr", random_state=3, dtype=np.float32)
    X.data[:] = 1
    one = sp.csr_matrix((np.ones(20, np.float32), np.arange(20), np.arange(21)), shape=(20, 40))
    X = sp.vstack([X, one]).tocsr()

    def fit(p, fused=None, seed=0):
        m = ELSA(8, epochs=3, batch_size=16, input_dropout=p, n_negatives=None, seed=seed, progress=False)
        m._fused_outputs = fused
        return m.fit(X)

    a, b, c = fit(0.5, True), fit(0.5, False), fit(0.5, False)
    assert all(np.isfinite(h["loss"]) for h in a.history_)
    np.testing.assert_allclose(a.embeddings_, b.embeddings_, atol=1e-5)
    np.testing.assert_array_equal(b.embeddings_, c.embeddings_)
    assert abs(fit(0.0).embeddings_ - b.embeddings_).max() > 1e-3
    assert abs(fit(0.5, seed=1).embeddings_ - b.embeddings_).max() > 1e-3
    assert b.get_params()["input_dropout"] == 0.5
