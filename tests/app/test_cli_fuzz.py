"""Fuzzing the command line: random command lines for tune, compare (with --dry-run: nothing heavy runs), predict
and export end in an exit code or argparse's SystemExit, never a traceback (data files: tests/tasks/test_data_fuzz.py).

Small examples; the `ci` profile (tests/conftest.py) replays the same ones every run, `make fuzz` explores."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from bbtune.app.cli import main
from tests.tasks.test_data_fuzz import ENCODINGS, FUZZ

# ---------------------------------------------------------------- command lines

_small_int = st.integers(-2, 24).map(str)
_word = st.text(alphabet=st.sampled_from("ab {}=,:-_.0123\"'é"), max_size=8)
_float = st.sampled_from(["0", "-1", "0.5", "1e-9", "nan", "inf", "2", "x"])
# flag -> values; numbers are small so that a command line that is valid stays a few seconds' work at most
TUNE_FLAGS: dict[str, st.SearchStrategy[str]] = {
    "--k": _small_int, "--data-seed": _small_int, "--template": _word | st.just("{text} It was{label}"),
    "--verbalizer": _word | st.just("negative: terrible, positive: great"), "--placement": _word | st.just("prefix"),
    "--test-limit": _small_int, "--text-field": _word, "--label-field": _word, "--label-names": _word,
    "--encoding": st.sampled_from(ENCODINGS) | _word, "--max-input-tokens": _small_int, "--kv-cache-mb": _small_int,
    "--memory-budget-mb": _small_int, "--optimizer": st.sampled_from(["cma", "random", "x"]), "--popsize": _small_int,
    "--sigma0": _float, "--bound": _float, "--prompt-tokens": _small_int, "--intrinsic-dim": _small_int,
    "--projection": _word, "--alpha": _float, "--p0": st.sampled_from(["zeros", "vocab", "text", "auto", "cue", "x"]),
    "--p0-text": _word, "--mode": st.sampled_from(["soft", "hard", "x"]), "--loss": st.sampled_from(["ce", "hinge", "x"]),
    "--budget-calls": _small_int, "--eval-every": _small_int, "--seed": _small_int, "--vocab-filter": _word,
    "--hard-change": _float, "--fluency": _float, "--select": _word, "--backend": st.sampled_from(["local", "remote", "x"]),
    "--remote-mode": st.sampled_from(["top_logprobs", "chat", "echo", "prompt_embeds", "x"]),
    "--remote-local-model": st.sampled_from(["", "tiny"]), "--remote-top-k": _small_int,
    "--remote-batch-size": _small_int, "--remote-base-url": st.sampled_from(["http://127.0.0.1:9/v1", "ftp://x", ""]),
    "--remote-max-missing": _float, "--remote-logit-bias": st.sampled_from(["auto", "off", "5", "500", "x"]),
    "--remote-price-prompt-per-mtok": _float, "--remote-replica-concurrency": _small_int,
    "--remote-extra-headers": _word, "--remote-concurrency": _small_int,
}
COMPARE_FLAGS = {**{k: v for k, v in TUNE_FLAGS.items() if not k.startswith(("--backend", "--remote"))},
                 "--methods": st.sampled_from(["bbt_hard", "manual", "in_context", "random_search", "x"]), "--seeds": _small_int,
                 "--grad-steps": _small_int, "--shots-per-class": _small_int, "--pt-lr": _float}
BARE = ["--no-early-stop", "--early-stop", "--calibrate", "--no-calibrate", "--keep-manual", "--no-keep-manual"]
_stray = st.sampled_from(["--", "-", "--bogus", "--k=2", "--mode=", "=", "tune", "--remote-api-key"]) | _word


@st.composite
def _argv(draw: Callable[..., Any], flags: dict[str, st.SearchStrategy[str]]) -> list[str]:
    """Random flags with random (often wrong) values, a bare switch or a stray token now and then."""
    names = draw(st.lists(st.sampled_from(sorted(flags)), max_size=6))
    out: list[str] = []
    for name in names:
        out += [name] if draw(st.integers(0, 9)) == 0 else [name, draw(flags[name])]  # a flag without its value too
    out += draw(st.lists(st.sampled_from(BARE), max_size=1)) + draw(st.lists(_stray, max_size=1))
    return out


def _ends_cleanly(argv: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code: Any = main(argv)
        except SystemExit as exit_:  # argparse: an unknown flag, a missing value, a bad choice
            code = exit_.code
    event(f"exit {code}")
    assert isinstance(code, int) and "Traceback" not in err.getvalue(), (argv, err.getvalue())
    if code:
        assert err.getvalue().strip(), f"{argv}: exit {code} without a word"


# the tiny model and the demo data, a small run; the random flags come after and may override any of it
BASE = ["--dry-run", "--model", "tiny", "--data", "demo", "--k", "2", "--test-limit", "8", "--budget-calls", "8",
        "--popsize", "4", "--prompt-tokens", "2", "--intrinsic-dim", "8", "--mode", "hard"]


@FUZZ
@given(more=_argv(TUNE_FLAGS))
@example(more=["--data-seed", "-1"])  # found by this test: numpy's ValueError from a negative seed
@example(more=["--seed", "-1"])
@example(more=["--text-field", ""])  # found by the compare test: a KeyError
@example(more=["--test-limit", "-1"])  # found by a fresh clone's run: numpy's negative dimensions
@example(more=["--popsize", "2"])  # found by the second hostile-input pass: pycma's "too small popsize" in generation 2
def test_random_tune_command_lines_end_in_an_exit_code(more: list[str]) -> None:
    _ends_cleanly(["tune", *BASE, *more])


@FUZZ
@given(more=_argv(COMPARE_FLAGS))
@example(more=["--seeds", "-1"])
def test_random_compare_command_lines_end_in_an_exit_code(more: list[str]) -> None:
    _ends_cleanly(["compare", *BASE, "--methods", "manual", "bbt_hard", "--seeds", "1", *more])


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished tiny run, an empty folder, a file, a missing path, and a few input files."""
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["tune", *BASE[1:], "--eval-every", "8", "--no-progress", "--run-dir", str(run)]) == 0
    (root / "empty").mkdir()
    (root / "file").write_text("not a run")
    (root / "in.jsonl").write_text('{"text": "a fine film", "label": "positive"}\n{"text": "dull"}\n')
    (root / "bad.csv").write_bytes(b'text,label\n"unclosed,\xff\n')
    return {"run": run, "empty": root / "empty", "file": root / "file", "missing": root / "missing",
            "in.jsonl": root / "in.jsonl", "bad.csv": root / "bad.csv", "out": root / "out"}


_place = st.sampled_from(["run", "empty", "file", "missing"])
_input = st.sampled_from(["in.jsonl", "bad.csv", "missing", "empty"])


@FUZZ
@given(run=_place, source=_input, more=_argv({
    "--output": st.sampled_from(["out", "missing", "empty"]), "--text-field": _word, "--text-b-field": _word,
    "--label-field": _word, "--label-names": _word, "--encoding": st.sampled_from(ENCODINGS) | _word,
    "--max-input-tokens": _small_int, "--backend": st.sampled_from(["run", "x"]), "--model": st.sampled_from(["", "tiny"]),
}), overwrite=st.booleans())
def test_random_predict_command_lines_end_in_an_exit_code(folders: dict[str, Path], run: str, source: str,
                                                          more: list[str], overwrite: bool) -> None:
    # names of `folders` become their paths (outputs land in the fixture's folder, never in the working tree)
    more = [str(folders[x] / "sub") if x == "missing" and i and more[i - 1] == "--output" else
            str(folders[x]) if x in folders else x for i, x in enumerate(more)]
    _ends_cleanly(["predict", str(folders[run]), "--input", str(folders[source]), "--no-progress", *more,
                   *(["--overwrite"] if overwrite else [])])


@FUZZ
@given(run=_place, fmt=st.sampled_from(["text", "json", "peft", "x", ""]),
       out=st.sampled_from(["", "out", "missing", "empty", "file"]), overwrite=st.booleans(), stray=st.lists(_stray, max_size=1))
def test_random_export_command_lines_end_in_an_exit_code(folders: dict[str, Path], run: str, fmt: str, out: str,
                                                         overwrite: bool, stray: list[str]) -> None:
    where = ["--out", str(folders[out] / "x.txt" if out == "out" else folders[out])] if out else []
    if not where and run == "run":  # the default (RUN_DIR/peft) would grow the shared run folder: write apart
        where = ["--out", str(folders["out"] / "default")]
    _ends_cleanly(["export", str(folders[run]), "--format", fmt, *where, *(["--overwrite"] if overwrite else []),
                   *stray])
