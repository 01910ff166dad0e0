"""One secrets policy for every writer and printer. Whatever way a key or header value comes in (the
environment, a flag, a header, a key file read with its newline, the wrong flag, a flag before the subcommand),
`grep` for it over every file written and everything printed finds nothing, and a key that cannot be sent is
refused up front in one line that does not show it."""
from __future__ import annotations

from pathlib import Path

import pytest

from bbtune.app.cli import main
from bbtune.app.sweep import run_sweep
from bbtune.app.sweepspec import SweepSpec
from bbtune.backends.remote import RemoteConfig
from bbtune.core import secrets
from bbtune.errors import ConfigError

# canaries: one key-shaped, one not (found only because bbtune was told it is a secret)
KEY = "sk-" + "canary36keyvalue0123"
ORG = "org-" + "canary36plainvalue"
RUN = ["--data", "demo", "--k", "2", "--test-limit", "4", "--model", "tiny", "--prompt-tokens", "2",
       "--intrinsic-dim", "8", "--popsize", "4", "--budget-calls", "4", "--eval-every", "4", "--no-progress"]


def _leaks(root: Path, *texts: str) -> list[str]:
    """Every file under `root` and every captured text that holds a canary (by its distinctive part)."""
    needles = [c.split("-", 1)[1].encode() for c in (KEY, ORG)]
    found = [str(p) for p in root.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]
    return found + [t for t in texts if any(n.decode() in t for n in needles)]


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("bbtune: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def server():
    from mock_server import MockServer, ServerConfig, shared_scorer

    with MockServer(ServerConfig(model="tiny", port=0), scorer=shared_scorer("tiny")) as srv:
        yield srv


def _remote(server) -> list[str]:
    return ["--backend", "remote", "--remote-base-url", server.url, "--remote-local-model", "tiny",
            "--remote-mode", "echo", "--remote-max-retries", "0", "--mode", "hard"]


@pytest.mark.parametrize("bad", ["\n", "\r", "\u00e9"], ids=["newline", "carriage-return", "non-ascii"])
def test_a_key_that_cannot_be_sent_is_refused_up_front_unseen(server, tmp_path, capsys, monkeypatch, bad):
    monkeypatch.setenv("BBTUNE_API_KEY", KEY + bad)
    code = main(["tune", *RUN, *_remote(server), "--run-dir", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 2, err
    line = _one_line(err)
    assert "$BBTUNE_API_KEY" in line and "not shown" in line
    assert server.stats()["requests"] == 0  # refused before any request, never retried as a network fault
    assert not _leaks(tmp_path, out, err)


def test_a_key_given_where_the_variable_name_goes_is_refused_unseen(tmp_path, capsys):
    assert main(["tune", *RUN, "--backend", "remote", "--remote-api-key-env", KEY, "--run-dir",
                 str(tmp_path / "run")]) == 2
    out, err = capsys.readouterr()
    assert "--remote-api-key-env takes the name of an environment variable" in _one_line(err)
    assert not _leaks(tmp_path, out, err)
    with pytest.raises(ConfigError, match="not shown") as info:
        RemoteConfig(api_key_env=KEY)
    assert KEY not in str(info.value)


@pytest.mark.parametrize("argv", [["--remote-api-key", KEY, "tune"], [f"--remote-api-key={KEY}", "tune"],
                                  ["--remote-extra-headers", f"X-Org: {ORG}", "tune"]],
                         ids=["flag-then-value", "flag=value", "header"])
def test_a_flag_before_the_subcommand_never_echoes_its_value(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2 and "bbtune: error:" in err
    assert not _leaks(Path("/nonexistent"), out, err)


def test_an_unquoted_header_is_refused_without_its_value(tmp_path, capsys):
    """The shell splits `Authorization: Bearer sk-...` into three values; the third is not 'Name: value'."""
    assert main(["tune", *RUN, "--backend", "remote", "--remote-extra-headers", "Authorization:", "Bearer", KEY,
                 "--run-dir", str(tmp_path / "run")]) == 2
    out, err = capsys.readouterr()
    assert "not 'Name: value'" in _one_line(err)
    assert not _leaks(tmp_path, out, err)


def test_a_run_with_a_key_and_headers_writes_and_prints_neither(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BBTUNE_API_KEY", KEY)
    run_dir = tmp_path / "run"
    assert main(["tune", *RUN, *_remote(server), "--remote-extra-headers", f"X-Org: {ORG}",
                 f"Authorization: Bearer {KEY}", "--run-dir", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert (run_dir / "config.json").exists()
    assert not _leaks(tmp_path, out, err)


def test_a_sweep_writes_no_header_value_even_when_its_job_fails(server, tmp_path, capsys, monkeypatch):
    """spec.json and job.json keep header names; a key that cannot be sent (read with its newline) fails its job
    in one line, and sweep.json, results.json, report.md and errors.json hold neither value."""
    monkeypatch.setenv("BBT36_BAD_KEY", KEY + "\r")
    out = tmp_path / "out"
    remote = {"name": "mock", "backend": "remote", "base_url": server.url, "model": "tiny", "local_model": "tiny",
              "mode": "echo", "max_retries": 0}
    models = [{**remote, "name": "ok", "extra_headers": [f"X-Org: {ORG}"]},
              {**remote, "name": "bad", "api_key_env": "BBT36_BAD_KEY"}]
    spec = SweepSpec.from_dict({"sweep": {"out": str(out), "workers": 1, "retries": 0},
                                "grid": {"methods": ["manual"], "seeds": [1], "models": models,
                                         "tasks": [{"name": "demo", "data": "demo", "k": 2, "test_limit": 4}]},
                                "settings": {"budget_calls": 4, "popsize": 4, "intrinsic_dim": 8}}, name="s")
    result = run_sweep(spec, progress=False)
    assert list(result.failed) == ["demo-bad-manual-s1"] and "carriage return" in result.failed["demo-bad-manual-s1"]
    for name in ("spec.json", "sweep.json", "results.json", "report.md"):
        assert (out / name).exists(), name
    assert any(out.rglob("errors.json")) and any(out.rglob("job.json"))
    captured = capsys.readouterr()
    assert not _leaks(out, captured.out, captured.err)


def test_redact_hides_remembered_values_and_key_shapes_but_not_words():
    secrets.remember(ORG)
    text = f"team {ORG}, key {KEY}, Bearer abc.def and model hf-internal-testing/tiny, $OPENAI_API_KEY, results.json"
    assert secrets.redact(text) == ("team ***, key ***, Bearer *** and model hf-internal-testing/tiny, $OPENAI_API_KEY, "
                                    "results.json")
    assert secrets.redact_json({"extra_headers": [f"X-Org: {ORG}"], "n": [1, {"e": KEY}]}) == {
        "extra_headers": ["X-Org: ***"], "n": [1, {"e": "***"}]}
