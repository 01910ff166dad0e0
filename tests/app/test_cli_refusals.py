"""The cases a hostile and a careless user found in a second pass over the CLI. Each ends in one line with the README's
exit code (2 bad input, 3 a limit), or behaves correctly, and each test failed on the code before the fix."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bbtune.app.cli import main
from bbtune.app.sweep import run_sweep
from bbtune.app.sweepspec import SweepSpec
from bbtune.errors import RunFolderError
from bbtune.tasks import demo_data_dir

RUN = ["--data", "demo", "--k", "2", "--test-limit", "4", "--model", "tiny", "--prompt-tokens", "2",
       "--intrinsic-dim", "8", "--popsize", "4", "--budget-calls", "8", "--eval-every", "8", "--no-progress"]


def _one_line(capsys, prefix: str = "bbtune: error:") -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith(prefix)]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("h2") / "run"
    assert main(["tune", *RUN, "--run-dir", str(run_dir)]) == 0
    return run_dir


@pytest.mark.parametrize("where", [[], ["--mode", "hard"], ["--backend", "remote", "--remote-local-model", "tiny"],
                                   ["--backend", "remote", "--remote-local-model", "tiny", "--mode", "hard"]],
                         ids=["soft-local", "hard-local", "soft-remote", "hard-remote"])
def test_a_popsize_too_small_for_cma_es_is_refused_up_front(where, tmp_path, capsys):
    assert main(["tune", *RUN, "--popsize", "2", *where, "--run-dir", str(tmp_path / "r")]) == 2
    line = _one_line(capsys)
    assert "--popsize" in line and ">= 3" in line and "optimizer random" in line
    assert not (tmp_path / "r").exists()


def test_random_search_still_takes_a_population_of_two(tmp_path):
    assert main(["tune", *RUN, "--popsize", "2", "--optimizer", "random", "--run-dir", str(tmp_path / "r")]) == 0


@pytest.mark.parametrize("flags, words", [
    (["--test-limit", "-3"], ["--test-limit must be >= 0"]),
    (["--intrinsic-dim", "100000000"], ["--intrinsic-dim", "too large for CMA-ES", "at most 10000"]),
    (["--intrinsic-dim", "100000000", "--optimizer", "random"], ["--intrinsic-dim", "projection A", "MB"]),
], ids=["negative-test-limit", "huge-dim-cma", "huge-dim-random"])
def test_bad_sizes_are_one_line_errors(flags, words, tmp_path, capsys):
    assert main(["tune", *RUN, *flags, "--run-dir", str(tmp_path / "r")]) == 2
    line = _one_line(capsys)
    assert all(w in line for w in words), line


def test_predict_with_gold_labels_the_run_does_not_know_warns_and_names_label_names(finished, tmp_path, capsys):
    rows = [json.loads(x) for x in (demo_data_dir() / "test.jsonl").read_text().splitlines()[:5]]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"], "label": int(r["label"] == "positive")}) + "\n"
                            for r in rows))
    assert main(["predict", str(finished), "--input", str(data), "--output", str(tmp_path / "p.jsonl"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "accuracy" not in err.replace("no accuracy", ""), err
    assert "bbtune: warning: no accuracy" in err and "--label-names 'negative,positive'" in err
    assert main(["predict", str(finished), "--input", str(data), "--output", str(tmp_path / "q.jsonl"),
                 "--label-names", "negative,positive", "--no-progress"]) == 0
    assert "accuracy " in capsys.readouterr().err  # the hint works


def test_a_run_refused_at_start_up_leaves_no_folder_to_resume(tmp_path, capsys):
    run_dir = tmp_path / "r"
    same_words = ["--verbalizer", '{"negative": " great", "positive": " great"}']
    assert main(["tune", *RUN, *same_words, "--run-dir", str(run_dir)]) == 2
    assert "same verbalizer tokens" in _one_line(capsys)
    assert main(["tune", *RUN, "--run-dir", str(run_dir)]) == 0  # the corrected command, not "unfinished run"


def test_a_limit_reached_during_the_probe_exits_3_and_resumes(tmp_path, capsys):
    from mock_server import MockServer, ServerConfig, shared_scorer

    run_dir = tmp_path / "r"
    with MockServer(ServerConfig(model="tiny", port=0), scorer=shared_scorer("tiny")) as server:
        remote = ["--mode", "hard", "--backend", "remote", "--remote-base-url", server.url, "--remote-local-model",
                  "tiny", "--remote-mode", "echo"]
        assert main(["tune", *RUN, *remote, "--remote-max-requests", "1", "--run-dir", str(run_dir)]) == 3
        line = _one_line(capsys, "bbtune: stopped by a limit")
        assert "--remote-max-requests 1" in line and "--resume" in line
        assert main(["tune", "--resume", str(run_dir), "--remote-max-requests", "0", "--no-progress"]) == 0


def test_an_export_io_error_does_not_advise_resume(finished, tmp_path, capsys, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "out.txt"))

    monkeypatch.setattr("bbtune.app.cli.export", disk_full)
    assert main(["export", str(finished), "--format", "text", "--out", str(tmp_path / "out.txt")]) == 2
    line = _one_line(capsys)
    assert "No space left" in line and "--resume" not in line


def test_a_sweep_whose_out_is_a_file_names_out(tmp_path):
    (tmp_path / "f").write_text("x")
    spec = SweepSpec.from_dict({"sweep": {"out": str(tmp_path / "f")},
                                "grid": {"methods": ["manual"], "seeds": [1], "models": ["tiny"],
                                         "tasks": [{"name": "demo", "data": "demo", "k": 2, "test_limit": 4}]}},
                               name="s")
    with pytest.raises(RunFolderError, match="give --out a folder path"):
        run_sweep(spec, progress=False)


def test_the_peft_placement_warning_is_one_line(finished, tmp_path, capsys):
    assert main(["export", str(finished), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    err = capsys.readouterr().err
    assert "UserWarning" not in err and "warnings.warn" not in err
    assert [x for x in err.splitlines() if x.startswith("bbtune: warning:") and "PEFT prepends" in x], err


def test_a_401_at_start_up_leaves_no_folder_and_the_right_key_runs(tmp_path, capsys, monkeypatch):
    from mock_server import MockServer, ServerConfig, shared_scorer

    run_dir = tmp_path / "r"
    with MockServer(ServerConfig(model="tiny", port=0, api_key="right-key-0123456789"),
                    scorer=shared_scorer("tiny")) as server:
        remote = ["--mode", "hard", "--backend", "remote", "--remote-base-url", server.url, "--remote-local-model",
                  "tiny", "--remote-mode", "echo", "--run-dir", str(run_dir)]
        monkeypatch.setenv("BBTUNE_API_KEY", "wrong-key-0123456789")
        assert main(["tune", *RUN, *remote]) == 2
        assert "rejected" in _one_line(capsys)
        monkeypatch.setenv("BBTUNE_API_KEY", "right-key-0123456789")
        assert main(["tune", *RUN, *remote]) == 0
