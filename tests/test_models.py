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
        (lambda: ELSA(8, n_negatives=-3), r"n_negatives must be an integer >= 0, got -3 \(or None\)"),
        (lambda: ELSA(8, batch_size=2.5), r"batch_size must be an integer >= 1, got 2.5"),
        (lambda: ELSA(8, epochs=True), r"epochs must be an integer >= 1, got True"),
        (lambda: CompressedELSA(16, 4, epochs=3, prune_steps=0), r"prune_steps must be an integer >= 1, got 0"),
        (lambda: CompressedELSA(16, 4, epochs=3, warmup_epochs=-1), r"warmup_epochs must be an integer >= 0"),
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
