"""A run's readout: the one chosen for its returned prompt, with the top-k depth it reads and its evidence.

Chosen out of fold on the training pool (train + dev: every labelled example the run may learn from, never test),
saved beside the prompt as JSON (``readout.json``), and used by everything that classifies with the run: its
test numbers, `predict`, `load_run`, the estimator, sweeps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bbtune.backends.base import Backend
from bbtune.core.prompts import Prompt
from bbtune.errors import CapabilityError
from bbtune.search.evaluate import answers_on
from bbtune.search.answers import Answers
from bbtune.search.readouts.choice import ReadoutChoice, ReadoutScore, available, choose_readout
from bbtune.search.readouts.estimators import Readout, ReadoutKind, load_readout
from bbtune.tasks import Example, TaskFormat

AUTO = "auto"
OFF = "off"


def readout_kinds(setting: str) -> tuple[ReadoutKind, ...]:
    """The candidates a ``readout`` setting names: every kind for ``auto``, else the one kind."""
    return tuple(ReadoutKind) if setting == AUTO else (ReadoutKind(setting),)


@dataclass(frozen=True)
class RunReadout:
    """A fitted readout and how to feed it: `k` is the top-k depth it reads (0: the label scores alone)."""

    readout: Readout
    choice: ReadoutChoice
    k: int

    def answers(self, backend: Backend, prompt: Prompt, examples: Sequence[Example], fmt: TaskFormat) -> Answers:
        return answers_on(backend, prompt, examples, fmt, self.k)

    def log_scores(self, answers: Answers) -> np.ndarray:
        return self.readout.log_scores(answers)

    def as_json(self) -> dict[str, Any]:
        return {"k": self.k, "readout": self.readout.describe(), "choice": self.choice.as_dict()}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> "RunReadout":
        choice = dict(saved["choice"])
        scores = tuple(ReadoutScore(s["kind"], s["accuracy"], s["loss"], tuple(s["fold_accuracies"]),
                                    s.get("p_value", 1.0)) for s in choice.pop("scores"))
        return cls(load_readout(saved["readout"]), ReadoutChoice(scores=scores, **choice), int(saved["k"]))


def fit_run_readout(backend: Backend, prompt: Prompt, pool: Sequence[Example], fmt: TaskFormat, setting: str,
                    k: int, seed: int) -> RunReadout:
    """Score `prompt` on the pool (with the top-k where a candidate reads it and the backend returns it), choose
    among `setting`'s candidates out of fold and refit the winner on the whole pool."""
    kinds = readout_kinds(setting)
    depth = min(k, backend.capabilities.topk) if any(kind.needs_topk for kind in kinds) else 0
    if not available(kinds, depth > 0):
        raise ValueError(f"readout {setting!r} reads the top-k log-probs, which backend {backend.name} does not "
                         "return; use readout auto, bias or affine")
    try:
        answers = answers_on(backend, prompt, pool, fmt, depth)
    except CapabilityError:  # it declares a top-k but gives none (a wrapper that copies capabilities): labels alone
        if setting != AUTO or not depth:
            raise
        depth, answers = 0, answers_on(backend, prompt, pool, fmt, 0)
    readout, choice = choose_readout(answers, fmt.label_ids(pool), kinds, seed=seed)
    return RunReadout(readout, choice, depth if readout.kind.needs_topk else 0)
