"""A run's readout: the one chosen for its returned prompt, with the top-k depth it reads and its evidence.

Chosen out of fold on the training pool (train + dev: every labelled example the run may learn from, never test),
saved beside the prompt as JSON (``readout.json``), and used by everything that classifies with the run: its
test numbers, `predict`, `load_run`, the estimator, sweeps.

A shallow list (an API's top-20) cuts off most of what separates many classes, so the tokens listed most often on
the pool are also read below the list (*lifted*, `Backend.score_lifted`), on the pool and on every input the
readout classifies later, where the readout chosen reads the top-k; those tokens are part of the readout.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from bbtune.backends.base import Backend
from bbtune.core.prompts import Prompt
from bbtune.errors import CapabilityError
from bbtune.search.evaluate import answers_on
from bbtune.search.answers import Answers
from bbtune.search.readouts.choice import ReadoutChoice, ReadoutScore, available, choose_readout
from bbtune.search.readouts.estimators import Readout, ReadoutKind, load_readout
from bbtune.search.readouts.features import lift_candidates
from bbtune.tasks import Example, TaskFormat

AUTO = "auto"
OFF = "off"


def readout_kinds(setting: str) -> tuple[ReadoutKind, ...]:
    """The candidates a ``readout`` setting names: every kind for ``auto``, else the one kind."""
    return tuple(ReadoutKind) if setting == AUTO else (ReadoutKind(setting),)


@dataclass(frozen=True)
class RunReadout:
    """A fitted readout and how to feed it: `k` is the top-k depth it reads (0: the label scores alone) and `lift`
    the tokens it reads below that list."""

    readout: Readout
    choice: ReadoutChoice
    k: int
    lift: tuple[str, ...] = ()
    passes: int = field(default=1, compare=False)  # passes over the pool its fit took (2: the lifted tokens read)

    def answers(self, backend: Backend, prompt: Prompt, examples: Sequence[Example], fmt: TaskFormat) -> Answers:
        return answers_on(backend, prompt, examples, fmt, self.k, lift=self.lift)

    def log_scores(self, answers: Answers) -> np.ndarray:
        return self.readout.log_scores(answers)

    def as_json(self) -> dict[str, Any]:
        return {"k": self.k, "lift": list(self.lift), "readout": self.readout.describe(),
                "choice": self.choice.as_dict()}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> "RunReadout":
        choice = dict(saved["choice"])
        scores = tuple(ReadoutScore(s["kind"], s["accuracy"], s["loss"], tuple(s["fold_accuracies"]),
                                    s.get("p_value", 1.0)) for s in choice.pop("scores"))
        return cls(load_readout(saved["readout"]), ReadoutChoice(scores=scores, **choice), int(saved["k"]),
                   tuple(saved.get("lift", ())))


@dataclass(frozen=True)
class PoolAnswers:
    """What a run's readout is chosen on: the pool's answers at `depth` (0: the label scores alone) with the
    `lifted` tokens read below the lists, the passes that took, and why fewer were read than asked (`note`)."""

    answers: Answers
    depth: int
    lifted: tuple[str, ...] = ()
    passes: int = 1
    note: str = ""


def read_pool(backend: Backend, prompt: Prompt, pool: Sequence[Example], fmt: TaskFormat, setting: str, k: int,
              lift: int = 0) -> PoolAnswers:
    """Score `prompt` on the pool with the top-k where one of `setting`'s candidates reads it and the backend
    returns it, and the `lift` tokens listed most often read below it where the backend can."""
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
    if not (lift and depth and answers.topk is not None):
        return PoolAnswers(answers, depth)
    lifted = lift_candidates(answers.topk, lift)
    try:
        values = backend.score_lifted([prompt], pool, fmt, lifted, [answers.topk])[0]
    except CapabilityError as e:  # refused before anything is sent: the list alone, and the run says why
        return PoolAnswers(answers, depth, note=f"; no tokens read below the top-{depth}: {e}")
    return PoolAnswers(Answers(answers.labels, answers.topk.with_lifted(lifted, values)), depth, lifted, 2)


def fit_on_pool(read: PoolAnswers, y: np.ndarray, setting: str, seed: int) -> RunReadout:
    """Choose among `setting`'s candidates out of fold on what `read_pool` read and refit the winner whole."""
    readout, choice = choose_readout(read.answers, y, readout_kinds(setting), seed=seed)
    reads_topk = readout.kind.needs_topk
    return RunReadout(readout, replace(choice, reason=choice.reason + read.note), read.depth if reads_topk else 0,
                      read.lifted if reads_topk else (), read.passes)


def fit_run_readout(backend: Backend, prompt: Prompt, pool: Sequence[Example], fmt: TaskFormat, setting: str,
                    k: int, seed: int, lift: int = 0) -> RunReadout:
    """`read_pool`, then `fit_on_pool`: the readout a run keeps for `prompt`."""
    return fit_on_pool(read_pool(backend, prompt, pool, fmt, setting, k, lift), fmt.label_ids(pool), setting, seed)
