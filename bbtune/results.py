"""The one writer of a run folder, so tune, resume, compare and the CLI all read the same layout.

    run_dir/
      config.json          resolved config (+ what the CLI needs to rebuild task and backend)
      curve.csv            learning curve: calls, train loss, dev accuracy, ...
      best_prompt.safetensors   z and the soft prompt (n x hidden)
      hard_prompt.json     text, token ids, tokens, round-trip check
      metrics.json         final numbers
      checkpoint.pkl       optimizer + run state after the last finished generation

Every file is written to a temp file, fsynced, then renamed, so a run killed at any instant leaves either the
old or the new version, never half a file.
"""
from __future__ import annotations

import csv
import io
import json
import os
import pickle
import tempfile
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

CHECKPOINT = "checkpoint.pkl"


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


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write(self.path / name, (json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False) + "\n").encode())

    def read_json(self, name: str) -> Any:
        file = self.path / name
        if not file.exists():
            raise CheckpointError(f"{file} is missing; is {self.path} a bbtune run folder?")
        return json.loads(file.read_text())

    def write_curve(self, rows: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(to_jsonable(rows))
        atomic_write(self.path / "curve.csv", buf.getvalue().encode())

    def read_curve(self) -> list[dict[str, str]]:
        with (self.path / "curve.csv").open() as f:
            return list(csv.DictReader(f))

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        atomic_write(self.path / name, save({k: v.detach().contiguous().cpu().float() for k, v in tensors.items()}))

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.path / name)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write(self.path / CHECKPOINT, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

    def load_checkpoint(self) -> dict[str, Any]:
        file = self.path / CHECKPOINT
        if not file.exists():
            raise CheckpointError(f"no {CHECKPOINT} in {self.path}: the run never finished a generation; start it again")
        with file.open("rb") as f:
            return pickle.load(f)
