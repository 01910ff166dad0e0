"""A comparison's data: the settings each method runs with, every run's result, and the per-method summary
(mean and sample std over seeds). `compare` fills one, `report` writes and reads it back."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bbtune.core.numbers import mean_std

from bbtune.baselines import (
    InContextConfig,
    MethodResult,
    PEZConfig,
    PromptTuningConfig,
)
from bbtune.runs.tuner import TuneConfig


@dataclass(frozen=True)
class MethodSettings:
    """One config per kind of method; `seed` in each is replaced by the run's seed."""

    bbt: TuneConfig = TuneConfig()
    prompt_tuning: PromptTuningConfig = PromptTuningConfig()
    pez: PEZConfig = PEZConfig()
    in_context: InContextConfig = InContextConfig()


@dataclass
class Comparison:
    """Every run of a comparison; `summary()` is the table."""

    task: str
    backend: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    settings: MethodSettings
    results: list[MethodResult] = field(default_factory=list)
    transfer: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)  # how the run was configured, kept in results.json

    def summary(self) -> list[dict[str, Any]]:
        return [summarize(m, [r for r in self.results if r.method == m]) for m in self.methods
                if any(r.method == m for r in self.results)]


def summarize(method: str, runs: Sequence[MethodResult]) -> dict[str, Any]:
    """Mean and sample std over seeds of the accuracies; mean of the costs."""
    row: dict[str, Any] = {"method": method, "seeds": [r.seed for r in runs]}
    for key in ("dev_acc", "test_acc"):
        values = [getattr(r, key) for r in runs if getattr(r, key) is not None]
        row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
    for key in ("calls", "forward_passes", "backward_passes", "wall_s", "peak_mem_mb"):
        row[key] = float(np.mean([getattr(r.cost, key) for r in runs]))
    row["train_calls"] = float(np.mean([r.train_calls for r in runs]))
    row["mem_kind"] = runs[0].cost.mem_kind
    row["note"] = runs[0].note
    return row
