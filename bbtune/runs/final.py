"""The run's last numbers, after the search: which prompt it returns and why (`Decision`), the returned prompt's
readout, its test scores beside the manual prompt's, and a soft result's nearest tokens, into one `RunMetrics`.

The manual prompt's reported numbers read the task's own scores (``labels``: its label words, or a generation
task's answers) whatever the search read (``search_readout``), so they mean the same in every run."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bbtune.backends.base import Backend
from bbtune.constants import EVAL_BATCH
from bbtune.core.prompts import HardPrompt, Prompt
from bbtune.runs.config import TuneConfig
from bbtune.runs.manual import bias_row
from bbtune.runs.metrics import AnswerScores, ReadoutSummary, RunMetrics, SplitScores
from bbtune.search.evaluate import Evaluation
from bbtune.search.objective import Objective
from bbtune.search.readouts.fitted import OFF, RunReadout, fit_run_readout
from bbtune.search.selection import Decision, decide
from bbtune.tasks import Example, Task


@dataclass
class FinalScoring:
    """What the final numbers are read through; fixed once the run is set up (`Tuner._setup`)."""

    backend: Backend
    task: Task  # as tuned (a cue start changed its template)
    config: TuneConfig
    objective: Objective  # what the search minimised
    labels: Objective  # the task's own scores
    manual: Prompt

    def evaluate(self, prompt: Prompt, examples: Sequence[Example], bias: np.ndarray | None) -> Evaluation:
        """One prompt on a split (dev, test), with the calibration bias fitted on train where there is one."""
        return self.objective.evaluation(self.objective.eval_scores(prompt, examples), examples, bias)

    def decision(self, tuned_dev: Evaluation | None, tuned_key: tuple[float, ...],
                 manual: dict[str, Any]) -> Decision | None:
        """Tuned or manual prompt, and why (None where no manual prompt was scored: a soft-only backend)."""
        if not manual or tuned_dev is None:
            return None
        cfg = self.config
        return decide(tuned_dev, manual["dev_eval"], tuned_key < manual["key"], cfg.guard, cfg.guard_alpha, cfg.seed)

    def scores(self, metrics: RunMetrics, best: Prompt, bias: np.ndarray | None, discretized: HardPrompt | None,
               manual: dict[str, Any]) -> RunReadout | None:
        """All of the above into `metrics`: the returned prompt's readout (its eval calls counted), its test numbers
        beside the manual prompt's, and a soft result's nearest tokens; returns the readout."""
        fitted, calls = self.readout(best)
        metrics.eval_calls += calls
        metrics.readout = readout_summary(fitted) if fitted is not None else None
        if self.task.test:
            self.test_scores(metrics, best, bias, manual, fitted)
        if discretized is not None:
            self.nearest_tokens(metrics, discretized)
        return fitted

    def readout(self, best: Prompt) -> tuple[RunReadout | None, int]:
        """The returned prompt's readout, chosen out of fold on train + dev (`bbtune.search.readouts.fitted`), and
        the eval calls it cost; None for ``readout=off`` and for generation tasks (no label words to read)."""
        cfg, task = self.config, self.task
        if cfg.readout == OFF or task.format.is_generation:
            return None, 0
        pool = task.train + task.dev
        fitted = fit_run_readout(self.backend, best, pool, task.format, cfg.readout, cfg.readout_topk, cfg.seed,
                                 cfg.readout_lift)
        return fitted, math.ceil(len(pool) / EVAL_BATCH) * fitted.passes

    def test_scores(self, metrics: RunMetrics, best: Prompt, bias: np.ndarray | None, manual: dict[str, Any],
                    readout: RunReadout | None) -> None:
        """Test numbers of the result (through its readout where it has one), and of the manual prompt beside it
        (raw, and calibrated where the run calibrates: same scores, no extra calls)."""
        test, objective = self.task.test, self.objective
        answers = readout.answers(self.backend, best, test, self.task.format) if readout is not None else None
        kept = bool(manual) and best is self.manual  # the manual prompt was kept: its scores are the result's
        scores = answers.labels[None] if answers is not None else None
        manual_scores = (scores if kept and scores is not None else self.labels.eval_scores(self.manual, test)
                         if manual else None)
        if scores is None:
            scores = manual_scores if kept and manual_scores is not None else objective.eval_scores(best, test)
        metrics.test_acc, metrics.test_loss, metrics.test_n = _numbers(objective.evaluation(scores, test, bias))
        if answers is not None and readout is not None:
            metrics.test_acc_without_readout = metrics.test_acc
            read = objective.evaluation(readout.log_scores(answers)[None], test, None)
            metrics.test_acc, metrics.test_loss, metrics.test_n = _numbers(read)
        if manual_scores is not None:
            metrics.manual_test_acc = self.labels.evaluation(manual_scores, test, None).accuracy
            if manual["bias"] is not None:
                metrics.manual_calibrated_test_acc = self.labels.evaluation(manual_scores, test, manual["bias"]).accuracy
            metrics.gain_over_manual = metrics.test_acc - metrics.manual_test_acc

    def nearest_tokens(self, metrics: RunMetrics, discretized: HardPrompt) -> None:
        """A soft result's nearest tokens on dev and test: another prompt, so with their own bias fitted on train."""
        task, objective = self.task, self.objective
        bias = (bias_row(objective.biases(objective.train_scores([discretized], task.train)), 0)
                if objective.calibrates else None)
        metrics.hard_dev_acc, metrics.hard_dev_loss, metrics.hard_dev_n = _numbers(
            self.evaluate(discretized, task.dev, bias))
        if task.test:
            metrics.hard_test_acc, metrics.hard_test_loss, metrics.hard_test_n = _numbers(
                self.evaluate(discretized, task.test, bias))


def readout_summary(fitted: RunReadout) -> ReadoutSummary:
    return ReadoutSummary(fitted.readout.kind.value, fitted.k, fitted.choice.reason,
                          {s.kind: round(s.accuracy, 4) for s in fitted.choice.scores}, len(fitted.lift))


def answer_scores(metrics: RunMetrics, tuned_prompt: str | None) -> AnswerScores:
    """A generation run's answer metric for the manual and the tuned prompt on dev and test, under its own name."""
    tuned_test = metrics.tuned_test_acc if metrics.tuned_test_acc is not None else metrics.test_acc
    return AnswerScores(str(metrics.answer_metric), SplitScores(metrics.manual_dev_acc, metrics.manual_test_acc),
                        SplitScores(metrics.tuned_dev_acc, tuned_test), metrics.selected, tuned_prompt)


def _numbers(evaluation: Evaluation) -> tuple[float, float, int]:
    return evaluation.accuracy, evaluation.loss, evaluation.n
