"""Searching through a readout: a candidate's train loss read from its top-k (fixed or out of fold)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bbtune.backends.local import LocalBackend
from bbtune.core.prompts import MANUAL_PROMPT, HardPrompt
from bbtune.errors import ConfigError
from bbtune.runs.load import load_run
from bbtune.runs.tuner import TuneConfig, Tuner
from bbtune.search.losses import per_prompt_loss
from bbtune.search.readout_objective import FixedReadoutObjective, FoldReadoutObjective, readout_objective
from bbtune.search.readouts import Answers, make_readout
from bbtune.search.readouts.choice import held_out_log_scores


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    return LocalBackend("tiny")


def _objective(variant, backend, task, k=5):
    return readout_objective(variant, backend, task.format, task.format.label_ids(task.train), k, seed=3)


def test_fold_loss_is_the_out_of_fold_cross_entropy_of_the_candidates_own_answers(backend, tiny_task):
    objective = _objective("fold", backend, tiny_task)
    assert isinstance(objective, FoldReadoutObjective)
    train, y = tiny_task.train, tiny_task.format.label_ids(tiny_task.train)
    loss = objective.losses(objective.train_scores([MANUAL_PROMPT], train), None)[0]
    labels, tops = backend.score_topk([MANUAL_PROMPT], train, tiny_task.format, 5)
    folds = min(4, int(np.bincount(y).min()))
    expected = held_out_log_scores(make_readout("logistic").kind, Answers(labels[0], tops[0]), y, folds, 3)[0]
    assert loss == pytest.approx(float(per_prompt_loss(expected[None], y)[0]))


def test_fixed_readout_is_fitted_once_on_the_first_prompt_and_kept(backend, tiny_task):
    objective = _objective("fixed", backend, tiny_task)
    assert isinstance(objective, FixedReadoutObjective)
    objective.train_scores([MANUAL_PROMPT], tiny_task.train)
    first = objective.readout
    ids = tuple(backend.vocabulary().tokenizer.encode(" hello world", add_special_tokens=False))
    other = HardPrompt(ids, " hello world")
    objective.train_scores([other], tiny_task.train)
    assert objective.readout is first  # not refitted on the second candidate
    dev = objective.eval_scores(MANUAL_PROMPT, tiny_task.dev)
    assert dev.shape == (1, len(tiny_task.dev), len(tiny_task.format.labels))
    assert np.allclose(np.exp(dev).sum(axis=-1), 1.0)  # class log-probs: nothing left for a bias to fit


def test_a_dev_evaluation_after_scoring_pays_no_second_train_call(backend, tiny_task):
    objective = _objective("fold", backend, tiny_task)
    objective.train_scores([MANUAL_PROMPT], tiny_task.train)
    before = backend.stats.calls
    objective.eval_scores(MANUAL_PROMPT, tiny_task.dev)
    dev_calls = backend.stats.calls - before
    objective._train.clear()  # forgotten: the train answers must be read again
    before = backend.stats.calls
    objective.eval_scores(MANUAL_PROMPT, tiny_task.dev)
    assert backend.stats.calls - before == dev_calls + 1


def test_search_through_the_readout_needs_a_top_k(tiny_task):
    backend = LocalBackend("tiny")
    backend.capabilities = replace(backend.capabilities, topk=0)
    with pytest.raises(ConfigError, match="search_readout labels"):
        _objective("fold", backend, tiny_task)


@pytest.mark.parametrize("variant", ["fixed", "fold"])
def test_a_run_searching_through_the_readout_ends_with_its_readout_and_reproduces(tiny_task, tmp_path, variant):
    config = TuneConfig(mode="soft", budget_calls=20, popsize=10, search_readout=variant, readout_topk=5, seed=0)
    result = Tuner(tiny_task, LocalBackend("tiny"), config, tmp_path / "run", progress=False).run()
    assert result.curve[0]["train_loss"] > 0 and "readout" in result.metrics
    assert result.metrics["manual_test_acc"] is not None
    run = load_run(tmp_path / "run")
    predictions = run.predict_examples(list(tiny_task.test))
    accuracy = float(np.mean([p.label == ex.label for p, ex in zip(predictions, tiny_task.test)]))
    assert accuracy == pytest.approx(result.metrics["test_acc"])
