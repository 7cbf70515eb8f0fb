"""Tests for elsa_index.models.schedules: pruning levels and the steps they happen at."""

import pytest

from elsa_index.errors import TrainingError
from elsa_index.models import SCHEDULES, nnz_schedule, pruning_plan


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("start,target", [(1024, 16), (64, 1), (100, 99), (32, 32)])
def test_schedule_reaches_target_monotonically(schedule, start, target):
    levels = nnz_schedule(schedule, start, target, prune_steps=7)
    assert levels[-1] == target
    assert all(a >= b for a, b in zip(levels, levels[1:]))
    assert all(target <= n <= start for n in levels)


def test_schedule_shapes():
    assert nnz_schedule("constant", 1024, 16) == [16]
    assert nnz_schedule("step", 1024, 16) == [512, 256, 128, 64, 32, 16]
    assert nnz_schedule("step", 100, 30) == [50, 30]
    lin = nnz_schedule("linear", 1000, 100, prune_steps=9)
    assert lin == [900, 800, 700, 600, 500, 400, 300, 200, 100]
    exp = nnz_schedule("exponential", 1024, 16, prune_steps=6)
    assert exp == [512, 256, 128, 64, 32, 16]


@pytest.mark.parametrize("args", [("linear", 10, 0), ("linear", 10, 11), ("bogus", 10, 5)])
def test_schedule_bad_arguments(args):
    with pytest.raises(TrainingError):
        nnz_schedule(*args)


def test_pruning_plan_spreads_events_over_the_pruning_phase():
    # 3 batches a epoch, pruning phase epochs [1, 3): steps 3..8; last event at its end.
    assert pruning_plan([8, 4, 2], 3, 1, 3) == {3: 8, 5: 4, 8: 2}
    # One event (constant): at the last step of the pruning phase.
    assert pruning_plan([2], 3, 1, 3) == {8: 2}
    # More events than steps: levels that share a step keep the smallest.
    assert pruning_plan([8, 4, 2], 1, 0, 2) == {0: 4, 1: 2}


@pytest.mark.parametrize("args, match", [
    (("linear", 10, 11), r"target nnz must be an integer in \[1, 10\], got 11 \(the dims\)"),
    (("linear", 10, 5, 0), r"prune_steps must be an integer >= 1, got 0"),
    (("linear", 10, 2.5), r"target nnz must be an integer"),
])
def test_schedule_error_messages(args, match):
    with pytest.raises(TrainingError, match=match):
        nnz_schedule(*args)

