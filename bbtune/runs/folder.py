"""The one writer of a run folder, so tune, resume, compare and the CLI all read the same layout.

    run_dir/
      config.json          resolved config (+ what the CLI needs to rebuild task and backend)
      curve.csv            learning curve: calls, train loss, dev accuracy, ...
      best_prompt.safetensors   z and the soft prompt (n x hidden)
      hard_prompt.json     text, token ids, tokens, round-trip check
      metrics.json         final numbers
      checkpoint.pkl       optimizer + run state after the last finished generation (and the resolved config);
                           read back with an allow-list of types (`safepickle`), so it cannot run code
      ledger.jsonl         every paid request, booked (fsynced) before it is sent (remote backends)
      replies/             server replies by request, so a resumed run pays nothing twice
      .lock                held (flock) by the one process writing the folder; holds its pid

Every file is written to a temp file, fsynced, then renamed, so a run killed at any instant leaves either the
old or the new version, never half a file. The results (prompt files, curve, metrics) are written only when
the run ends, metrics.json last: a folder with metrics.json is finished, and its files came from the config
named by the fingerprint they carry. A folder holding another run is never reused without ``--overwrite``.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from bbtune.core import secrets
from bbtune.errors import CheckpointError, OutputExistsError, RunFolderError
from bbtune.runs import safepickle
from bbtune.runs.endings import Ending
from bbtune.runs.metrics import RunMetrics

CHECKPOINT = "checkpoint.pkl"
CONFIG = "config.json"
METRICS = "metrics.json"
LEDGER = "ledger.jsonl"
REPLIES = "replies"
LOCK = ".lock"
CURVE = "curve.csv"
BEST_PROMPT = "best_prompt.safetensors"
HARD_PROMPT = "hard_prompt.json"
CALIBRATION = "calibration.json"
READOUT = "readout.json"  # the returned prompt's readout (`bbtune.search.readouts.fitted.RunReadout`), plain numbers
RUN_FILES = (CONFIG, CHECKPOINT, LEDGER, REPLIES, CURVE, BEST_PROMPT, HARD_PROMPT, METRICS, CALIBRATION, READOUT)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """A text file (report, notes) written atomically, with every secret redacted (`bbtune.core.secrets`)."""
    atomic_write(path, secrets.redact(text).encode("utf-8"))


def refuse_overwrite(paths: Iterable[str | Path], overwrite: bool) -> None:
    """Outputs (predictions, reports, exports) never replace existing files unless the user said overwrite=True."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(existing)} already exists; replace it with overwrite=True, or write "
                                "elsewhere")


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def fingerprint(obj: Any) -> str:
    """sha256 of `obj` as canonical JSON: equal configs, equal fingerprints."""
    blob = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def changed_fields(saved: Any, now: Any, where: str = "") -> list[str]:
    """Dotted names of the fields that differ, with both values: ``task.template: 'a' -> 'b'``."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [change for key in sorted(set(saved) | set(now), key=str)
                for change in changed_fields(saved.get(key), now.get(key), f"{where}.{key}" if where else str(key))]
    if to_jsonable(saved) == to_jsonable(now):
        return []
    return [f"{where or 'config'}: {_short(saved)} -> {_short(now)}"]


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's exclusive lock while a run writes it; a second writer fails at once, naming the
        holder. flock dies with its process, so a killed run never leaves a stale lock."""
        self.check_is_folder()
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / LOCK).open("a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise RunFolderError(f"{self.path} is being written by another bbtune run (pid {holder}); wait for it "
                                     "to end, or use another run_dir") from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                f.truncate(0)

    def claim(self, overwrite: bool) -> None:
        """Make sure a new run may write here: the folder is new or empty, or `overwrite` clears the old run."""
        kind = self.holds()
        if kind is None:
            return
        if not overwrite:
            what, fix = {"finished": ("a finished run", "replace it with overwrite=True, or use another run_dir"),
                         "unfinished": ("an unfinished run", f"continue it with run_dir={self.path}, resume=True, "
                                                             "replace it with overwrite=True, or use another run_dir"),
                         "foreign": ("files that are not a bbtune run", "use another run_dir (overwrite=True "
                                                                       "writes beside them)")}[kind]
            raise RunFolderError(f"{self.path} already holds {what}; {fix}")
        self.clear()

    def clear(self) -> None:
        """Remove the run's files (its lock and any file that is not bbtune's stay)."""
        for name in RUN_FILES:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)

    def check_is_folder(self, name: str = "run_dir") -> None:
        """A run folder path that names a file (or lies under one) is refused before anything is written."""
        for path in (self.path, *self.path.parents):
            if path.exists() and not path.is_dir():
                raise RunFolderError(f"{self.path} is not a folder ({path} is a file); give {name} a folder path")

    def finished_ending(self) -> str | None:
        """The ending recorded in metrics.json of a finished run (None: not finished). A run stopped by a
        ``--remote-max-*`` limit is not finished: raising the limit and resuming continues it."""
        if not (self.path / METRICS).is_file():
            return None
        ending = RunMetrics.from_json(self.read_json(METRICS)).ending
        return None if ending is Ending.LIMIT else ending.value

    def refuse_finished(self) -> None:
        """Resuming a finished run has nothing left to do (and must not pay for its test scores again)."""
        ending = self.finished_ending()
        if ending is not None:
            raise RunFolderError(f"{self.path} holds a finished run (ending: {ending}); nothing to resume, nothing was "
                                 f"sent. Use it (load_run({str(self.path)!r}) predicts and exports), or start over with "
                                 "overwrite=True or another run_dir")

    def holds(self) -> str | None:
        """What the folder holds: None (nothing), 'finished', 'unfinished' (a run that can resume) or 'foreign'."""
        if not self.path.exists():
            return None
        names = {p.name for p in self.path.iterdir()} - {LOCK}
        if not names:
            return None
        if METRICS in names:
            return "finished"
        return "unfinished" if names & {CONFIG, CHECKPOINT, LEDGER} else "foreign"

    def write_json(self, name: str, obj: Any) -> None:
        text = json.dumps(secrets.redact_json(to_jsonable(obj)), indent=2, ensure_ascii=False)
        atomic_write(self.path / name, (text + "\n").encode())

    def read_json(self, name: str) -> Any:
        file = self.path / name
        if not file.exists():
            raise CheckpointError(f"{file} is missing; is {self.path} a bbtune run folder?")
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{file} is damaged (not valid JSON: {err}); {self._damaged_fix(name)}") from None

    def _damaged_fix(self, name: str) -> str:
        if name == METRICS:
            return (f"the run's result cannot be read: run it again (delete {name}, then run_dir={self.path}, "
                    "resume=True; or a new run with overwrite=True)")
        return "the folder cannot be resumed or used; start the run again with overwrite=True (or another run_dir)"

    def write_curve(self, rows: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(to_jsonable(rows))
        atomic_write(self.path / CURVE, buf.getvalue().encode())

    def read_curve(self) -> list[dict[str, str]]:
        with (self.path / CURVE).open() as f:
            return list(csv.DictReader(f))

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        atomic_write(self.path / name, save({k: v.detach().contiguous().cpu().float() for k, v in tensors.items()}))

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.path / name)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write(self.path / CHECKPOINT, safepickle.dumps(state))

    def load_checkpoint(self) -> dict[str, Any]:
        file = self.path / CHECKPOINT
        if not file.exists():
            raise CheckpointError(f"no {CHECKPOINT} in {self.path}: not a run that can resume (is it a bbtune run "
                              "folder?); start a new run in another run_dir")
        restart = (f"delete it to restart the run from its start with run_dir={self.path}, resume=True, or start "
                   "over with overwrite=True")
        try:
            state = safepickle.loads(file.read_bytes())
        except safepickle.Refused as err:
            raise CheckpointError(f"{file} was not read: {err}; {restart}") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError, TypeError,
                KeyError) as err:
            raise CheckpointError(f"{file} is damaged and cannot be read ({type(err).__name__}: {err}); "
                                  f"{restart}") from None
        if not isinstance(state, dict) or "state" not in state:
            raise CheckpointError(f"{file} is not a bbtune checkpoint; {restart}")
        return state
