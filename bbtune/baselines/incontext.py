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
from bbtune.errors import ConfigError, TaskError
from bbtune.core.prompts import HardPrompt
from bbtune.tasks import Example, Placement, Task, TaskFormat
from bbtune.baselines.manual import fixed_prompt_result
from bbtune.baselines.record import MethodResult


@dataclass(frozen=True)
class InContextConfig:
    shots_per_class: int = field(default=1, metadata={"help": "demonstrations per label, drawn from train"})
    separator: str = field(default="\n", metadata={"help": "text between demonstrations and before the input"})
    seed: int = field(default=42, metadata={"help": "seed of which demonstrations are drawn and their order"})

    def __post_init__(self) -> None:
        if self.shots_per_class < 1:
            raise ConfigError(f"shots_per_class must be >= 1, got {self.shots_per_class}")
        if not self.separator:
            raise ConfigError("separator must not be empty (demonstrations would run into the input)")


def sample_demonstrations(task: Task, shots_per_class: int, seed: int) -> list[Example]:
    """`shots_per_class` training examples of each label, in a seeded random order."""
    rng = np.random.default_rng(seed)
    picked: list[Example] = []
    for label in task.format.labels:
        pool = [ex for ex in task.train if ex.label == label]
        if len(pool) < shots_per_class:
            raise TaskError(f"label {label!r} has {len(pool)} training examples; lower shots_per_class "
                            f"(now {shots_per_class})")
        picked += [pool[i] for i in rng.choice(len(pool), size=shots_per_class, replace=False)]
    return [picked[i] for i in rng.permutation(len(picked))]


def demonstration_text(examples: list[Example], fmt: TaskFormat, separator: str) -> str:
    """Each example as the template renders it, completed by its label word; ends with the separator."""
    shown = []
    for ex in examples:
        rendered = fmt.render(ex)
        shown.append(rendered.head + rendered.cue + fmt.verbalizer[ex.label])
    return separator.join(shown) + separator


def in_context_prompt(task: Task, tokenizer: Any, config: InContextConfig) -> HardPrompt:
    text = demonstration_text(sample_demonstrations(task, config.shots_per_class, config.seed), task.format,
                              config.separator)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return HardPrompt(tuple(ids), text, tuple(tokenizer.convert_ids_to_tokens(ids)))


def run_in_context(task: Task, backend: Backend, config: InContextConfig = InContextConfig()) -> MethodResult:
    """Score the demonstrations (prefix placement, whatever the task's placement) on dev and test."""
    task = task.with_placement(Placement.PREFIX)
    prompt = in_context_prompt(task, backend.vocabulary().tokenizer, config)
    note = f"{config.shots_per_class} per class, prefix placement"
    return fixed_prompt_result("in_context", prompt, task, backend, config.seed, note=note)
