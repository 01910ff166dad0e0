"""Soft prompt tuning (Lester et al., 2021): n trainable input embeddings before a frozen model, trained by
gradient descent. The gradient upper bound BBT is measured against: same n, same data, started like BBT's p0.

    >>> # run_prompt_tuning(task, LocalBackend("tiny"), PromptTuningConfig(steps=20, seed=0)).dev_acc
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bbtune.backends.base import Backend
from bbtune.errors import ConfigError
from bbtune.core.prompts import SoftPrompt
from bbtune.search.subspace import P0Init
from bbtune.tasks import Placement, Task
from bbtune.baselines.gradient import GradientConfig, initial_embeds, run_gradient_method
from bbtune.baselines.record import MethodResult


@dataclass(frozen=True)
class PromptTuningConfig(GradientConfig):
    init: P0Init = field(default=P0Init.VOCAB, metadata={
        "help": "start: vocab (random words), text, zeros, cue (the template's cue words, which the prompt replaces, "
                "as BBT's default start) or auto (cue where the template has one and placement is suffix)"})
    init_text: str = field(default="", metadata={"help": "with init=text: a text of exactly prompt_tokens tokens"})

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "init", P0Init(self.init))
        if self.init is P0Init.TEXT and not self.init_text:
            raise ConfigError("init_text must be given when init='text'")


class _AsIs:
    """Prompt tuning feeds the trainable vectors themselves."""

    def point(self, param: torch.Tensor) -> torch.Tensor:
        return param

    def prompt(self, param: torch.Tensor) -> SoftPrompt:
        return SoftPrompt(param.detach().clone())


def run_prompt_tuning(task: Task, backend: Backend, config: PromptTuningConfig = PromptTuningConfig()) -> MethodResult:
    """Tune a soft prompt with gradients on `task.train`; the record's `best` is the `SoftPrompt`. From the cue
    (`init` cue or auto), the prompt takes the cue's place and starts as its embeddings, as a BBT run does, so the
    two are compared from the same point, at the same length."""
    vocab = backend.vocabulary()
    init, text, n = config.init, config.init_text, config.prompt_tokens
    if init in (P0Init.CUE, P0Init.AUTO):
        template, cue = task.format.template.without_cue()
        ids = vocab.tokenizer.encode(cue, add_special_tokens=False)
        if ids and task.format.placement is Placement.SUFFIX:
            task, init, text, n = task.with_template(template), P0Init.TEXT, cue, len(ids)
        elif init is P0Init.CUE:
            raise ConfigError(f"init='cue' needs cue words between the input and the label and suffix placement; "
                              f"template {task.format.template.pattern!r} ({task.format.placement.value}) has none")
        else:
            init = P0Init.VOCAB
    start = initial_embeds(vocab, n, init, text, config.seed)
    return run_gradient_method("prompt_tuning", task, backend, start, _AsIs(), config)
