"""load_run / predict / export read the folder tune wrote and reproduce its test numbers."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

import bbtune
from bbtune.app.cli import main
from bbtune.errors import CheckpointError, ConfigError
from bbtune.app.export import ADAPTER_CONFIG, export
from bbtune.runs.tuner import TuneConfig, run_tuner


def _run(tmp_path_factory, task, backend, mode: str):
    folder = tmp_path_factory.mktemp(f"run-{mode}")
    cfg = TuneConfig(mode=mode, budget_calls=20, popsize=5, intrinsic_dim=8, prompt_tokens=3, eval_every=10,
                     keep_manual=False)
    return run_tuner(task, backend, cfg, folder, progress=False)


@pytest.fixture(scope="module")
def hard_run(tmp_path_factory, tiny_task, tiny_backend):
    return _run(tmp_path_factory, tiny_task, tiny_backend, "hard")


@pytest.fixture(scope="module")
def soft_run(tmp_path_factory, tiny_task, tiny_backend):
    return _run(tmp_path_factory, tiny_task, tiny_backend, "soft")


@pytest.mark.parametrize("which", ["hard_run", "soft_run"])
def test_predict_reproduces_the_runs_test_numbers(request, which, tiny_task):
    result = request.getfixturevalue(which)
    run = bbtune.load_run(result.run_dir)  # its own backend, rebuilt from config.json
    assert run.label_bias is not None  # the run calibrates; predict must apply the same bias
    preds = run.predict([ex.text for ex in tiny_task.test])
    acc = sum(p.label == ex.label for p, ex in zip(preds, tiny_task.test)) / len(tiny_task.test)
    assert acc == result.metrics["test_acc"]
    ce = -sum(math.log(p.probs[ex.label]) for p, ex in zip(preds, tiny_task.test)) / len(tiny_task.test)
    assert ce == pytest.approx(result.metrics["test_loss"], abs=1e-6)


def test_predict_uses_the_label_bias(hard_run, tiny_task, tiny_backend):
    run = bbtune.load_run(hard_run.run_dir, backend=tiny_backend)
    run.readout = None  # a run written before readouts: its label scores plus label_bias
    biased = run.predict([ex.text for ex in tiny_task.test])
    run.label_bias = None
    raw = run.predict([ex.text for ex in tiny_task.test])
    assert [p.scores for p in biased] != [p.scores for p in raw]


def test_text_export_puts_the_prompt_where_it_was_tuned(hard_run, tmp_path):
    text = export(hard_run.run_dir, "text", tmp_path / "template.txt")
    prompt = hard_run.metrics["hard_prompt"]
    assert text == "{text}" + prompt + " It was{label}"  # suffix placement: after the input, before the cue
    assert (tmp_path / "template.txt").read_text().strip() == text
    data = json.loads(export(hard_run.run_dir, "json"))
    assert data["prompt"] == prompt and data["template"] == text and set(data["label_bias"]) == {"negative", "positive"}


def test_peft_export_of_a_soft_run(soft_run, tmp_path):
    export(soft_run.run_dir, "peft", tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())["num_virtual_tokens"] == 3


def test_clear_errors(hard_run, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        bbtune.load_run(tmp_path / "nope")
    with pytest.raises(ConfigError, match="unknown export format 'onnx'.*peft, text, json"):
        export(hard_run.run_dir, "onnx")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((hard_run.run_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="not finished.*resume=True"):
        bbtune.load_run(unfinished)
    assert main(["export", str(unfinished), "--format", "text"]) == 2


def test_predict_command_writes_jsonl(hard_run, tiny_task, tmp_path, capsys):
    inputs = tmp_path / "in.tsv"
    inputs.write_text("sentence\tgold\n" + "".join(f"{ex.text}\t{ex.label}\n" for ex in tiny_task.test))
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(hard_run.run_dir), "--input", str(inputs), "--output", str(out), "--text-field",
                 "sentence", "--label-field", "gold", "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == [ex.text for ex in tiny_task.test]
    assert all(r["label"] in ("negative", "positive") and sum(r["probs"].values()) == pytest.approx(1) for r in rows)
    assert f"accuracy {hard_run.metrics['test_acc']:.4f}" in capsys.readouterr().err


def test_python_dash_m_bbtune():
    done = subprocess.run([sys.executable, "-m", "bbtune", "export", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--format" in done.stdout


def test_predict_through_another_backend_a_server(hard_run, tiny_task, tiny_backend, tmp_path):
    from mock_server import MockServer, ServerConfig, shared_scorer

    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"text": ex.text}) + "\n" for ex in tiny_task.test))
    out = tmp_path / "out.jsonl"
    server = MockServer(ServerConfig(model="tiny", port=0, max_logprobs=400), scorer=shared_scorer("tiny")).start()
    try:
        assert main(["predict", str(hard_run.run_dir), "--input", str(inputs), "--output", str(out), "--no-progress",
                     "--backend", "remote", "--remote-base-url", server.url, "--remote-local-model", "tiny",
                     "--remote-top-k", "400", "--remote-mode", "echo"]) == 0
        served = server.stats()["requests"]
    finally:
        server.stop()
    assert served > 0
    remote = [json.loads(line) for line in out.read_text().splitlines()]
    local = bbtune.load_run(hard_run.run_dir, backend=tiny_backend).predict([ex.text for ex in tiny_task.test])
    assert [r["label"] for r in remote] == [p.label for p in local]
    for r, p in zip(remote, local):
        assert r["probs"] == pytest.approx(p.probs, abs=1e-3)
