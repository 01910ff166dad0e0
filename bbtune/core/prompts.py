"""The two kinds of prompt a backend can score.

A `SoftPrompt` is an (n_tokens x hidden) tensor of input embeddings (BBT's `p = A z + p0`); a `HardPrompt`
is real text, kept with the token ids it came from, so any text-only API can use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

import torch


@dataclass(frozen=True)
class SoftPrompt:
    """Continuous prompt: `embeds` has shape (n_tokens, hidden)."""

    embeds: torch.Tensor

    def __post_init__(self) -> None:
        if self.embeds.ndim != 2:
            raise ValueError(f"SoftPrompt.embeds must be (n_tokens, hidden), got shape {tuple(self.embeds.shape)}")

    @property
    def n_tokens(self) -> int:
        return int(self.embeds.shape[0])


@dataclass(frozen=True)
class HardPrompt:
    """Discrete prompt: token ids and the text they decode to.

    `token_ids` are what a local backend feeds; `text` is what a remote API receives.
    """

    token_ids: tuple[int, ...]
    text: str
    tokens: tuple[str, ...] = field(default=(), compare=False)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


Prompt = Union[SoftPrompt, HardPrompt]


MANUAL_PROMPT = HardPrompt((), "")  # the template alone: the prompt every run scores beside the tuned one


def prompt_kind(prompts: list[Prompt] | tuple[Prompt, ...]) -> str:
    """'soft' or 'hard' for a non-mixed batch; a mixed batch is a programming error."""
    kinds = {"soft" if isinstance(p, SoftPrompt) else "hard" for p in prompts}
    if len(kinds) != 1:
        raise ValueError(f"a batch of prompts must be all soft or all hard, got {sorted(kinds)}")
    return kinds.pop()


def distinct_prompts(prompts: Sequence[Prompt]) -> tuple[list[Prompt], list[int]]:
    """Prompts with repeated hard prompts dropped, and for each input prompt its index among them.

    Hard searches often propose the same token sequence twice in a generation; scoring it once saves a
    forward pass (local) or a paid request (remote). Soft prompts are never merged."""
    first: dict[object, int] = {}
    where = [first.setdefault(p.token_ids if isinstance(p, HardPrompt) else id(p), len(first)) for p in prompts]
    unique = list({i: p for p, i in zip(prompts, where)}.values())
    return unique, where
