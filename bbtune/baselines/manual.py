"""The manual prompt: the task's template alone, zero-shot, no tuning. The floor every tuned prompt must beat.

    >>> # run_manual(task, LocalBackend("smollm2")).test_acc
"""
from __future__ import annotations

from bbtune.backends.base import Backend
import numpy as np

from bbtune.core.prompts import MANUAL_PROMPT, HardPrompt
from bbtune.search.evaluate import evaluate, fitted_bias
from bbtune.tasks import Task
from bbtune.baselines.record import MethodResult, Meter, test_accuracy


def run_manual(task: Task, backend: Backend, seed: int = 0) -> MethodResult:
    """Score the template with an empty prompt on dev and test. `seed` only labels the record (nothing is random)."""
    return fixed_prompt_result("manual", MANUAL_PROMPT, task, backend, seed)


def run_manual_calibrated(task: Task, backend: Backend, seed: int = 0) -> MethodResult:
    """The manual prompt with one bias per label word fitted on the training examples, as every BBT run
    calibrates its candidates (and its own manual prompt): the baseline a tuned prompt must beat."""
    bias = fitted_bias(backend, MANUAL_PROMPT, task.train, task.format)
    return fixed_prompt_result("manual_calibrated", MANUAL_PROMPT, task, backend, seed, label_bias=bias,
                               note="label bias fitted on train")


def fixed_prompt_result(method: str, prompt: HardPrompt, task: Task, backend: Backend, seed: int,
                        note: str = "", label_bias: np.ndarray | None = None) -> MethodResult:
    """Dev and test accuracy of a prompt that is not tuned (manual, in-context), calibrated by `label_bias` where
    given: zero training calls."""
    with Meter(backend) as meter:
        dev = evaluate(backend, prompt, task.dev, task.format, label_bias=label_bias)
        test = test_accuracy(backend, prompt, task, label_bias)
    return MethodResult(method, seed, task.format.placement.value, dev.accuracy, test, train_calls=0,
                        cost=meter.measurement, curve=((0, dev.accuracy),), prompt_text=prompt.text, best=prompt,
                        note=note)
