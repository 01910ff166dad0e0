"""The docs site builds (`mkdocs build --strict`), and every code block of every page, README.md included, runs
or is checked exactly as written. The rule, by the block's language:

- ``python``: run, block after block of one page in one namespace, in an empty folder, with the environment
  variable ``BBTUNE_MODEL=tiny``. The pages read their model from it (``os.environ.get("BBTUNE_MODEL",
  "smollm2")``: a reader gets the real model), so the code is the reader's, only faster.
- ``bash``: every command is checked, not run (its commands name the reader's data folders, servers and
  clusters, and take minutes): a ``bbtune`` command must parse with the CLI's own parser (the command exists,
  every flag exists, every value converts and is one of its choices); ``python -m mock_server`` with the mock's
  parser; ``python FILE`` names a file of the repository; ``make TARGET`` a Makefile target; ``pip install`` only
  extras that pyproject.toml declares. Any other command fails this test until a rule is added here.
- ``console``: a terminal session: lines starting with ``$ `` (and their continuation lines) are commands, checked
  by the ``bash`` rules, which also take the programs a declared extra or a Makefile target installs (``mlflow``,
  ``tensorboard``, ``.venv-vllm/bin/python -m vllm...``); other lines are output, shown.
- ``toml``: parsed; a sweep spec (a ``[grid]`` table) must expand into jobs. ``json`` and ``jsonl``: parsed.
- ``text``: shown, not run (output). A fence without a language fails.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```(\S*)\n(.*?)^```", re.S | re.M)
LANGUAGES = {"python", "bash", "console", "toml", "json", "jsonl", "text"}
INSTALLED_TOOLS = {"mlflow": "mlflow", "tensorboard": "tensorboard"}  # program -> the extra that installs it
VLLM = [".venv-vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]  # what `make vllm-install` installs


def blocks(page: Path, language: str | None = None) -> list[str]:
    return [code for lang, code in FENCE.findall(page.read_text()) if language is None or lang == language]


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for page in ("index.html", "guide/tuning-locally/index.html", "benchmarks/index.html", "benchmarks/matrix/index.html",
                 "reference/api/index.html"):
        assert (tmp_path / "site" / page).exists(), page
    assert "budget_calls" in (tmp_path / "site" / "reference/api/index.html").read_text()


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_fence_names_a_language_this_test_knows(page):
    unknown = {lang or "(none)" for lang, _ in FENCE.findall(page.read_text())} - LANGUAGES
    assert not unknown, f"{name(page)}: fences in {sorted(unknown)}; use one of {sorted(LANGUAGES)}"


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=name)
def test_python_blocks_run_as_written(page, tmp_path, monkeypatch):
    monkeypatch.setenv("BBTUNE_MODEL", "tiny")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(blocks(page, "python")):
        exec(compile(code, f"{name(page)} python block {i + 1}", "exec"), namespace)


def commands(code: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, ``VAR=value`` prefixes skipped."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


def console_commands(code: str) -> list[list[str]]:
    """The commands of a terminal session: ``$ `` lines with their continuation lines; the rest is output."""
    lines, keep = [], False
    for line in code.splitlines():
        if line.startswith("$ ") or keep:
            lines.append(line[2:] if line.startswith("$ ") else line)
            keep = line.endswith("\\")
    return commands("\n".join(lines))


def check_command(words: list[str]) -> None:
    from bbtune.app.cli import build_parser

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    if words[0] in INSTALLED_TOOLS:
        assert INSTALLED_TOOLS[words[0]] in extras, f"{words[0]} is installed by no extra"
    elif words[:3] == VLLM:
        assert "vllm-install:" in (ROOT / "Makefile").read_text(), "no make vllm-install target installs vLLM"
    elif words[0] == "bbtune":
        build_parser().parse_args(words[1:])
    elif words[:3] == ["python", "-m", "mock_server"]:
        from mock_server.__main__ import build_parser as mock_parser

        mock_parser().parse_args(words[3:])
    elif words[0] == "python" and len(words) > 1 and words[1].endswith(".py"):
        assert (ROOT / words[1]).is_file(), f"{words[1]} is not a file of the repository"
    elif words[0] == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
        assert set(words[1:]) <= targets, f"make targets {set(words[1:]) - targets} are not in the Makefile"
    elif words[:2] == ["pip", "install"]:
        for word in words[2:]:
            named = re.search(r"\[([\w,-]+)\]", word)
            assert named is None or set(named.group(1).split(",")) <= extras, f"{word}: no such extra"
    else:
        raise AssertionError(f"no rule for the command {' '.join(words)!r}: add one to tests/docs/test_docs.py")


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "bash") + blocks(p, "console")], ids=name)
def test_shell_commands_parse(page, capsys):
    for words in [*(w for code in blocks(page, "bash") for w in commands(code)),
                  *(w for code in blocks(page, "console") for w in console_commands(code))]:
        try:
            check_command(words)
        except SystemExit as stop:  # argparse's way of refusing (and of ending after --help: code 0)
            if stop.code:
                pytest.fail(f"{name(page)}: `{' '.join(words)}` is refused: {capsys.readouterr().err.strip()}")


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "toml") + blocks(p, "json") + blocks(p, "jsonl")],
                         ids=name)
def test_data_blocks_parse(page):
    from bbtune.app.sweepspec import SweepSpec

    for code in blocks(page, "toml"):
        data = tomllib.loads(code)
        if "grid" in data:
            assert SweepSpec.from_dict(data).jobs
    for code in blocks(page, "json"):
        json.loads(code)
    for code in blocks(page, "jsonl"):
        for line in code.splitlines():
            json.loads(line)


def test_the_guide_names_no_work_items():
    pattern = re.compile(r"issue (?:[0-9]+|#)|lent to this\s+task", re.I)
    for page in PAGES:
        assert not pattern.search(page.read_text()), name(page)
