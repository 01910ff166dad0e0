"""What the tuner minimises and how it evaluates a prompt: one seam, two kinds of task.

- `LabelObjective` (classification): label-word log-probs from `Backend.score`, calibrated by a per-label bias,
  turned into CE / hinge / negative accuracy (`bbtune.search.losses`); evaluation is accuracy and CE.
- `GenerationObjective` (free-text answers), by `AnswerScoring`:
  - ``reference``: the log-probability of each example's own reference answer right after its input
    (`Backend.continuation_logprobs`, one continuation per example). The loss is the mean negative
    log-likelihood **per answer** (summed over its tokens, averaged over examples), not per token: the quantity
    the backend returns exactly, with no tokenizer needed (a remote model's tokens are not ours to count), and
    the one greedy decoding must win: a whole answer is right or wrong, and a per-token mean would let the easy
    later tokens of long answers hide a wrong first one.
  - ``metric``: the greedy answer (`Backend.generate`) judged by a metric (exact match, token F1 or the user's,
    `bbtune.tasks.answer_metrics`); loss = 1 - mean metric.
  Either way a dev or test evaluation generates answers and reports the metric as its "accuracy" (so selection,
  the decision against the manual prompt and the tables read one number); its loss is the reference NLL under
  ``reference`` and 1 - metric under ``metric``. An example counts as right (McNemar's test) when its metric
  is >= 0.5. No label calibration: there are no label words to bias.

Both speak the same five calls, so the tuner's loop does not know which kind of task it tunes:

    train_scores(prompts, examples) -> per-example scores;  biases(scores);  losses(scores, biases) -> (P,)
    train_ce(row, bias) -> the number selection rules call "train loss";  evaluate(prompt, examples, bias)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, Sequence

import numpy as np

from bbtune.backends.base import Backend
from bbtune.constants import EVAL_BATCH
from bbtune.core.prompts import Prompt
from bbtune.search.calibration import apply_bias, fit_label_biases
from bbtune.search.evaluate import Evaluation, evaluation, score_examples
from bbtune.search.losses import MISSING_LABEL_LOSS, Loss, per_prompt_loss
from bbtune.tasks import Example, TaskFormat
from bbtune.tasks.answer_metrics import AnswerMetric

# An answer is the first line that holds any text: small models often start on a new line ("Answer:\nParis"), so
# generation is not stopped at a newline (that would cut such answers to nothing); the rest is read and dropped.
GENERATE_STOP: tuple[str, ...] = ()
RIGHT_AT = 0.5  # a generated answer whose metric reaches this counts as right (paired test against the manual prompt)


class AnswerScoring(str, Enum):
    """How a generation task scores a candidate prompt on train."""

    REFERENCE = "reference"  # log-likelihood of the reference answer (needs log-probs)
    METRIC = "metric"  # the metric on the greedy generated answer (needs generated text only)


class Objective(Protocol):
    """The tuner's view of a task: scores on train, their loss, and a prompt's evaluation on a split."""

    calibrates: bool

    def train_scores(self, prompts: Sequence[Prompt], examples: Sequence[Example]) -> np.ndarray: ...
    def biases(self, scores: np.ndarray) -> np.ndarray | None: ...
    def losses(self, scores: np.ndarray, biases: np.ndarray | None) -> np.ndarray: ...
    def train_ce(self, row: np.ndarray, bias: np.ndarray | None) -> float: ...
    def eval_scores(self, prompt: Prompt, examples: Sequence[Example]) -> np.ndarray: ...
    def evaluation(self, scores: np.ndarray, examples: Sequence[Example], bias: np.ndarray | None) -> Evaluation: ...


@dataclass
class LabelObjective:
    """Classification: label-word scores, calibrated where asked, under CE, hinge or negative accuracy."""

    backend: Backend
    fmt: TaskFormat
    train_labels: np.ndarray
    loss: Loss = Loss.CE
    calibrates: bool = True

    def train_scores(self, prompts: Sequence[Prompt], examples: Sequence[Example]) -> np.ndarray:
        return self.backend.score(prompts, examples, self.fmt)

    def biases(self, scores: np.ndarray) -> np.ndarray | None:
        """Per-candidate label biases fitted on its own training scores (None without calibration)."""
        return fit_label_biases(scores, self.train_labels) if self.calibrates else None

    def losses(self, scores: np.ndarray, biases: np.ndarray | None) -> np.ndarray:
        return per_prompt_loss(apply_bias(scores, biases), self.train_labels, self.loss)

    def train_ce(self, row: np.ndarray, bias: np.ndarray | None) -> float:
        """Cross-entropy of (B, L) scores, calibrated by `bias` where given."""
        return float(per_prompt_loss(apply_bias(row[None], bias), self.train_labels)[0])

    def eval_scores(self, prompt: Prompt, examples: Sequence[Example]) -> np.ndarray:
        return score_examples(self.backend, prompt, examples, self.fmt)

    def evaluation(self, scores: np.ndarray, examples: Sequence[Example], bias: np.ndarray | None) -> Evaluation:
        return evaluation(scores, self.fmt.label_ids(examples), bias)


@dataclass
class GenerationObjective:
    """Free-text answers: the reference's log-likelihood or a metric on the generated answer (module docstring)."""

    backend: Backend
    fmt: TaskFormat
    scoring: AnswerScoring
    metric: AnswerMetric
    max_tokens: int = 16
    calibrates: bool = field(default=False, init=False)  # no label words to bias

    def __post_init__(self) -> None:
        self.scoring = AnswerScoring(self.scoring)
        self.backend.capabilities.require("generate", self.backend.name)  # dev and test are judged on answers
        if self.scoring is AnswerScoring.REFERENCE:
            self.backend.capabilities.require("logprobs", self.backend.name)

    def train_scores(self, prompts: Sequence[Prompt], examples: Sequence[Example]) -> np.ndarray:
        """(P, B) loss of every prompt on every example: the reference's NLL, or 1 - metric."""
        if self.scoring is AnswerScoring.REFERENCE:
            return self._reference_nll(prompts, examples)
        return 1.0 - self._metric_values(prompts, examples)

    def biases(self, scores: np.ndarray) -> None:
        return None

    def losses(self, scores: np.ndarray, biases: np.ndarray | None) -> np.ndarray:
        return scores.mean(axis=1)

    def train_ce(self, row: np.ndarray, bias: np.ndarray | None) -> float:
        return float(row.mean())

    def eval_scores(self, prompt: Prompt, examples: Sequence[Example]) -> np.ndarray:
        """(1, B, 2): each example's metric on the generated answer, and its reference NLL (NaN under ``metric``
        scoring, which may run where no log-probs are given); in chunks of `EVAL_BATCH` examples."""
        if not examples:
            raise ValueError("evaluate() got no examples")
        chunks = [examples[i : i + EVAL_BATCH] for i in range(0, len(examples), EVAL_BATCH)]
        metric = np.concatenate([self._metric_values([prompt], c) for c in chunks], axis=1)
        nll = (np.concatenate([self._reference_nll([prompt], c) for c in chunks], axis=1)
               if self.scoring is AnswerScoring.REFERENCE else np.full_like(metric, np.nan))
        return np.stack([metric, nll], axis=-1)

    def evaluation(self, scores: np.ndarray, examples: Sequence[Example], bias: np.ndarray | None) -> Evaluation:
        """The metric as `accuracy`; the reference NLL (``reference``) or 1 - metric (``metric``) as `loss`."""
        metric, nll = scores[0, :, 0], scores[0, :, 1]
        losses = nll if self.scoring is AnswerScoring.REFERENCE else 1.0 - metric
        return Evaluation(float(metric.mean()), float(losses.mean()), len(metric), tuple(map(float, losses)),
                          tuple(bool(m >= RIGHT_AT) for m in metric))

    def _reference_nll(self, prompts: Sequence[Prompt], examples: Sequence[Example]) -> np.ndarray:
        """(P, B) -log p(reference | input). A reference a server could not score (NaN: a token missing from its
        top-k list) costs at least `MISSING_LABEL_LOSS` and never less than the worst scored answer of the call, so a
        search never gains by pushing answers out of the list."""
        logp = self.backend.continuation_logprobs(prompts, examples, self.fmt,
                                                  [[self.fmt.answer(ex)] for ex in examples])
        nll = -np.asarray(logp, dtype=float)[..., 0]
        if np.isnan(nll).any():
            known = nll[~np.isnan(nll)]
            nll = np.where(np.isnan(nll), max(MISSING_LABEL_LOSS, float(known.max()) if known.size else 0.0), nll)
        return nll

    def _metric_values(self, prompts: Sequence[Prompt], examples: Sequence[Example]) -> np.ndarray:
        """(P, B) metric of each prompt's greedy answer against each example's reference."""
        texts = self.backend.generate(prompts, examples, self.fmt, max_tokens=self.max_tokens, n=1, temperature=0.0,
                                      stop=GENERATE_STOP)
        return np.array([[self.metric(first_line(row[0]), ex.label) for row, ex in zip(per_prompt, examples)]
                         for per_prompt in texts], dtype=float)


def first_line(text: str) -> str:
    """A generated answer: its first line holding any text, stripped ('' where there is none).

    >>> first_line("\n  Paris\nThe capital of France is Paris.")
    'Paris'
    """
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def skipped_for_generation(calibrate: bool, loss: Loss | str) -> list[str]:
    """The label-specific options a generation task does not use, said once (CLI notes, metrics.json), never a
    crash: they are on by default, and a user who switched them on should know they did nothing."""
    out = []
    if calibrate:
        out.append("label calibration (TuneConfig.calibrate): a generation task has no label words to bias")
    if Loss(loss) is not Loss.CE:
        out.append(f"loss={Loss(loss).value}: a generation task's loss is set by answer_scoring")
    return out
