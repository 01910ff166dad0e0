"""The one record every method returns (`MethodResult`), and how its cost is measured (`Meter`).

Cost is read from the backend's own counters, so a gradient method and BBT are counted the same way:
a *model call* is one prompt scored on one batch of examples; forward and backward passes are the model's
batched passes. `train_calls` is the tuning budget (calls on the training batch, the curve's x-axis);
`calls` is everything the method asked of the backend, dev selection and the final test included.

Peak memory says what it measures (`mem_kind`): on CUDA the allocator's peak (`torch.cuda.max_memory_allocated`);
on CPU the process's peak resident set size during the method (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``), which includes the model weights and Python; where the reset is not possible, the
lifetime peak (``ru_maxrss``), which never goes down between methods.

    >>> # with Meter(backend) as meter: ...; meter.measurement.calls
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bbtune.backends.base import Backend
from bbtune.search.evaluate import evaluate
from bbtune.core.prompts import HardPrompt, Prompt, SoftPrompt
from bbtune.tasks import Task

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Measurement:
    """What one method cost: backend counters over its run, wall time and peak memory."""

    calls: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    wall_s: float = 0.0
    peak_mem_mb: float = 0.0
    mem_kind: str = "none"


@dataclass(frozen=True)
class MethodResult:
    """One method on one seed. `curve` holds (train_calls, best dev accuracy so far) at each dev evaluation."""

    method: str
    seed: int
    placement: str  # where the prompt sat when scored (in-context is always prefix); transfer scores it the same way
    dev_acc: float
    test_acc: float | None
    train_calls: int
    cost: Measurement
    curve: tuple[tuple[int, float], ...] = ()
    prompt_text: str | None = None  # the hard prompt's text; None for soft prompts
    best: Prompt | None = field(default=None, compare=False, repr=False)  # kept for transfer and export
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-ready record (the prompt object itself is left out; its text is kept)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("cost", "best", "curve")}
        out.update(asdict(self.cost))
        out["curve"] = [list(point) for point in self.curve]
        out["prompt_kind"] = _kind(self.best)
        return out


def test_accuracy(backend: Backend, prompt: Prompt, task: Task, label_bias: np.ndarray | None = None) -> float | None:
    """Accuracy of the chosen prompt on the task's test split, calibrated by `label_bias` where given (None when
    the task has no test split)."""
    return evaluate(backend, prompt, task.test, task.format, label_bias=label_bias).accuracy if task.test else None


def _kind(prompt: Prompt | None) -> str | None:
    if isinstance(prompt, SoftPrompt):
        return "soft"
    return "hard" if isinstance(prompt, HardPrompt) else None


class Meter:
    """Context manager measuring one method on one backend (counters, wall time, peak memory)."""

    def __init__(self, backend: Backend, device: str | torch.device | None = None):
        self.backend = backend
        local = backend.local_model()
        self.device = torch.device(device or (local.device if local is not None else "cpu"))
        self.measurement = Measurement()

    def __enter__(self) -> "Meter":
        self._start = _counters(self.backend)
        self._mem_kind = reset_peak_memory(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = _counters(self.backend)
        self.measurement = Measurement(
            calls=end["calls"] - self._start["calls"],
            forward_passes=end["forward_passes"] - self._start["forward_passes"],
            backward_passes=end["backward_passes"] - self._start["backward_passes"],
            wall_s=round(time.perf_counter() - self._t0, 3),
            peak_mem_mb=round(peak_memory_mb(self.device, self._mem_kind), 1),
            mem_kind=self._mem_kind,
        )


def _counters(backend: Backend) -> dict[str, int]:
    stats = backend.stats
    return {k: int(getattr(stats, k, 0)) for k in ("calls", "forward_passes", "backward_passes")}


def reset_peak_memory(device: torch.device) -> str:
    """Start a new peak; returns which kind of peak will be read (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda_max_allocated"
    try:
        _CLEAR_REFS.write_text("5")  # Linux: resets VmHWM to the current RSS
        return "rss_peak"
    except OSError:
        return "rss_peak_lifetime"


def peak_memory_mb(device: torch.device, kind: str) -> float:
    if kind == "cuda_max_allocated":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if kind == "rss_peak":
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    # ru_maxrss is kB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
