"""The library names what a Python user sets; the CLI shows the same messages in flags through `flag_words`. Each
case raises (or builds) a real library message, from every package that refuses input."""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path
from typing import Callable

import httpx
import pytest

from bbtune import RemoteConfig, TaskConfig, load_run
from bbtune.app.flags import flag_words
from bbtune.backends.http import CONTEXT_FIX, KeyInfo, status_error
from bbtune.backends.modes.text import unparsed_message
from bbtune.errors import BBTuneError
from bbtune.runs.folder import RunFolder, refuse_overwrite
from bbtune.search.objective import skipped_for_generation
from bbtune.tasks.answers import AnswerRules
from bbtune.tasks.data import FieldMap
from bbtune.tasks.format import no_verbalizer_message


SERVER_FLAGS = ("--max-model-len", "--max-logprobs", "--enable-prompt-embeds")  # vLLM's, quoted as vLLM spells them


def _raised(call: Callable[[], object]) -> str:
    with pytest.raises(BBTuneError) as err:
        call()
    return str(err.value)


def _unfinished(tmp: Path) -> Path:
    (tmp / "run").mkdir()
    (tmp / "run" / "config.json").write_text(json.dumps({}))
    return tmp / "run"


def _file(tmp: Path) -> Path:
    (tmp / "file").write_text("")
    return tmp / "file"


def _credentials() -> str:
    request = httpx.Request("POST", "http://ann:pw@h:1/v1/completions")
    reply = httpx.Response(401, json={"error": {"message": "bad credentials"}}, request=request)
    return str(status_error(reply, "http://h:1/v1", "/completions", "m", KeyInfo("BBTUNE_API_KEY", "sk-0123456789ab")))


CASES: dict[str, tuple[Callable[[Path], str], list[str]]] = {
    # tasks
    "encoding": (lambda tmp: _raised(lambda: TaskConfig(encoding="utf-9")), ["--encoding='utf-9'"]),
    "label_names": (lambda tmp: _raised(lambda: TaskConfig(label_names="{0: x")), ["--label-names is not valid"]),
    "text_field": (lambda tmp: _raised(lambda: FieldMap(text="")), ["--text-field is empty"]),
    "row_fields": (lambda tmp: _raised(lambda: FieldMap().examples([{"x": 1}], "d.csv")),
                   ["--text-field, --text-b-field, --label-field"]),
    "verbalizer": (lambda tmp: no_verbalizer_message(("a",)), ["drop --verbalizer,"]),
    "synonyms": (lambda tmp: _raised(lambda: AnswerRules({"pos": ("!",)})), ["--remote-answer-synonyms LABEL=WORD"]),
    # backends
    "logit_bias": (lambda tmp: _raised(lambda: RemoteConfig(logit_bias="x")), ["--remote-logit-bias must be"]),
    "base_url": (lambda tmp: _credentials(), ["in --remote-base-url,"]),
    "context": (lambda tmp: CONTEXT_FIX, ["--remote-max-tokens only", "lower --prompt-tokens"]),
    "unparsed": (lambda tmp: unparsed_message(0.5, 4, ["meh"], AnswerRules({"pos": ("good",)}),
                                              RemoteConfig(mode="text")),
                 ["--remote-max-unparsed 0.", "--remote-answer-synonyms LABEL=word", "--remote-answer-endpoint chat"]),
    # runs
    "overwrite": (lambda tmp: _raised(lambda: refuse_overwrite([_file(tmp)], False)), ["replace it with --overwrite,"]),
    "run_dir": (lambda tmp: _raised(lambda: RunFolder(_file(tmp) / "run").check_is_folder()), ["give --run-dir a"]),
    "resume": (lambda tmp: _raised(lambda: RunFolder(_unfinished(tmp)).claim(False)),
               ["continue it with --resume {tmp}/run, replace it with --overwrite, or use another --run-dir"]),
    "load_run": (lambda tmp: _raised(lambda: load_run(_unfinished(tmp))), ["finish it with --resume {tmp}/run"]),
    # search
    "generation": (lambda tmp: "; ".join(skipped_for_generation(True, "hinge")),
                   ["label calibration (--calibrate)", "--loss=hinge:", "set by --answer-scoring"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_library_messages_name_fields_and_the_cli_shows_flags(case: str, tmp_path: Path) -> None:
    make, flags = CASES[case]
    message = make(tmp_path)
    assert "--" not in re.sub("|".join(SERVER_FLAGS), "", message), message
    for words in flags:
        assert words.format(tmp=tmp_path) in flag_words(message), flag_words(message)


def test_tune_arguments_map_to_their_flags() -> None:
    """`tune()`'s own arguments are no config field: ``resume=True`` is --resume with the folder as its value."""
    said = "continue with run_dir=/r 1, resume=True, or overwrite=True in another run_dir; or resume=True"
    assert flag_words(said) == "continue with --resume /r 1, or --overwrite in another --run-dir; or --resume RUN_DIR"
    assert flag_words("Use it (load_run('/r') predicts and exports)") == \
        "Use it (`bbtune predict /r --input FILE`, `bbtune export /r`)"
    assert flag_words("TaskConfig.verbalizer, TuneConfig.mode=hard, LocalConfig.model") == "--verbalizer, --mode=hard, --model"


def test_the_cli_logs_library_notes_in_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from bbtune.app.cli import _flag_words_logging

    with _flag_words_logging():
        logging.getLogger("bbtune").warning("bbtune: %s", "average more answers (RemoteConfig.answer_samples)")
    assert "bbtune: average more answers (--remote-answer-samples)" in capsys.readouterr().err


def test_field_help_names_fields_and_the_parser_shows_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """A field's help is also the Python docs (`tune`'s options), so it names fields; ``bbtune tune -h`` shows flags."""
    from bbtune import LocalConfig, TuneConfig
    from bbtune.app.cli import main

    for cls in (TaskConfig, LocalConfig, TuneConfig, RemoteConfig):
        assert not [f.name for f in dataclasses.fields(cls) if "--" in f.metadata.get("help", "")], cls
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "wins by --select" in shown and "higher at --guard-alpha" in shown and "text (--p0-text)" in shown
