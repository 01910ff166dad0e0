"""The arguments every task benchmark shares (data, model, preset, seeds, shots, test sample), one definition."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from bbtune.tasks import Task, TaskConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"  # the shared data sets: read in place, never copied into the project


def add_task_args(ap: argparse.ArgumentParser, data: str = "sst2", preset: str = "sentiment",
                  test_limit: int | None = 0) -> None:
    """--data --model --preset --seeds --k --test-limit with the defaults the README's tables were measured with
    (`test_limit=None`: no --test-limit, for benchmarks that never score the test set)."""
    ap.add_argument("--data", default=str(DATA / data), help=f"data folder (train.jsonl, test.jsonl); default {data}")
    ap.add_argument("--model", default="smollm2", help="local model")
    ap.add_argument("--preset", default=preset, help="template + verbalizer preset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 42, 100], help="few-shot splits (and method seeds)")
    ap.add_argument("--k", type=int, default=16, help="examples per class in train and in dev")
    if test_limit is not None:
        ap.add_argument("--test-limit", type=int, default=test_limit,
                        help="test examples scored, a seeded sample (0 = the whole test set)")


def matrix_task(spec: dict[str, Any], seed: int) -> Task:
    """One task of the matrix spec (``[grid] tasks`` in benchmarks/specs/matrix.toml) on its few-shot split `seed`,
    named as the spec names it."""
    options = {key: v for key, v in spec.items() if key not in ("name", "data")}
    return replace(TaskConfig(data=str((ROOT / spec["data"]).resolve()), data_seed=seed, **options).load(),
                   name=spec["name"])
