"""The one selection rule (`bbtune.search.selection`): each rule's order, and the tuner returning the evaluated
point each rule ranks first."""
from __future__ import annotations

import numpy as np
import pytest

from bbtune.runs.tuner import TuneConfig, Tuner
from bbtune.search.evaluate import Evaluation
from bbtune.search.selection import Selection, selection_key

SHARP_BUT_WRONG = Evaluation(accuracy=0.75, loss=0.9, n=8)  # more right, but confidently wrong where it errs
CALM = Evaluation(accuracy=0.625, loss=0.5, n=8)


def test_each_rule_orders_by_what_it_names():
    assert selection_key(Selection.DEV_ACC, 0.1, 8, SHARP_BUT_WRONG) < selection_key(Selection.DEV_ACC, 0.1, 8, CALM)
    assert selection_key(Selection.DEV_LOSS, 0.1, 8, CALM) < selection_key(Selection.DEV_LOSS, 0.1, 8, SHARP_BUT_WRONG)
    # train + dev pooled by example count: a low train loss can outweigh a higher dev loss
    assert selection_key(Selection.TRAIN_DEV_LOSS, 0.1, 24, SHARP_BUT_WRONG) < selection_key(
        Selection.TRAIN_DEV_LOSS, 0.6, 24, CALM)
    assert selection_key(Selection.TRAIN_DEV_LOSS, 0.3, 8, CALM) == (pytest.approx((0.3 * 8 + 0.5 * 8) / 16),)


def test_dev_accuracy_ties_break_by_dev_loss():
    a, b = Evaluation(0.75, 0.4, 8), Evaluation(0.75, 0.6, 8)
    assert selection_key(Selection.DEV_ACC, 0.0, 8, a) < selection_key(Selection.DEV_ACC, 0.0, 8, b)


@pytest.mark.parametrize("rule", list(Selection))
def test_the_tuner_returns_the_point_its_rule_ranks_first(rule, tiny_backend, tiny_task):
    config = TuneConfig(budget_calls=36, popsize=6, intrinsic_dim=10, prompt_tokens=3, p0="vocab", eval_every=6,
                        keep_manual=False, select=rule)
    tuner = Tuner(tiny_task, tiny_backend, config, progress=False)
    result = tuner.run()
    points = tuner.eval_points_
    assert len(points) >= 4
    keys = [selection_key(rule, p["train_ce"], len(tiny_task.train), Evaluation(p["dev_acc"], p["dev_loss"], p["dev_n"]))
            for p in points]
    best = points[min(range(len(keys)), key=keys.__getitem__)]  # the first of equal keys, as the tuner keeps it
    assert np.array_equal(result.best_z, best["z"])
    assert result.metrics["select_rule"] == rule.value and result.metrics["dev_acc"] == best["dev_acc"]
