"""Why a run ended, read from its numbers: the budget was spent, CMA-ES converged, a limit stopped it, or the
training loss never moved. (The exit code `bbtune tune` returns for each is the CLI's: `bbtune.app.exits`.)"""
from __future__ import annotations

import math
from enum import Enum
from typing import Any, Sequence

FLAT_TOLERANCE = 1e-9  # a training loss that moves less than this over a whole run never moved


class Ending(str, Enum):
    BUDGET = "budget"  # spent budget_calls: what was asked for
    CONVERGED = "converged"  # CMA-ES stopped improving before the budget: usable
    LIMIT = "limit"  # a backend's spending limit stopped it: partial (best so far), resumable
    FLAT = "flat"  # the training loss never moved: not usable
    GAVE_UP = "gave_up"  # a request failed after every retry: no result (finished generations are checkpointed)


def ending_of(stopped_by: str | None, converged: bool, curve: Sequence[dict[str, Any]]) -> Ending:
    """Classify a finished run from why it stopped early (if it did), whether it converged, and its curve."""
    if stopped_by:
        return Ending.LIMIT
    if loss_never_moved(curve):
        return Ending.FLAT
    return Ending.CONVERGED if converged else Ending.BUDGET


def loss_never_moved(curve: Sequence[dict[str, Any]]) -> bool:
    """True when every candidate of every generation had the start point's training loss."""
    losses = [float(row[k]) for row in curve for k in ("train_loss", "train_loss_mean") if k in row]
    if len(curve) < 2 or not all(math.isfinite(x) for x in losses):
        return False
    return max(losses) - min(losses) <= FLAT_TOLERANCE
