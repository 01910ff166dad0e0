"""A boosted ensemble of text prompts (SAMME over (prompt, readout) pairs)."""
from __future__ import annotations

import doctest

import numpy as np

from bbtune.search.readouts import boosting
from bbtune.search.readouts.boosting import BoostedReadout, boost
from bbtune.search.answers import Answers


def _answers(probs) -> Answers:
    return Answers(np.log(np.asarray(probs, dtype=float)))


def test_the_module_example_runs_as_written():
    assert doctest.testmod(boosting).failed == 0


def test_prompts_wrong_on_different_examples_vote_each_other_right():
    y = np.array([0, 0, 1, 1, 0, 1])
    pool = [_answers([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]),  # wrong on 2
            _answers([[0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9], [0.9, 0.1], [0.4, 0.6]]),  # wrong on 1
            _answers([[0.4, 0.6], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8], [0.7, 0.3], [0.2, 0.8]])]  # wrong on 0
    alone = [float(np.mean(a.labels.argmax(axis=1) == y)) for a in pool]
    ensemble = boost(pool, y, rounds=3, kinds=("raw",))
    assert max(alone) < 1.0 and float(np.mean(ensemble.predict(pool) == y)) == 1.0
    assert ensemble.prompts == (0, 1, 2)  # three prompts read: three calls per input


def test_a_perfect_first_learner_ends_boosting_with_one_member():
    y = np.array([0, 1, 0, 1])
    perfect = _answers([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    ensemble = boost([perfect, _answers([[0.5, 0.5]] * 4)], y, rounds=5, kinds=("raw",))
    assert len(ensemble.members) == 1 and ensemble.prompts == (0,)


def test_no_learner_better_than_chance_falls_back_to_the_first_prompt_calibrated():
    y = np.array([0, 1, 0, 1])
    useless = _answers([[0.9, 0.1]] * 4)  # always class 0: half wrong, chance for two classes
    ensemble = boost([useless], y, rounds=3, kinds=("raw",))
    assert len(ensemble.members) == 1 and ensemble.members[0].readout.kind.value == "bias"


def test_an_ensemble_round_trips_through_json():
    y = np.array([0, 0, 1, 1])
    pool = [_answers([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6]]),
            _answers([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9]])]
    ensemble = boost(pool, y, rounds=3)
    again = BoostedReadout.from_json(ensemble.as_json())
    assert np.allclose(again.log_scores(pool), ensemble.log_scores(pool))
