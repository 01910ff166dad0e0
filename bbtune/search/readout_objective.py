"""Searching through a readout: a candidate's train loss is read from its whole top-k, not only its label words.

The label objective (`bbtune.search.objective.LabelObjective`) scores a prompt by its label words' log-probs, so
the search looks for prompts that move those words. A readout (`bbtune.search.readouts`) classifies from the rest
of the distribution as well, and a prompt that separates the classes anywhere in its top-k is then as good as one
that moves its label words. Two ways to put the readout inside the loop (`SearchReadout`), one object each:

- ``fixed`` (`FixedReadoutObjective`): one readout fitted once, on the first prompt the run scores on train (the
  manual prompt; p0 where the backend takes no text), and kept for every candidate. Cheap and stable, but it
  rewards candidates whose answers look like that prompt's.
- ``fold`` (`FoldReadoutObjective`): each candidate gets its own readout, and its loss is the cross-entropy out of
  fold on train (`StratifiedKFold`): what a readout fitted on this prompt scores on examples it did not see, so a
  candidate does not win by letting the readout memorise 16 examples a class.

Either way the readout is a logistic regression on the sparse top-k features at C = 1 (its settled form inside
folds), and a dev or test evaluation fits the candidate's readout on train and reads the held-out split through it.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence

import numpy as np

from bbtune.backends.base import Backend
from bbtune.constants import EVAL_BATCH
from bbtune.core.prompts import HardPrompt, Prompt
from bbtune.errors import ConfigError
from bbtune.search.answers import Answers
from bbtune.search.evaluate import Evaluation, answers_on, evaluation
from bbtune.search.losses import Loss, per_prompt_loss
from bbtune.search.readouts.choice import DEFAULT_FOLDS, held_out_log_scores
from bbtune.search.readouts.estimators import Readout, ReadoutKind, make_readout
from bbtune.tasks import Example, TaskFormat

IN_LOOP = ReadoutKind.LOGISTIC
REMEMBERED = 64  # train answers kept per prompt, so a dev evaluation right after scoring pays no second train call


class SearchReadout(str, Enum):
    """What a candidate's train loss reads during the search."""

    LABELS = "labels"  # its label words, calibrated where the run calibrates (any API)
    FIXED = "fixed"  # a top-k readout fitted once on the run's first prompt
    FOLD = "fold"  # its own top-k readout, out of fold on train


@dataclass
class _ReadoutObjective(ABC):
    """The shared half: top-k answers on train, remembered per prompt, and evaluations through a readout.
    The "scores" it hands the loop are already class log-probs, so there is no bias to fit on top."""

    backend: Backend
    fmt: TaskFormat
    train_labels: np.ndarray
    k: int
    loss: Loss = Loss.CE
    seed: int = 0
    calibrates: bool = field(default=False, init=False)
    _train: OrderedDict[bytes, Answers] = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.k = min(self.k, self.backend.capabilities.topk)
        if self.k < 1:
            raise ConfigError(f"search_readout reads the top-k log-probs, which backend {self.backend.name} does not "
                              "return; use search_readout labels, or a backend that returns top_logprobs")

    def train_answers(self, prompts: Sequence[Prompt], examples: Sequence[Example]) -> list[Answers]:
        labels, tops = self.backend.score_topk(prompts, examples, self.fmt, self.k)
        answers = [Answers(labels[i], tops[i]) for i in range(len(prompts))]
        for prompt, ans in zip(prompts, answers):
            self._train[_key(prompt)] = ans
            self._train.move_to_end(_key(prompt))
        while len(self._train) > REMEMBERED:
            self._train.popitem(last=False)
        return answers

    def train_scores(self, prompts: Sequence[Prompt], examples: Sequence[Example]) -> np.ndarray:
        """(P, B, L) class log-probs of every candidate on train, through the variant's readout."""
        return np.stack([self._train_log_scores(a) for a in self.train_answers(prompts, examples)])

    def biases(self, scores: np.ndarray) -> None:
        return None

    def losses(self, scores: np.ndarray, biases: np.ndarray | None) -> np.ndarray:
        return per_prompt_loss(scores, self.train_labels, self.loss)

    def train_ce(self, row: np.ndarray, bias: np.ndarray | None) -> float:
        return float(per_prompt_loss(row[None], self.train_labels)[0])

    def eval_scores(self, prompt: Prompt, examples: Sequence[Example]) -> np.ndarray:
        """(1, B, L) class log-probs on a held-out split, from the readout this prompt's train answers give."""
        return self._readout_for(prompt).log_scores(answers_on(self.backend, prompt, examples, self.fmt, self.k,
                                                               EVAL_BATCH))[None]

    def evaluation(self, scores: np.ndarray, examples: Sequence[Example], bias: np.ndarray | None) -> Evaluation:
        return evaluation(scores, self.fmt.label_ids(examples), None)

    def _answers_of(self, prompt: Prompt, examples: Sequence[Example]) -> Answers:
        known = self._train.get(_key(prompt))
        return known if known is not None else self.train_answers([prompt], examples)[0]

    @abstractmethod
    def _train_log_scores(self, answers: Answers) -> np.ndarray:
        """(B, L) class log-probs of one candidate's train answers: what its loss is computed from."""

    @abstractmethod
    def _readout_for(self, prompt: Prompt) -> Readout:
        """The readout a held-out split of `prompt` is read through."""


class FixedReadoutObjective(_ReadoutObjective):
    """``fixed``: every candidate read by the readout fitted on the first prompt scored on train."""

    readout: Readout | None = None

    def _train_log_scores(self, answers: Answers) -> np.ndarray:
        if self.readout is None:
            self.readout = make_readout(IN_LOOP, quick=True).fit(answers, self.train_labels)
        return self.readout.log_scores(answers)

    def _readout_for(self, prompt: Prompt) -> Readout:
        if self.readout is None:
            raise RuntimeError("the fixed readout is fitted by the first train_scores call")
        return self.readout


class FoldReadoutObjective(_ReadoutObjective):
    """``fold``: every candidate read by its own readout, out of fold on train; refitted whole for dev and test."""

    # the train split the objective reads; dev/test evaluations refit on it (set by the first train_scores call)
    examples: Sequence[Example] = ()

    def train_scores(self, prompts: Sequence[Prompt], examples: Sequence[Example]) -> np.ndarray:
        self.examples = examples
        return super().train_scores(prompts, examples)

    def _train_log_scores(self, answers: Answers) -> np.ndarray:
        folds = min(DEFAULT_FOLDS, int(np.bincount(self.train_labels)[np.unique(self.train_labels)].min()))
        if folds < 2:
            return make_readout(IN_LOOP, quick=True).fit(answers, self.train_labels).log_scores(answers)
        return held_out_log_scores(IN_LOOP, answers, self.train_labels, folds, self.seed)[0]

    def _readout_for(self, prompt: Prompt) -> Readout:
        return make_readout(IN_LOOP, quick=True).fit(self._answers_of(prompt, self.examples), self.train_labels)


def readout_objective(variant: SearchReadout | str, backend: Backend, fmt: TaskFormat, train_labels: np.ndarray,
                      k: int, loss: Loss = Loss.CE, seed: int = 0) -> _ReadoutObjective:
    """The objective of a ``fixed`` or ``fold`` search (``labels`` is `LabelObjective`'s)."""
    variants: dict[SearchReadout, type[_ReadoutObjective]] = {SearchReadout.FIXED: FixedReadoutObjective,
                                                              SearchReadout.FOLD: FoldReadoutObjective}
    return variants[SearchReadout(variant)](backend, fmt, train_labels, k, loss, seed)


def _key(prompt: Prompt) -> bytes:
    """The same prompt's key however often it is rebuilt from its z (a new object each time)."""
    if isinstance(prompt, HardPrompt):
        return b"hard:" + np.asarray(prompt.token_ids, dtype=np.int64).tobytes()
    return b"soft:" + hashlib.blake2b(prompt.embeds.detach().cpu().float().numpy().tobytes(), digest_size=16).digest()
