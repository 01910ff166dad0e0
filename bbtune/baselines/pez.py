"""PEZ hard prompt discovery (Wen et al., 2023, "Hard Prompts Made Easy").

Keep n continuous vectors P. Each step: project them to their nearest tokens P' = Proj(P), compute the loss at
P', and apply the gradient taken at P' to P (a straight-through step). The result is the projection of the
best P: real tokens, hence text. The projection is bbtune's shared one (`discretize.Discretizer`), so PEZ and
BBT's discretization can only ever choose the same allowed tokens.

    >>> # run_pez(task, LocalBackend("tiny"), PEZConfig(steps=20, seed=0)).prompt_text
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bbtune.backends.base import Backend, gradient_backend
from bbtune.search.discretize import Discretizer, Metric
from bbtune.errors import ConfigError
from bbtune.core.options import string_tuple
from bbtune.core.prompts import HardPrompt
from bbtune.search.subspace import P0Init
from bbtune.tasks import Task
from bbtune.baselines.gradient import GradientConfig, initial_embeds, run_gradient_method
from bbtune.baselines.record import MethodResult


@dataclass(frozen=True)
class PEZConfig(GradientConfig):
    lr: float = field(default=1.0, metadata={"help": "AdamW learning rate, in units of the embedding std"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (PEZ uses 0.1)"})
    metric: Metric = field(default=Metric.COSINE, metadata={"help": "nearest-token metric: cosine or dot"})
    vocab_filter: str = field(default="words", metadata={"help": "tokens the prompt may use: words, printable, all"})
    block_list: tuple[str, ...] = field(default=(), metadata={"help": "words the prompt must never use"})

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "metric", Metric(self.metric))
        object.__setattr__(self, "block_list", string_tuple(self.block_list))
        if self.vocab_filter not in ("words", "printable", "all"):
            raise ConfigError(f"vocab_filter must be words, printable or all, got {self.vocab_filter!r}")


class _Projected:
    """PEZ's view: the model sees the nearest tokens; the gradient flows straight through to the vectors."""

    def __init__(self, backend: Backend, discretizer: Discretizer):
        self.backend, self.discretizer = gradient_backend(backend), discretizer

    def prompt(self, param: torch.Tensor) -> HardPrompt:
        return self.discretizer.project(param.detach())

    def point(self, param: torch.Tensor) -> torch.Tensor:
        nearest = self.backend.prompt_embeds([self.prompt(param)])[0].float()
        return param + (nearest - param).detach()  # value of P', gradient of P


def run_pez(task: Task, backend: Backend, config: PEZConfig = PEZConfig()) -> MethodResult:
    """Discover a hard prompt with PEZ; the record's `best` is a `HardPrompt` of allowed tokens only."""
    vocab = backend.vocabulary()
    discretizer = Discretizer(vocab, config.metric, config.vocab_filter, config.block_list)
    init = initial_embeds(vocab, config.prompt_tokens, P0Init.VOCAB, "", config.seed, allowed=discretizer.allowed)
    return run_gradient_method("pez", task, backend, init, _Projected(backend, discretizer), config)
