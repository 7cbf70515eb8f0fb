"""The end-to-end demo on built-in synthetic data (``elsa-index demo``).

:func:`run_demo` generates synthetic interactions with planted structure,
trains popularity, dense ELSA (256 and 32 dims) and Compressed ELSA (1024
dims pruned to 16 per item), saves their checkpoints, serves one held-out
user from an exact sparse index and, optionally, runs the small benchmark of
every installed backend (``eval/configs/quick.toml``, also on its own:
:func:`bench_demo`). It runs offline.

Nothing is printed: progress lines go to the ``say`` callback, the trained
models to ``on_models`` (as soon as they are known, before the slower
serving and benchmark steps), and everything is returned in a
:class:`DemoResult`.
"""

from __future__ import annotations

import importlib.resources
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ._checks import check_int
from .data import Split
from .errors import ElsaIndexError
from .metrics import evaluate
from .models import Popularity
from .search import build_index
from .workflow import DEFAULT_METRICS, DataSpec, load_split, make_model, train_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["DemoModel", "DemoResult", "run_demo", "bench_demo", "demo_models", "QUICK_CONFIG"]

#: the benchmark config the demo runs (shipped with the package).
QUICK_CONFIG = "quick.toml"


@dataclass
class DemoModel:
    """One trained model of the demo.

    Attributes
    ----------
    name : ``"popularity"``, ``"elsa-256"``, ``"elsa-32"`` or ``"compressed-1024-nnz16"``.
    nnz_per_item : mean active dims per item (None for popularity, which has no embeddings).
    train_seconds : training time (popularity: fit and evaluation).
    embedding_bytes : bytes of the item embeddings (0 for popularity).
    metrics : :data:`~elsa_index.workflow.DEFAULT_METRICS` on the held-out users.
    checkpoint : its checkpoint directory (None for popularity).
    """

    name: str
    nnz_per_item: float | None
    train_seconds: float
    embedding_bytes: int
    metrics: dict[str, float]
    checkpoint: Path | None = None


@dataclass
class DemoResult:
    """What :func:`run_demo` did.

    Attributes
    ----------
    out : the output directory.
    spec : the synthetic data settings.
    models : the trained models, in the order trained.
    index : the exact sparse index of the Compressed ELSA checkpoint.
    user : the held-out user served from the index.
    history : that user's fold-in history (external item ids).
    recommended : the index's top-5 items for that history.
    bench : :func:`elsa_index.eval.harness.run_bench`'s result, or None when skipped.
    """

    out: Path
    spec: DataSpec
    models: list[DemoModel] = field(default_factory=list)
    index: Path | None = None
    user: str = ""
    history: list[str] = field(default_factory=list)
    recommended: list[str] = field(default_factory=list)
    bench: dict | None = None


def demo_models(progress: bool = True) -> list[tuple[str, object]]:
    """The demo's (name, untrained model) pairs: dense ELSA 256 and 32 dims, Compressed ELSA 1024 -> 16."""
    return [
        ("elsa-256", make_model("elsa", dims=256, epochs=20, lr=0.01, progress=progress)),
        ("elsa-32", make_model("elsa", dims=32, epochs=20, lr=0.01, progress=progress)),
        ("compressed-1024-nnz16", make_model("compressed", dims=1024, nnz=16, epochs=12, lr=0.01, warmup_epochs=0,
                                              finetune_epochs=9, prune_steps=50, progress=progress)),
    ]


def run_demo(out: str | Path = "elsa-demo", *, users: int = 5000, items: int = 2000, bench: bool = True,
             progress: bool = True, say: Callable[[str], None] | None = None,
             on_models: Callable[[list[DemoModel]], None] | None = None) -> DemoResult:
    """Run the demo end to end on synthetic data; write checkpoints, an index and a benchmark under ``out``.

    Parameters
    ----------
    out : output directory (created; files of an earlier demo are replaced).
    users, items : size of the synthetic data.
    bench : run the small benchmark of every installed backend (writes
        ``out/bench/report.md``).
    progress : show progress bars while training and benchmarking.
    say : callable for one-line status messages (default: the logger).
    on_models : called with the trained models before the index is served
        and the benchmark runs.

    Returns
    -------
    DemoResult

    Raises
    ------
    ElsaIndexError
        Bad sizes, an unwritable ``out``, or a failing step.
    """
    users = check_int(users, "users", 1)
    items = check_int(items, "items", 1)
    say = say or logger.info
    out = Path(out)
    spec = DataSpec(source="synthetic", synthetic_users=users, synthetic_items=items,
                    n_heldout_users=max(1, min(1000, users // 5)))
    result = DemoResult(out=out, spec=spec)
    say(f"generating synthetic interactions: {users} users x {items} items ...")
    split = load_split(spec)
    say(f"training on {split.train.n_users} users ({split.train.nnz} interactions); "
        f"evaluating on {split.fold_in.shape[0]} held-out users")
    result.models = _train_models(split, spec, out, progress, say)
    if on_models is not None:
        on_models(result.models)
    _serve_one_user(result, split)
    if bench:
        say(f"benchmarking the backends ({QUICK_CONFIG}) ...")
        result.bench = bench_demo(out, progress=progress)
    return result


def _train_models(split: Split, spec: DataSpec, out: Path, progress: bool, say) -> list[DemoModel]:
    t0 = time.perf_counter()
    pop = Popularity().fit(split.train.matrix)
    res = evaluate(pop.score, split.fold_in, split.targets, ks=(), metrics=DEFAULT_METRICS)
    models = [DemoModel("popularity", None, time.perf_counter() - t0, 0, res)]
    for name, model in demo_models(progress):
        say(f"training {name} ...")
        ckpt = train_checkpoint(model, split, data={"spec": spec.to_dict()},
                                validation_users=max(1, min(500, split.train.n_users // 10)))
        ckpt.save(out / name, overwrite=True)
        models.append(DemoModel(name, float(ckpt.nnz_per_row().mean()), ckpt.config["train_seconds"], ckpt.nbytes(),
                                ckpt.metrics, out / name))
    return models


def _serve_one_user(result: DemoResult, split: Split) -> None:
    """Serve the first held-out user from an exact sparse index of the Compressed ELSA checkpoint."""
    result.index = result.out / "index-sparse"
    index = build_index(result.out / "compressed-1024-nnz16", "sparse", result.index, overwrite=True)
    row = split.fold_in[0]
    result.user = str(split.heldout_user_ids.ids[0])
    result.history = index.item_ids[row.indices].tolist()
    result.recommended = index.recommend([result.history], k=5).ids[0].tolist()


def bench_demo(out: str | Path, *, progress: bool = True) -> dict:
    """The demo's small benchmark of every installed backend on synthetic data, written to ``out/bench``.

    Returns :func:`elsa_index.eval.harness.run_bench`'s result (``skips``
    lists the backends that could not run here, ``report`` the report's path).
    """
    # The harness needs the optional ``bench`` extra (pydantic): imported only when the benchmark runs.
    from .eval.config import load_config
    from .eval.harness import run_bench

    config = importlib.resources.files("elsa_index.eval") / "configs" / QUICK_CONFIG
    if not config.is_file():
        raise ElsaIndexError(f"the benchmark config {QUICK_CONFIG} is missing from the installed package; "
                             "reinstall elsa-index or run the demo with --no-bench")
    with importlib.resources.as_file(config) as path:
        return run_bench(load_config(path), Path(out) / "bench", force=True, progress=progress, say=lambda m: None)
