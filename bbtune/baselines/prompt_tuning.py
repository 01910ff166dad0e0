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
from bbtune.tasks import Task
from bbtune.baselines.gradient import GradientConfig, initial_embeds, run_gradient_method
from bbtune.baselines.record import MethodResult


@dataclass(frozen=True)
class PromptTuningConfig(GradientConfig):
    init: P0Init = field(default=P0Init.VOCAB, metadata={"help": "start: vocab (random words), text or zeros"})
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
    """Tune a soft prompt with gradients on `task.train`; the record's `best` is the `SoftPrompt`."""
    init = initial_embeds(backend.vocabulary(), config.prompt_tokens, config.init, config.init_text, config.seed)
    return run_gradient_method("prompt_tuning", task, backend, init, _AsIs(), config)
