"""Demonstrations written into the template: shown before every input, taken out of train, kept by the run folder."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bbtune.backends.local import LocalBackend
from bbtune.errors import TaskError
from bbtune.runs.load import load_run
from bbtune.runs.tuner import TuneConfig, Tuner
from bbtune.tasks import Example, TaskConfig, load_task
from bbtune.tasks.demonstrations import sample_demonstrations


def test_demonstrations_are_written_before_the_input_and_taken_out_of_train(tiny_task):
    task = tiny_task.with_demonstrations(1, seed=3)
    shown = [ex for ex in tiny_task.train if ex not in task.train]
    assert sorted(ex.label for ex in shown) == ["negative", "positive"]
    assert len(task.train) == len(tiny_task.train) - 2 and task.dev == tiny_task.dev and task.test == tiny_task.test
    for ex in shown:
        assert f"{ex.text} It was{tiny_task.format.verbalizer[ex.label]}\n" in task.format.template.pattern
    rendered = task.format.render(Example("a new film", "positive"))
    assert rendered.head.endswith("\na new film") and rendered.cue == " It was"
    assert tiny_task.with_demonstrations(1, seed=3) == task  # seeded
    assert tiny_task.with_demonstrations(0, seed=3) is tiny_task


def test_load_task_takes_demonstrations_from_its_own_split():
    plain, shown = load_task("demo", k=4, test_limit=4), load_task("demo", k=4, test_limit=4, demonstrations=1)
    assert len(shown.train) == len(plain.train) - 2 and shown.dev == plain.dev
    assert set(shown.train) < set(plain.train)
    assert shown.format.template.pattern.endswith(plain.format.template.pattern)


@pytest.mark.parametrize("per_class, message", [(4, "leaves no training example"), (-1, "must be >= 0")])
def test_too_many_or_negative_demonstrations_are_refused_with_the_fix(per_class, message):
    with pytest.raises(TaskError, match=message):
        TaskConfig(data="demo", k=4, demonstrations=per_class).load()


def test_an_example_with_a_brace_is_never_shown(tiny_task):
    """A brace would read as a template slot; such examples stay in train instead of breaking the template."""
    braced = tuple(replace(ex, text=ex.text + " {sic}") if i % 4 else ex for i, ex in enumerate(tiny_task.train))
    task = replace(tiny_task, train=braced).with_demonstrations(1, seed=0)
    assert "{sic}" not in task.format.template.pattern
    assert sum("{sic}" in ex.text for ex in task.train) == sum("{sic}" in ex.text for ex in braced)


def test_sampling_draws_each_label_and_names_the_short_one(tiny_task):
    demos = sample_demonstrations(tiny_task.train, tiny_task.format, 2, seed=1)
    assert sorted(d.label for d in demos) == ["negative"] * 2 + ["positive"] * 2
    with pytest.raises(TaskError, match="label 'negative' has 0"):
        sample_demonstrations(tiny_task.train, tiny_task.format, 1, seed=1, usable=frozenset({0}))


def test_a_run_with_demonstrations_predicts_from_its_folder_as_it_scored(tiny_task, tmp_path):
    """The template with its demonstrations is what the run folder keeps: predict reads them again."""
    task = tiny_task.with_demonstrations(1, seed=0)
    config = TuneConfig(mode="soft", budget_calls=20, popsize=10, readout="auto", readout_topk=5, seed=0)
    result = Tuner(task, LocalBackend("tiny"), config, tmp_path / "run", progress=False).run()
    run = load_run(tmp_path / "run")
    shown = task.format.template.pattern.split("{text}")[0]  # the run may start from the cue: its words move out
    assert shown.count("\n") == 2 and run.format.template.pattern.startswith(shown)
    predictions = run.predict_examples(list(task.test))
    accuracy = float(np.mean([p.label == ex.label for p, ex in zip(predictions, task.test)]))
    assert accuracy == pytest.approx(result.metrics["test_acc"])
