"""The manual prompt (the template alone) as the floor a tuned prompt must beat: its numbers on train and dev, how
it competes (calibrated like a candidate, or raw where calibration loses out of fold on train), and its selection
key. The run state keeps them as a plain dict, which checkpoints pickle (older ones lack the newer keys)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from bbtune.constants import EVAL_BATCH
from bbtune.core.prompts import Prompt
from bbtune.search.objective import Objective
from bbtune.search.readouts import Answers, ReadoutKind, choose_readout
from bbtune.search.selection import Selection, selection_key
from bbtune.tasks import Task


def manual_point(objective: Objective, manual: Prompt, task: Task, select: Selection,
                 seed: int) -> tuple[dict[str, Any], int]:
    """Score the manual prompt on train and dev through `objective`; returns its numbers and the eval calls spent."""
    dev = task.dev
    scores = objective.train_scores([manual], task.train)
    bias = bias_row(objective.biases(scores), 0)
    dev_scores = objective.eval_scores(manual, dev)
    raw, calibrated = objective.evaluation(dev_scores, dev, None), objective.evaluation(dev_scores, dev, bias)
    readout = (manual_readout(scores[0], bias, task.format.label_ids(task.train), seed) if bias is not None
               else ReadoutKind.RAW.value)  # uncalibrated (a generation task has no labels to read either)
    used, used_bias = (calibrated, bias) if readout == ReadoutKind.BIAS.value else (raw, None)
    calibrated_ce = objective.train_ce(scores[0], bias)  # reported: calibrated, as p0's start is
    train_ce = calibrated_ce if used_bias is not None or bias is None else objective.train_ce(scores[0], None)
    numbers = {"dev_acc": raw.accuracy, "dev_loss": raw.loss, "bias": bias, "train_loss": calibrated_ce,
               "dev_eval": used, "readout": readout,
               "selected_dev": (used.accuracy, used.loss),  # as a candidate: raw or calibrated, out of fold
               "key": selection_key(select, train_ce, len(task.train), used)}
    return numbers, 1 + math.ceil(len(dev) / EVAL_BATCH)


def manual_readout(train_scores: np.ndarray, bias: np.ndarray | None, labels: np.ndarray, seed: int) -> str:
    """The manual prompt as a candidate: calibrated like the tuned ones, or raw where calibration loses out of
    fold on train (it can overfit 16 examples a class, and then the raw template is the floor)."""
    if bias is None:
        return ReadoutKind.RAW.value
    return choose_readout(Answers(train_scores), labels, (ReadoutKind.RAW, ReadoutKind.BIAS), seed=seed)[1].kind


def manual_bias(manual: dict[str, Any]) -> np.ndarray | None:
    """The manual prompt's bias as its candidate used it: none where the raw template won out of fold (checkpoints
    written before that choice calibrated it)."""
    return manual["bias"] if manual.get("readout", ReadoutKind.BIAS.value) == ReadoutKind.BIAS.value else None


def bias_row(biases: np.ndarray | None, row: int) -> np.ndarray | None:
    """One candidate's label bias from a population's (None: the objective does not calibrate)."""
    return None if biases is None else biases[row]
