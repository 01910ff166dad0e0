"""The CLI and the run folder under hostile input. Every case ends in one line that names the problem and
the fix (no traceback), with the exit code the guide lists (docs/guide/durable-runs.md), and nothing is leaked,
overwritten or silently changed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bbtune.app.cli import main
from bbtune.backends.base import Backend
from bbtune.errors import CheckpointError
from bbtune.runs.folder import RunFolder
from bbtune.runs.tuner import TuneConfig, run_tuner
from bbtune.tasks import demo_data_dir

RUN = ["--k", "4", "--test-limit", "8", "--model", "tiny", "--prompt-tokens", "2", "--intrinsic-dim", "8",
       "--popsize", "4", "--budget-calls", "8", "--eval-every", "8", "--no-progress"]
SECRET = "sk-" + "fake-hardening-test"  # key-shaped on purpose (a natural guess at the flag), never a real one


def _one_line_error(capsys, needle: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and needle in err, err
    line = [x for x in err.splitlines() if x.startswith("bbtune: error:")]
    assert len(line) == 1, err
    return line[0]


def _data(folder: Path, rows: list | None = None, test: bool = True, raw: str | None = None) -> Path:
    """A data folder: the demo's rows (or `rows`, or the `raw` text) as train.jsonl, the demo's test file."""
    folder.mkdir(parents=True, exist_ok=True)
    demo = demo_data_dir()
    rows = rows if rows is not None else [json.loads(x) for x in (demo / "train.jsonl").read_text().splitlines()]
    (folder / "train.jsonl").write_text(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows))
    if test:
        shutil.copy(demo / "test.jsonl", folder / "test.jsonl")
    return folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(["tune", "--data", "demo", *RUN, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture
def run_copy(finished, tmp_path):
    """A copy of the finished run this test may damage."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


@pytest.fixture
def unfinished(run_copy):
    (run_copy / "metrics.json").unlink()  # as if killed just before the end
    return run_copy


# ---------------------------------------------------------------- 1. a mistyped key flag leaks nowhere

def test_a_prefix_of_a_flag_is_refused_and_its_value_is_never_echoed(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--data", "demo", *RUN, "--remote-api-key", SECRET, "--run-dir", str(tmp_path / "x")])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert "unrecognized arguments: --remote-api-key" in err
    assert SECRET not in out + err
    assert not any(SECRET.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(SystemExit):  # sub-parsers too, and --flag=value
        main(["predict", str(tmp_path), "--input", "x.jsonl", f"--remote-api-key={SECRET}"])
    assert SECRET not in "".join(capsys.readouterr())


# ---------------------------------------------------------------- 2. damaged files: one line, not a traceback

def test_a_corrupt_config_json_on_resume(unfinished, capsys):
    (unfinished / "config.json").write_text('{"cli": {')
    assert main(["tune", "--resume", str(unfinished), "--no-progress"]) == 2
    assert "--overwrite" in _one_line_error(capsys, "config.json is damaged")


def test_a_truncated_checkpoint_on_resume(unfinished, capsys):
    data = (unfinished / "checkpoint.pkl").read_bytes()
    (unfinished / "checkpoint.pkl").write_bytes(data[: len(data) // 2])
    assert main(["tune", "--resume", str(unfinished), "--no-progress"]) == 2
    assert "--resume" in _one_line_error(capsys, "checkpoint.pkl is damaged")
    (unfinished / "checkpoint.pkl").unlink()  # as the error advises: the run starts again from its config
    assert main(["tune", "--resume", str(unfinished), "--no-progress"]) == 0
    assert (unfinished / "metrics.json").exists()


def test_a_run_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("not a folder")
    assert main(["tune", "--data", "demo", *RUN, "--run-dir", str(tmp_path / "f")]) == 2
    _one_line_error(capsys, "is not a folder")


def test_a_json_array_as_jsonl_in_tune_and_predict(finished, tmp_path, capsys):
    rows = [{"text": "a fine film", "label": "positive"}, {"text": "a bad film", "label": "negative"}]
    data = _data(tmp_path / "d", raw=json.dumps(rows))
    assert main(["tune", "--data", str(data), *RUN, "--run-dir", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, "line 1 is a JSON array, not an object")
    assert main(["predict", str(finished), "--input", str(data / "train.jsonl"), "--no-progress"]) == 2
    _one_line_error(capsys, "line 1 is a JSON array, not an object")


def test_predict_and_export_on_a_corrupt_metrics_json(run_copy, tmp_path, capsys):
    (run_copy / "metrics.json").write_text("{")
    assert main(["predict", str(run_copy), "--input", str(demo_data_dir() / "test.jsonl"), "--no-progress"]) == 2
    _one_line_error(capsys, "metrics.json is damaged")
    assert main(["export", str(run_copy), "--format", "json"]) == 2
    _one_line_error(capsys, "metrics.json is damaged")


def test_predict_output_into_a_missing_folder(finished, tmp_path, capsys):
    out = tmp_path / "nowhere" / "p.jsonl"
    assert main(["predict", str(finished), "--input", str(demo_data_dir() / "test.jsonl"), "--output", str(out),
                 "--no-progress"]) == 2
    _one_line_error(capsys, "does not exist")


def test_a_failed_first_checkpoint_is_one_line_and_the_folder_resumes(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "r"
    real = RunFolder.save_checkpoint

    def disk_full(self, state):
        raise OSError(28, "No space left on device", str(self.path / "checkpoint.pkl"))

    monkeypatch.setattr(RunFolder, "save_checkpoint", disk_full)
    assert main(["tune", "--data", "demo", *RUN, "--run-dir", str(run_dir)]) == 2
    _one_line_error(capsys, "No space left on device")
    monkeypatch.setattr(RunFolder, "save_checkpoint", real)
    assert main(["tune", "--data", "demo", *RUN, "--run-dir", str(run_dir)]) == 2  # a new run points to --resume
    assert "--resume" in _one_line_error(capsys, "unfinished run")
    assert main(["tune", "--resume", str(run_dir), "--no-progress"]) == 0  # ... which works
    assert (run_dir / "metrics.json").exists()


# ---------------------------------------------------------------- 3. advice that works

@pytest.mark.parametrize("mode, placement", [("soft", "suffix"), ("hard", "suffix"), ("soft", "prefix")])
def test_max_input_tokens_truncates_a_long_input(tmp_path, capsys, mode, placement):
    rows = [json.loads(x) for x in (demo_data_dir() / "train.jsonl").read_text().splitlines()]
    rows[0]["text"] = "good film " * 15000  # 30,000 tokens
    data = _data(tmp_path / "d", rows, test=False)
    args = ["tune", "--data", str(data), "--k", "24", *RUN[2:], "--mode", mode, "--placement", placement]
    assert main([*args, "--run-dir", str(tmp_path / "a")]) == 2
    assert "--max-input-tokens" in _one_line_error(capsys, "overflows the model's context")
    assert main([*args, "--max-input-tokens", "200", "--run-dir", str(tmp_path / "b")]) == 0


def test_predict_takes_the_flags_its_errors_advise(finished, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_bytes(('{"text": "' + "caf\xe9 " * 400 + '"}\n').encode("latin-1"))
    predict = ["predict", str(finished), "--input", str(tmp_path / "in.jsonl"), "--no-progress"]
    assert main(predict) == 2
    assert "--encoding" in _one_line_error(capsys, "not valid utf-8")
    assert main([*predict, "--encoding", "latin-1"]) == 2
    assert "--max-input-tokens" in _one_line_error(capsys, "overflows the model's context")
    assert main([*predict, "--encoding", "latin-1", "--max-input-tokens", "100"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("negative", "positive")


def test_an_unknown_label_names_the_file_and_the_row(tmp_path, capsys):
    rows = [json.loads(x) for x in (demo_data_dir() / "train.jsonl").read_text().splitlines()]
    rows[6]["label"] = "neutral"
    data = _data(tmp_path / "d", rows)
    assert main(["tune", "--data", str(data), *RUN, "--run-dir", str(tmp_path / "r")]) == 2
    line = _one_line_error(capsys, "row 7 has label 'neutral'")
    assert str(data / "train.jsonl") in line


def test_an_edited_data_file_under_a_run_is_said(tmp_path, capsys):
    data = _data(tmp_path / "d")
    run_dir = tmp_path / "r"
    assert main(["tune", "--data", str(data), *RUN, "--run-dir", str(run_dir)]) == 0
    (run_dir / "metrics.json").unlink()
    rows = [json.loads(x) for x in (data / "test.jsonl").read_text().splitlines()]
    for row in rows:
        row["text"] += " (edited)"
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["tune", "--resume", str(run_dir), "--no-progress"]) == 2
    line = _one_line_error(capsys, "the data files changed since the run started")
    assert "config.json must not be edited" not in line


# ---------------------------------------------------------------- 4. nothing silent

def test_duplicate_examples_are_warned_with_their_count(tmp_path, capsys):
    rows = [json.loads(x) for x in (demo_data_dir() / "train.jsonl").read_text().splitlines()]
    data = _data(tmp_path / "d", rows + rows)  # every text twice: train and dev share texts
    assert main(["tune", "--data", str(data), *RUN, "--run-dir", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "bbtune: warning:" in err and "dev examples have the same text as a training example" in err


@pytest.mark.parametrize("value, said", [(None, "is null"), (42, "is a int"), (["a", "b"], "is a list")])
def test_a_text_that_is_not_a_string_names_its_row(tmp_path, capsys, value, said):
    rows = [json.loads(x) for x in (demo_data_dir() / "train.jsonl").read_text().splitlines()]
    rows[4]["text"] = value
    data = _data(tmp_path / "d", rows)
    assert main(["tune", "--data", str(data), *RUN, "--run-dir", str(tmp_path / "r")]) == 2
    line = _one_line_error(capsys, f"row 5: field 'text' {said}")
    assert str(data / "train.jsonl") in line


def test_outputs_are_not_overwritten_without_overwrite(finished, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"text": "a fine film"}) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text("mine\n")
    predict = ["predict", str(finished), "--input", str(inp), "--no-progress"]
    assert main([*predict, "--output", str(out)]) == 2
    _one_line_error(capsys, "already exists")
    assert out.read_text() == "mine\n"
    assert main([*predict, "--output", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["text"] == "a fine film"
    assert main([*predict, "--output", str(inp), "--overwrite"]) == 2  # never the input itself
    _one_line_error(capsys, "is the --input file")
    export_dir = tmp_path / "peft"
    export_dir.mkdir()
    (export_dir / "adapter_config.json").write_text("mine")
    assert main(["export", str(finished), "--format", "peft", "--out", str(export_dir)]) == 2
    _one_line_error(capsys, "already exists")
    assert (export_dir / "adapter_config.json").read_text() == "mine"
    report = tmp_path / "rep"
    report.mkdir()
    (report / "report.md").write_text("mine")
    assert main(["compare", "--data", "demo", *RUN[:-1], "--methods", "manual", "--seeds", "1",
                 "--out", str(report)]) == 2
    _one_line_error(capsys, "already exists")
    assert (report / "report.md").read_text() == "mine"


def test_resuming_a_finished_run_sends_nothing_and_keeps_its_metrics(run_copy, capsys, monkeypatch):
    from bbtune.backends.factory import LocalConfig

    def no_model(self):
        raise AssertionError("a finished run must not load a model, nor send a request")

    monkeypatch.setattr(LocalConfig, "build", no_model)
    before = (run_copy / "metrics.json").read_bytes(), (run_copy / "metrics.json").stat().st_mtime_ns
    assert main(["tune", "--resume", str(run_copy), "--no-progress"]) == 2
    line = _one_line_error(capsys, "holds a finished run (ending: budget); nothing to resume")
    assert f"`bbtune predict {run_copy} --input FILE`" in line and "--overwrite or another --run-dir" in line
    assert before == ((run_copy / "metrics.json").read_bytes(), (run_copy / "metrics.json").stat().st_mtime_ns)


class _Booked(Backend):
    """The tiny backend as a paid one: it books in a ledger and counts requests, as the remote backend does."""

    def __init__(self, inner):
        from bbtune.backends.accounting import RemoteStats

        self.inner, self.name, self.capabilities, self.stats = inner, inner.name, inner.capabilities, RemoteStats()

    def vocabulary(self):
        return self.inner.vocabulary()

    def score(self, prompts, examples, fmt):
        self.stats.requests += 1
        return self.inner.score(prompts, examples, fmt)

    def keep_books(self, ledger: Path, replies: Path, resume: bool) -> None:
        ledger.touch()


def test_a_deleted_ledger_does_not_reset_a_request_limit(tmp_path, tiny_task, tiny_backend):
    cfg = TuneConfig(budget_calls=8, popsize=4, intrinsic_dim=8, prompt_tokens=2, eval_every=8)
    run_tuner(tiny_task, _Booked(tiny_backend), cfg, tmp_path / "r", progress=False)
    (tmp_path / "r" / "metrics.json").unlink()
    (tmp_path / "r" / "ledger.jsonl").unlink()
    with pytest.raises(CheckpointError, match="ledger.jsonl is missing but the checkpoint says .* requests were sent"):
        run_tuner(tiny_task, _Booked(tiny_backend), cfg, tmp_path / "r", progress=False, resume=True)


def test_a_remote_context_overflow_names_the_servers_limit_not_a_flag(tmp_path, capsys):
    """The server's 'max_tokens is 1' is its request field (bbtune asks one token), not --remote-max-tokens."""
    from mock_server import FaultConfig, MockServer, ServerConfig, shared_scorer

    rows = [json.loads(x) for x in (demo_data_dir() / "train.jsonl").read_text().splitlines()]
    for row in rows:
        row["text"] += " word" * 300  # past the tiny model's context of 256
    data = _data(tmp_path / "data", rows)
    with MockServer(ServerConfig(model="tiny", port=0), FaultConfig(), scorer=shared_scorer("tiny")) as server:
        code = main(["tune", *RUN, "--data", str(data), "--mode", "hard", "--backend", "remote", "--remote-base-url",
                     server.url, "--remote-local-model", "tiny", "--remote-mode", "echo", "--remote-max-retries", "0",
                     "--run-dir", str(tmp_path / "r")])
    line = _one_line_error(capsys, "maximum context length is 256")
    assert code == 2
    assert "max_tokens is 1" in line and "--remote-max-tokens is" not in line  # the server's words, as it said them
    assert "the server's limit" in line and "--prompt-tokens" in line and "--max-model-len" in line


def test_flag_words_rename_fields_but_keep_a_servers_words():
    from bbtune.app.cli import flag_words

    said = "http://h/v1/completions: HTTP 400 (bad max_tokens (got 5) and top_k=3); max_tokens=1 too small"
    assert flag_words(said) == ("http://h/v1/completions: HTTP 400 (bad max_tokens (got 5) and top_k=3); "
                                "--remote-max-tokens=1 too small")
    assert flag_words("model 'x' gone (HTTP 404: no max_tokens)") == "model 'x' gone (HTTP 404: no max_tokens)"
