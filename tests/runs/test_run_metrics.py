"""A run's result is typed (`RunMetrics`), written as versioned JSON and read back whole by `load_run`, also from a
run folder written before the type existed (a plain dict without ``schema_version``, with keys this version does not
know)."""
from __future__ import annotations

import json

import pytest

from bbtune.backends.accounting import RemoteStats
from bbtune.backends.base import CallStats
from bbtune.backends.wire import ProbeReport
from bbtune.errors import CheckpointError
from bbtune.runs.endings import Ending
from bbtune.runs.folder import RunFolder
from bbtune.runs.load import load_run
from bbtune.runs.metrics import SCHEMA_VERSION, AnswerScores, ReadoutSummary, RunMetrics, SplitScores
from bbtune.runs.tuner import TuneConfig, run_tuner
from bbtune.search.selection import Decision

SMALL = dict(prompt_tokens=3, intrinsic_dim=20, popsize=6, eval_every=12, p0="vocab", budget_calls=12)


def _every_part() -> RunMetrics:
    decision = Decision(replace=True, dev_acc_margin=0.25, dev_loss_margin=0.1, wins=3, losses=1, p_value=0.31,
                        loss_p_value=0.2, reason="tuned wins", loss_worse_p_value=0.9)
    return RunMetrics(
        mode="hard", seed=7, calls=30, eval_calls=9, generations=5, converged=True, stop_reasons={"tolfun": 1e-11},
        wall_s=1.5, initial_train_loss=0.7, best_train_loss=0.4, p0="cue", dev_acc=0.75, test_acc=0.8,
        label_bias={"negative": 0.1, "positive": -0.1}, task_kind="generate", answer_metric="f1", skipped=["x"],
        readout=ReadoutSummary("logistic", 20, "best out of fold", {"raw": 0.5, "logistic": 0.7}),
        answer_scores=AnswerScores("f1", SplitScores(0.1, 0.2), SplitScores(0.3, None), "tuned", "a prompt"),
        backend_stats=RemoteStats(calls=30, labels_scored=10, labels_missing=1, missing_rate=0.1, requests=40,
                                  errors={"429": 2}, endpoints={"http://h/v1": 40}),
        probe=ProbeReport(mode="topk", top_k=20, batch_size=8, checks=["echo refused"]), decision=decision,
        stopped_by="request limit reached", ending=Ending.LIMIT, config_fingerprint="abc")


def test_every_part_round_trips_through_json_text():
    metrics = _every_part()
    text = json.dumps(metrics.to_json())
    again = RunMetrics.from_json(json.loads(text))
    assert again == metrics
    assert isinstance(again.backend_stats, RemoteStats) and isinstance(again.decision, Decision)
    assert again.ending is Ending.LIMIT and again.missing_rate == 0.1


def test_the_file_keeps_its_keys_and_says_its_version():
    saved = _every_part().to_json()
    assert saved["schema_version"] == SCHEMA_VERSION and next(iter(saved)) == "schema_version"
    assert saved["missing_rate"] == 0.1 and saved["ending"] == "limit" and saved["decision"]["wins"] == 3
    assert saved["backend_stats"]["requests"] == 40 and saved["readout"]["k"] == 20
    assert "tuned_test_acc" not in saved and saved["discretized_prompt"] is None  # unset fields: absent, as before
    plain = RunMetrics().to_json()
    assert "requests" not in plain["backend_stats"] and "decision" not in plain and "probe" not in plain


def test_a_run_writes_what_it_returns_and_load_run_reads_it_back(tiny_task, tiny_backend, tmp_path):
    result = run_tuner(tiny_task, tiny_backend, TuneConfig(**SMALL), tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["schema_version"] == SCHEMA_VERSION and saved["config_fingerprint"]
    run = load_run(tmp_path / "run")
    assert run.metrics == result.metrics and isinstance(run.metrics.backend_stats, CallStats)
    assert run.decision == result.metrics.decision and run.prompt_text == result.metrics.hard_prompt
    assert run.metrics.test_acc is not None and run.metrics["test_acc"] == run.metrics.test_acc  # the file's view


OLD_METRICS = {  # as the tuner wrote it before RunMetrics: no schema_version, no ending; plus keys never known
    "mode": "hard", "seed": 3, "calls": 12, "eval_calls": 4, "generations": 2, "converged": False,
    "stop_reasons": {}, "wall_s": 0.8, "initial_train_loss": 0.69, "best_train_loss": 0.6, "selected": "manual",
    "select_rule": "dev_acc", "p0": "vocab", "prompt_tokens_used": 0, "dev_acc": 0.5, "dev_loss": 0.69,
    "tuned_dev_acc": 0.5, "hard_prompt": "", "hard_round_trip_ok": True, "discretized_prompt": None,
    "hard_scale": 2.0, "hard_change_at_sigma0": 0.4, "backend": "local:tiny",
    "label_bias": {"negative": 0.25, "positive": -0.25}, "manual_dev_acc": 0.5, "manual_dev_loss": 0.7,
    "test_acc": 0.5, "test_loss": 0.7, "test_n": 4, "manual_test_acc": 0.5, "gain_over_manual": 0.0,
    "backend_stats": {"calls": 12, "examples_scored": 96, "missing_rate": 0.0, "a_counter_from_later": 5},
    "missing_rate": 0.0,
    "decision": {"replace": False, "dev_acc_margin": 0.0, "dev_loss_margin": 0.0, "wins": 0, "losses": 0,
                 "p_value": 1.0, "loss_p_value": 1.0, "reason": "within noise", "a_new_test": 0.5},
    "stopped_by": "request limit reached",
    "a_key_from_another_version": {"nested": [1, 2]},
}


def _old_folder(path):
    folder = RunFolder(path)
    path.mkdir()
    folder.write_json("config.json", {"task": {"template": "{text} It was{label}", "placement": "suffix",
                                               "verbalizer": {"negative": " terrible", "positive": " great"}},
                                      "backend": "local:tiny"})
    folder.write_json("hard_prompt.json", {"text": "", "token_ids": [], "tokens": []})
    folder.write_json("metrics.json", OLD_METRICS)
    return folder


def test_a_run_folder_written_before_the_typed_result_loads(tmp_path, tiny_backend):
    folder = _old_folder(tmp_path / "old")
    run = load_run(folder.path, tiny_backend)
    m = run.metrics
    assert m.kept_manual and m.test_acc == 0.5 and m.backend == "local:tiny"
    assert m.ending is Ending.LIMIT  # derived as the tuner did: it was stopped by a limit
    assert m.decision is not None and m.decision.reason == "within noise" and m.decision.loss_worse_p_value == 1.0
    assert m.backend_stats == CallStats(calls=12, examples_scored=96)
    assert m.extra == {"a_key_from_another_version": {"nested": [1, 2]}}  # kept, and written back as it was
    assert m.to_json()["a_key_from_another_version"] == {"nested": [1, 2]}
    assert list(run.label_bias) == [0.25, -0.25]
    assert run.predict(["a great film"])[0].label in ("negative", "positive")
    assert folder.finished_ending() is None  # a limit: resumable, not finished


def test_an_old_file_without_a_limit_ended_by_budget_or_convergence():
    base = {k: v for k, v in OLD_METRICS.items() if k != "stopped_by"}
    assert RunMetrics.from_json(base).ending is Ending.BUDGET
    assert RunMetrics.from_json({**base, "converged": True}).ending is Ending.CONVERGED
    assert RunMetrics.from_json({**base, "ending": "flat"}).ending is Ending.FLAT  # a recorded ending is kept


def test_a_file_from_a_newer_bbtune_is_refused_with_what_to_do():
    with pytest.raises(CheckpointError, match="upgrade bbtune"):
        RunMetrics.from_json({"schema_version": SCHEMA_VERSION + 1})


def test_the_library_names_fields_and_the_cli_shows_them_as_flags(tiny_task, tiny_backend):
    from bbtune.app.flags import flag_words
    from bbtune.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        run_tuner(tiny_task.with_placement("prefix"), tiny_backend, TuneConfig(**{**SMALL, "p0": "cue"}), progress=False)
    assert "p0=cue" in str(err.value) and "placement=suffix" in str(err.value) and "--" not in str(err.value)
    assert "--p0=cue" in flag_words(str(err.value)) and "--placement=suffix" in flag_words(str(err.value))
    with pytest.raises(ConfigError) as err:
        TuneConfig(fluency=0.1)
    assert flag_words(str(err.value)).startswith("--fluency=0.1: ") and "--mode=hard" in flag_words(str(err.value))
