"""In-context few-shot: k labelled demonstrations per class, written in the task's template, before the input.

The demonstrations are an ordinary `HardPrompt` with prefix placement, so every backend (local or a text-only
API) scores them like any other prompt, and the prefix path encodes them once per call for all examples.

    >>> # run_in_context(task, backend, InContextConfig(shots_per_class=2, seed=13)).prompt_text
    >>> # 'a gripping story It was great\\nthe plot drags It was terrible\\n...'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bbtune.backends.base import Backend
from bbtune.errors import ConfigError
from bbtune.core.prompts import HardPrompt
from bbtune.tasks import Example, Placement, Task, TaskFormat
from bbtune.tasks.demonstrations import demonstration_text, sample_demonstrations
from bbtune.baselines.manual import fixed_prompt_result
from bbtune.search.evaluate import fitted_bias, score_examples
from bbtune.search.losses import label_log_softmax
from bbtune.baselines.record import MethodResult


CALIBRATIONS = ("none", "contextual", "train")
# the method name each calibration reports under (compare and sweeps run them by these names)
IN_CONTEXT_METHODS = {"none": "in_context", "contextual": "in_context_calibrated", "train": "in_context_train"}
CONTENT_FREE = ("N/A", "[MASK]")  # Zhao et al.'s content-free inputs (their empty string has no tokens to score)


@dataclass(frozen=True)
class InContextConfig:
    shots_per_class: int = field(default=1, metadata={"help": "demonstrations per label, drawn from train"})
    separator: str = field(default="\n", metadata={"help": "text between demonstrations and before the input"})
    seed: int = field(default=42, metadata={"help": "seed of which demonstrations are drawn and their order"})
    calibration: str = field(default="none", metadata={
        "help": "none; contextual (Zhao et al. 2021: the bias that makes content-free inputs score every label "
                "alike); or train (one bias per label fitted on the training examples, as BBT calibrates)"})

    def __post_init__(self) -> None:
        if self.shots_per_class < 1:
            raise ConfigError(f"shots_per_class must be >= 1, got {self.shots_per_class}")
        if not self.separator:
            raise ConfigError("separator must not be empty (demonstrations would run into the input)")
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")


def in_context_prompt(task: Task, tokenizer: Any, config: InContextConfig) -> HardPrompt:
    shown = sample_demonstrations(task.train, task.format, config.shots_per_class, config.seed,
                                  setting="shots_per_class")
    text = demonstration_text(shown, task.format, config.separator)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return HardPrompt(tuple(ids), text, tuple(tokenizer.convert_ids_to_tokens(ids)))


def run_in_context(task: Task, backend: Backend, config: InContextConfig = InContextConfig()) -> MethodResult:
    """Score the demonstrations (prefix placement, whatever the task's placement) on dev and test, calibrated
    as `config.calibration` says."""
    task = task.with_placement(Placement.PREFIX)
    prompt = in_context_prompt(task, backend.vocabulary().tokenizer, config)
    bias = {"none": None, "contextual": lambda: contextual_bias(backend, prompt, task.format),
            "train": lambda: fitted_bias(backend, prompt, task.train, task.format)}[config.calibration]
    note = f"{config.shots_per_class} per class, prefix placement, calibration {config.calibration}"
    method = IN_CONTEXT_METHODS[config.calibration]
    return fixed_prompt_result(method, prompt, task, backend, config.seed, note=note,
                               label_bias=bias() if bias is not None else None)


def contextual_bias(backend: Backend, prompt: HardPrompt, fmt: TaskFormat) -> np.ndarray:
    """Contextual calibration (Zhao et al., 2021): the label distribution the prompt gives content-free inputs,
    averaged, is the prompt's prior; subtracting its log makes those inputs score every label alike."""
    content_free = [Example(text, fmt.labels[0]) for text in CONTENT_FREE]
    scores = score_examples(backend, prompt, content_free, fmt)[0]
    prior = np.exp(label_log_softmax(scores[None]))[0].mean(axis=0)
    return -np.log(prior)
