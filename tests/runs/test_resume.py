"""--resume checks the whole saved config, takes only the flags that cannot change the result, and every run
ends with a line that says why (and an exit code that says whether the result is usable)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bbtune.backends.base import Backend, Capabilities
from bbtune.app.cli import main
from bbtune.app.exits import budget_rounding, ending_line, exit_code
from bbtune.runs.endings import Ending, ending_of
from bbtune.runs.metrics import RunMetrics
from bbtune.runs.tuner import TuneConfig, run_tuner
from mock_server import FaultConfig, FaultRule, MockServer, ServerConfig, shared_scorer

RUN = ["--data", "demo", "--k", "4", "--test-limit", "8", "--model", "tiny", "--prompt-tokens", "3",
       "--intrinsic-dim", "20", "--popsize", "6", "--eval-every", "12", "--budget-calls", "12", "--no-progress"]


@pytest.fixture
def finished(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["tune", *RUN, "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()
    return run_dir


@pytest.fixture
def unfinished(finished):
    (finished / "metrics.json").unlink()  # killed before its end (a finished run has nothing to resume)
    return finished


def _edit_config(run_dir, edit) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    edit(config)
    (run_dir / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("edit, named", [
    (lambda c: c["cli"]["task"].update(data_seed=14), ["cli.task.data_seed: 13 -> 14", "task.data_sha256"]),
    (lambda c: c["cli"]["task"].update(template="{text} So it was{label}"), ["task.template", "cli.task.template"]),
])
def test_resume_refuses_an_edited_config_naming_the_field(unfinished, capsys, edit, named):
    _edit_config(unfinished, edit)
    assert main(["tune", "--resume", str(unfinished), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "another config" in err and all(name in err for name in named)


def test_resume_applies_limits_and_refuses_what_changes_the_result(unfinished, capsys):
    assert main(["tune", "--resume", str(unfinished), "--seed", "7", "--no-calibrate", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "refused: --calibrate (would change what the run computes), --seed (" in err
    assert main(["tune", "--resume", str(unfinished), "--remote-max-retries", "9", "--remote-timeout-s", "5",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "applied to the resumed run: --remote-max-retries 6 -> 9" in err and "--remote-timeout-s 60.0 -> 5" in err
    settings = json.loads((unfinished / "config.json").read_text())["settings"]["remote"]
    assert settings["max_retries"] == 9 and settings["timeout_s"] == 5  # the next resume keeps them


class ConstantBackend(Backend):
    """Every prompt scores the same: a search through it learns nothing."""

    def __init__(self, inner):
        self.inner, self.name, self.stats = inner, "constant", inner.stats
        self.capabilities = Capabilities(soft=True, hard=True)

    def score(self, prompts, examples, fmt):
        return np.full((len(prompts), len(examples), len(fmt.labels)), -1.0)

    def vocabulary(self):
        return self.inner.vocabulary()


def test_a_loss_that_never_moved_is_a_flat_ending(tiny_backend, tiny_task):
    cfg = TuneConfig(budget_calls=18, prompt_tokens=3, intrinsic_dim=20, popsize=6, eval_every=6)
    flat = run_tuner(tiny_task, ConstantBackend(tiny_backend), cfg, progress=False)
    assert flat.metrics.ending is Ending.FLAT and exit_code(Ending.FLAT) == 4
    assert "never moved" in ending_line(flat.metrics, 18, 6)
    moved = run_tuner(tiny_task, tiny_backend, cfg, progress=False)
    assert moved.metrics.ending is Ending.BUDGET and exit_code(Ending.BUDGET) == 0


@pytest.mark.parametrize("metrics, ending, words", [
    ({"stopped_by": "request limit reached", "calls": 12}, Ending.LIMIT, "stopped by a limit after 12 of 30 calls"),
    ({"converged": True, "stop_reasons": {"tolfun": 1e-11}, "calls": 18}, Ending.CONVERGED, "converged early after 18"),
    ({"calls": 30}, Ending.BUDGET, "budget spent: 30 calls"),
])
def test_each_ending_says_why(metrics, ending, words):
    curve = [{"train_loss": 1.0}, {"train_loss": 0.5}]
    run = RunMetrics(**metrics)
    assert ending_of(run.stopped_by, run.converged, curve) is ending
    assert words in ending_line(RunMetrics(**metrics, ending=ending), 30, 6)


def test_budget_rounding_is_said():
    assert budget_rounding(30, 6) is None
    assert budget_rounding(32, 6) == "--budget-calls 32 is not a multiple of --popsize 6: the run makes 30 calls (5 generations)"


def test_giving_up_after_retries_names_the_count_and_the_flags(tmp_path, capsys):
    faults = FaultConfig(rules=(FaultRule("429", every=1),), retry_after_s=0)
    with MockServer(ServerConfig(model="tiny", port=0), faults, scorer=shared_scorer("tiny")) as server:
        code = main(["tune", *RUN, "--mode", "hard", "--backend", "remote", "--remote-base-url", server.url,
                     "--remote-local-model", "tiny", "--remote-mode", "echo", "--remote-max-retries", "1",
                     "--no-remote-probe", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == exit_code(Ending.GAVE_UP) == 5
    assert "gave up after 1 retries (--remote-max-retries 1)" in err and f"--resume {tmp_path / 'r'}" in err


def test_an_unfinished_folder_points_to_resume(finished, capsys):
    (finished / "metrics.json").unlink()  # as a killed run leaves it
    assert main(["tune", *RUN, "--run-dir", str(finished)]) == 2
    assert f"an unfinished run; continue it with --resume {finished}" in capsys.readouterr().err


def test_errors_name_flags_not_fields(tmp_path, capsys):
    assert main(["tune", *RUN[:-3], "--budget-calls", "3", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--budget-calls" in err and "--popsize" in err and "budget_calls" not in err
