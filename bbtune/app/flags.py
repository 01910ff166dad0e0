"""Config fields as command-line flags, in one place: the flags are generated from the config dataclasses
(``intrinsic_dim`` -> ``--intrinsic-dim``; a `RemoteConfig` field -> ``--remote-*``), and the library's messages,
which name fields, are shown in the flags' words through the same mapping (`flag_words`)."""
from __future__ import annotations

import argparse
import dataclasses
import enum
import re
import typing
from typing import Any

from bbtune.backends.factory import LocalConfig
from bbtune.backends.remote import RemoteConfig
from bbtune.runs.config import TuneConfig
from bbtune.tasks import TaskConfig

CONFIGS = {"task": TaskConfig, "backend": LocalConfig, "tune": TuneConfig}
REMOTE_PREFIX = "remote_"  # remote flags are --remote-*, so --model stays the local model's
# Arguments of `tune()` that are no config field (and `load_run`), as a Python user writes them -> the CLI's words;
# tried in order, so the folder of ``run_dir=X, resume=True`` becomes --resume's own value (the CLI resumes by folder).
OPTION_FLAGS = {
    r"load_run\('(?P<dir>[^']*)'\) predicts and exports":
        r"`bbtune predict \g<dir> --input FILE`, `bbtune export \g<dir>`",
    r"run_dir=(?P<dir>.+?), resume=True": r"--resume \g<dir>",
    r"overwrite=True": "--overwrite",
    r"resume=True": "--resume RUN_DIR",
    r"run_dir": "--run-dir",
}


def flag(dest: str) -> str:
    """``remote_max_retries`` -> ``--remote-max-retries``."""
    return "--" + dest.replace("_", "-")


def field_flags(remote: bool = False) -> dict[str, str]:
    """Every config field's flag: the one mapping the parser and the messages share. A name both configs have
    (``mode``) is the tuning field's unless `remote` (a message that says ``RemoteConfig.mode``)."""
    flags = {f.name: flag(REMOTE_PREFIX + f.name) for f in dataclasses.fields(RemoteConfig)}
    if not remote:
        flags.update({f.name: flag(f.name) for cls in CONFIGS.values() for f in dataclasses.fields(cls)})
    return flags


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, title: str, prefix: str = "") -> None:
    """One flag per field: `--intrinsic-dim`, with the field's help, default and choices."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        name = flag(prefix + f.name)
        help_ = f"{flag_words(f.metadata.get('help', ''))} (default: {_show(f.default)})"  # help names fields
        if kind is bool:
            group.add_argument(name, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            group.add_argument(name, choices=[e.value for e in kind], default=f.default.value, help=help_)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(name, nargs="*", type=typing.get_args(kind)[0], default=list(f.default),  # type: ignore[arg-type]
                               help=help_)
        else:
            group.add_argument(name, type=kind, default=f.default, help=help_)


def from_args(cls: type, ns: argparse.Namespace | dict[str, Any], prefix: str = "") -> Any:
    """The config `cls` from parsed flags (or a saved dict of them)."""
    values = vars(ns) if isinstance(ns, argparse.Namespace) else ns
    return cls(**{f.name: values[prefix + f.name] for f in dataclasses.fields(cls) if prefix + f.name in values})


def class_flags() -> dict[str, dict[str, str]]:
    """Each config class's fields as flags, for a message that names one with its class (``TaskConfig.verbalizer``,
    ``RemoteConfig.mode``): the class makes a one-word name unambiguous."""
    named = {cls.__name__: {f.name: flag(f.name) for f in dataclasses.fields(cls)} for cls in CONFIGS.values()}
    return {**named, RemoteConfig.__name__: field_flags(remote=True)}


def flag_words(message: str) -> str:
    """A library message in the command line's words: the Python API names fields (``max_input_tokens``,
    ``RemoteConfig.timeout_s``, ``TaskConfig.verbalizer``, ``popsize=6``) and `tune()`'s arguments
    (``overwrite=True``, ``run_dir``), the CLI user needs the flags (``--max-input-tokens``, ``--overwrite``). A
    server's own words (``HTTP 400 (...)``) are kept: its ``max_tokens`` is the request's field, not
    --remote-max-tokens."""
    flags, by_class = field_flags(), class_flags()

    def swap(match: re.Match[str]) -> str:
        name, cls = match.group("name"), match.group("cls")
        named = by_class[cls] if cls else flags
        if name not in named or not (cls or match.group("eq") or "_" in name):
            return match.group(0)
        return named[name] + (match.group("eq") or "")

    classes = "|".join(by_class)
    field_name = re.compile(rf"(?<![\w./-])(?:(?P<cls>{classes})\.)?(?P<name>[a-z][a-z0-9_]*)\b(?P<eq>=)?")

    def words(text: str) -> str:
        for python, cli in OPTION_FLAGS.items():
            text = re.sub(rf"(?<![\w./-]){python}(?![\w-])", cli, text)
        return field_name.sub(swap, text)

    out, at = [], 0
    for start, end in _server_words(message):
        out += [words(message[at:start]), message[start:end]]
        at = end
    return "".join(out) + words(message[at:])


def _server_words(message: str) -> list[tuple[int, int]]:
    """Spans of a message quoting a server: from ``HTTP 400 (`` (or ``(HTTP 404: ``) to the matching ``)``."""
    spans: list[tuple[int, int]] = []
    for match in re.finditer(r"HTTP \d{3} \(|\(HTTP \d{3}: ", message):
        depth, i = 1, match.end()
        while i < len(message) and depth:
            depth += {"(": 1, ")": -1}.get(message[i], 0)
            i += 1
        if not spans or match.start() >= spans[-1][1]:
            spans.append((match.end(), i))
    return spans


def _show(value: Any) -> str:
    return repr(value.value if isinstance(value, enum.Enum) else value)
