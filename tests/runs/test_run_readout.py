"""A run's readout: chosen out of fold, used for its test numbers, saved beside the prompt, used by predict."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bbtune.backends.local import LocalBackend
from bbtune.errors import ConfigError
from bbtune.runs.load import load_run
from bbtune.runs.manual import manual_readout
from bbtune.runs.metrics import ReadoutSummary, RunMetrics
from bbtune.runs.tuner import TuneConfig, Tuner
from bbtune.search.selection import Decision


def _accuracy(run, task) -> float:
    predictions = run.predict_examples(list(task.test))
    return float(np.mean([p.label == ex.label for p, ex in zip(predictions, task.test)]))


@pytest.mark.parametrize("readout", ["logistic", "auto"])
def test_predict_from_the_run_folder_reproduces_the_runs_test_accuracy_with_its_readout(tiny_task, tmp_path, readout):
    config = TuneConfig(mode="soft", budget_calls=20, popsize=10, readout=readout, readout_topk=5, seed=0)
    result = Tuner(tiny_task, LocalBackend("tiny"), config, tmp_path / "run", progress=False).run()
    saved = json.loads((tmp_path / "run" / "readout.json").read_text())
    assert saved["readout"]["kind"] == result.metrics["readout"]["kind"]
    if readout == "logistic":  # it reads the top-5 and, below it, the tokens listed on the pool (up to 95)
        assert saved["k"] == 5 and saved["readout"]["kind"] == "logistic" and 5 < len(saved["lift"]) <= 95
        assert result.metrics["readout"]["lifted"] == len(saved["lift"])
    run = load_run(tmp_path / "run")
    assert run.readout is not None
    assert _accuracy(run, tiny_task) == pytest.approx(result.metrics["test_acc"])
    assert "test_acc_without_readout" in result.metrics


def test_readout_off_keeps_the_label_bias_and_writes_no_readout(tiny_task, tmp_path):
    config = TuneConfig(mode="soft", budget_calls=20, popsize=10, readout="off", seed=0)
    result = Tuner(tiny_task, LocalBackend("tiny"), config, tmp_path / "run", progress=False).run()
    assert result.readout is None and not (tmp_path / "run" / "readout.json").exists()
    assert "readout" not in result.metrics and "test_acc_without_readout" not in result.metrics
    assert _accuracy(load_run(tmp_path / "run"), tiny_task) == pytest.approx(result.metrics["test_acc"])


def test_the_readout_choice_and_its_evidence_are_in_the_metrics(tiny_task):
    result = Tuner(tiny_task, LocalBackend("tiny"), TuneConfig(budget_calls=20, popsize=10, seed=0),
                   progress=False).run()
    readout = result.metrics["readout"]
    assert readout["kind"] in readout["out_of_fold"] and readout["reason"]
    assert set(readout["out_of_fold"]) == {"raw", "bias", "affine", "verbalizer", "logistic", "residual", "knn"}
    assert result.metrics.readout.held_out_accuracy == readout["out_of_fold"][readout["kind"]] > 0
    assert result.readout is not None and result.readout.k in (0, 20)


def test_the_manual_prompt_competes_raw_where_calibration_loses_out_of_fold(tiny_task):
    """The manual prompt's candidate is raw or calibrated, chosen out of fold on train, never always calibrated."""
    tuner = Tuner(tiny_task, LocalBackend("tiny"), TuneConfig(budget_calls=20, popsize=10, seed=0), progress=False)
    tuner._setup()
    y = tiny_task.format.label_ids(tiny_task.train)
    perfect = np.where(np.eye(2)[y] > 0, -0.1, -3.0)  # the raw label words already right: a bias only adds noise
    assert manual_readout(perfect, np.zeros(2), y, 0) == "raw"
    leaning = np.stack([2.0 + np.where(y == 0, 1.0, -1.0), np.zeros(len(y))], axis=1)  # raw always says label 0
    assert manual_readout(leaning, np.array([-1.0, 1.0]), y, 0) == "bias"  # a bias separates them
    assert manual_readout(perfect, None, y, 0) == "raw"


@pytest.mark.parametrize("field, value, message", [("readout", "best", "readout must be one of"),
                                                   ("readout_topk", 0, "readout_topk must be >= 1"),
                                                   ("readout_lift", -1, "readout_lift must be >= 0")])
def test_bad_readout_settings_are_refused_by_name(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TuneConfig(**{field: value})


def test_export_writes_the_readout_beside_a_peft_adapter_and_says_it_cannot_carry_it(tmp_path, capsys):
    from bbtune.app.cli import main

    run = ["--data", "demo", "--k", "4", "--test-limit", "4", "--model", "tiny", "--prompt-tokens", "2",
           "--intrinsic-dim", "8", "--popsize", "4", "--budget-calls", "8", "--eval-every", "8", "--no-progress",
           "--readout", "logistic", "--readout-topk", "5", "--guard", "none", "--no-keep-manual"]
    assert main(["tune", *run, "--run-dir", str(tmp_path / "run")]) == 0
    assert main(["export", str(tmp_path / "run"), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    out = capsys.readouterr().out
    assert "carries the prompt only, not the run's readout (logistic" in out
    saved = json.loads((tmp_path / "peft" / "bbtune_readout.json").read_text())
    assert saved["readout"]["kind"] == "logistic" and saved["k"] == 5
    assert main(["export", str(tmp_path / "run"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["readout"]["readout"]["kind"] == "logistic"


def test_the_cli_lines_say_which_readout_and_how_the_manual_prompt_competed():
    from bbtune.app.summary import decision_line, readout_line

    assert readout_line(RunMetrics()) is None
    line = readout_line(RunMetrics(readout=ReadoutSummary("logistic", 20, "logistic: 70% out of fold")))
    assert line == "readout: logistic of the top-20, chosen out of fold on train + dev: logistic: 70% out of fold"
    decision = Decision(replace=False, dev_acc_margin=0.0, wins=0, losses=0, p_value=1.0, dev_loss_margin=0.0,
                        loss_p_value=1.0, reason="r")
    assert "returned the manual prompt;" in decision_line(RunMetrics(decision=decision, manual_readout="raw"))
    assert "returned the calibrated manual prompt;" in decision_line(RunMetrics(decision=decision,
                                                                                manual_readout="bias"))
