"""Pruning schedules of Compressed ELSA: how many active dims per row, and when.

A schedule takes each item row from its start width (the dense width
``dims``, or ``start_nnz`` for a sparse start) down to the target ``nnz`` in a
few pruning events, spread evenly over the pruning phase (between
``warmup_epochs`` and ``epochs - finetune_epochs``). Below, ``dims`` stands for
the start width:

``constant``
    one-shot: the dense model trains through the pruning phase and is pruned
    straight to the target at its end.
``step``
    halve the active dims per row at evenly spaced events until the target.
``linear``
    nnz falls linearly with training progress, updated at ``prune_steps`` events.
``exponential``
    nnz falls geometrically, ``dims · (nnz/dims)^t``, at ``prune_steps`` events.
"""

from __future__ import annotations

import math

import numpy as np

from .._checks import check_int
from ..errors import TrainingError

__all__ = ["SCHEDULES", "nnz_schedule", "pruning_plan"]

SCHEDULES = ("constant", "step", "linear", "exponential")
"""Names accepted by :func:`nnz_schedule`."""


def nnz_schedule(schedule: str, start: int, target: int, prune_steps: int = 10) -> list[int]:
    """Active dims per row after each pruning event, ending exactly at ``target``.

    Parameters
    ----------
    schedule : one of ``SCHEDULES``.
    start : dims per row before pruning (the dense width, or ``start_nnz`` for a sparse start).
    target : dims per row at the end.
    prune_steps : number of events for ``linear`` and ``exponential``.

    Returns
    -------
    list of int, non-increasing, last element ``target``.
    """
    if schedule not in SCHEDULES:
        raise TrainingError(f"unknown pruning schedule {schedule!r}; expected one of {SCHEDULES}")
    start = check_int(start, "start", 1, error=TrainingError)
    check_int(target, "target nnz", 1, start, error=TrainingError, hint=" (the dims)")
    check_int(prune_steps, "prune_steps", 1, error=TrainingError)
    if target == start:
        return [target]
    if schedule == "constant":
        return [target]
    if schedule == "step":
        out, cur = [], start
        while cur > target:
            cur = max(target, cur // 2)
            out.append(cur)
        return out
    ts = np.arange(1, prune_steps + 1) / prune_steps
    if schedule == "linear":
        vals = start + (target - start) * ts
    else:
        vals = start * (target / start) ** ts
    out = [max(target, int(math.ceil(v - 1e-9))) for v in vals]
    out[-1] = target
    return out


def pruning_plan(levels: list[int], n_batches: int, first_epoch: int, last_epoch: int) -> dict[int, int]:
    """Training steps at which to prune, and the active dims per row after each.

    Parameters
    ----------
    levels : the schedule's nnz after each event (:func:`nnz_schedule`).
    n_batches : training steps per epoch.
    first_epoch, last_epoch : the pruning phase, ``[first_epoch, last_epoch)``
        in epochs (``warmup_epochs`` and ``epochs - finetune_epochs``).

    Returns
    -------
    dict global step -> nnz (several levels falling on one step keep the smallest).
    """
    first = first_epoch * n_batches
    last = last_epoch * n_batches  # exclusive: fine-tuning starts here
    span = last - first
    # Events evenly spaced over the pruning phase, the last one at its end.
    # A single event (constant: one-shot pruning) comes at the end: the
    # dense model trains through the pruning phase, is pruned once, and is
    # then fine-tuned (with restart: the lottery-ticket procedure).
    if len(levels) == 1:
        at = [max(first, last - 1)]
    else:
        at = [first + round(i * (span - 1) / (len(levels) - 1)) for i in range(len(levels))]
    plan: dict[int, int] = {}
    for s, n in zip(at, levels):
        plan[s] = min(n, plan.get(s, n))
    return plan
