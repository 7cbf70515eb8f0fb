"""How far one held-out draw moves a model's share of EASE: dense ELSA against EASE over several draws.

Usage::

    python -m elsa_index.eval.studies.heldout_draws --data FILE [--rating-col rating --min-rating 4]
        [--heldout-users 150] [--seeds 42 1 2 3 4 5] [--dims 256] [--lr 0.01] [--input-dropout 0.5]
        [--l2 300] [--json OUT.json]

``FILE`` is a Parquet/CSV interaction log (``--user-col``/``--item-col``,
default ``user_id``/``item_id``). For each seed, ``--heldout-users`` users
(with at least 5 positives) are held out with an 80/20 fold-in / target
split, as in the accuracy benchmark; EASE (fixed ``--l2``) and dense ELSA
(fixed width, learning rate and input dropout; epochs chosen by early
stopping on 10% of the training users, then retrained on all training
users, as ``fit_recipe`` does) are scored by Recall@20 on them. It prints
each draw and the mean, the standard deviation and the ratio of the means:
on a small dataset one draw's ratio to EASE can be several percent off the
mean, which a single table row does not show.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    from elsa_index.metrics import evaluate
    from elsa_index.models.baselines import EASE
    from elsa_index.recipes import fit_recipe, search_recipe
    from elsa_index.workflow import DataSpec, load_split

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="Parquet or CSV interaction log")
    ap.add_argument("--user-col", default="user_id")
    ap.add_argument("--item-col", default="item_id")
    ap.add_argument("--rating-col", default=None)
    ap.add_argument("--min-rating", type=float, default=None, help="keep ratings >= this as positives")
    ap.add_argument("--heldout-users", type=int, default=150)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4, 5], help="one held-out draw per seed")
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--input-dropout", type=float, default=0.5)
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--l2", type=float, default=300.0, help="EASE's l2")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        ap.error(f"--data {args.data}: no such file")
    if (args.min_rating is None) != (args.rating_col is None):
        ap.error("--min-rating and --rating-col go together")
    metric = "recall@20"
    draws = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        split = load_split(DataSpec(source=args.data, user_col=args.user_col, item_col=args.item_col,
                                    rating_col=args.rating_col, min_rating=args.min_rating,
                                    n_heldout_users=args.heldout_users, seed=seed))
        ease = EASE(l2=args.l2).fit(split.train.matrix)
        e = float(evaluate(ease.score, split.fold_in, split.targets, ks=(), metrics=(metric,))[metric])
        recipe = search_recipe("elsa", split, lrs=(args.lr,), widths=(args.dims,), input_dropouts=(args.input_dropout,),
                               refine=False, reference=False, max_epochs=args.max_epochs, budget_seconds=1e9,
                               seed=0)
        m = float(fit_recipe(recipe, split, metrics=(metric,)).metrics[metric])
        draws.append({"seed": seed, "ease": e, "elsa": m, "ratio": m / e if e > 0 else None,
                      "best_epoch": recipe["best_epoch"], "seconds": round(time.perf_counter() - t0, 1)})
        print(f"seed {seed:4d}: EASE {e:.4f}  ELSA {m:.4f}  ratio {draws[-1]['ratio']:.3f}  "
              f"(best epoch {recipe['best_epoch']})", flush=True)
    ratios = np.array([d["ratio"] for d in draws if d["ratio"] is not None], dtype=float)
    e_mean, m_mean = np.mean([d["ease"] for d in draws]), np.mean([d["elsa"] for d in draws])
    summary = {"ease_mean": float(e_mean), "elsa_mean": float(m_mean),
               "ratio_of_means": float(m_mean / e_mean) if e_mean > 0 else None,
               "ratio_mean": float(ratios.mean()) if len(ratios) else None,
               "ratio_sd": float(ratios.std(ddof=1)) if len(ratios) > 1 else None}
    print(f"mean: EASE {e_mean:.4f}  ELSA {m_mean:.4f}  ratio of means {summary['ratio_of_means']:.3f}; "
          f"per-draw ratio {summary['ratio_mean']:.3f}"
          + (f" (sd {summary['ratio_sd']:.3f})" if summary["ratio_sd"] is not None else ""))
    if args.json:
        out = {"data": Path(args.data).name, "metric": metric, "settings": {k: v for k, v in vars(args).items()
                                                                            if k not in ("data", "json")},
               "draws": draws, **summary}
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
