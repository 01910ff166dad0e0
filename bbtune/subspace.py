"""The random subspace of BBT (Sun et al., 2022): a prompt is ``p = A z + p0``.

``z`` has the low intrinsic dimension d that CMA-ES searches; ``A`` (n*hidden x d) is fixed and random; ``p0``
is where the search starts (zeros, the embeddings of a text, or of random vocabulary words). BBT draws A from
N(0, std_A) with ``std_A = alpha * std_hat / (sqrt(d) * sigma)``, where ``std_hat`` is the std of the model's
input embeddings and sigma CMA-ES's initial step (``sigma0``: one value for both, as in BBT), so a step of size
sigma moves each prompt coordinate by about ``alpha * std_hat``: the scale of real embeddings. Changing ``sigma0``
therefore rescales z only; the step in embedding space is set by ``alpha``. 'uniform' draws A from U(-a, a) with the same std.

Example:
    >>> sub = Subspace.build(vocab, SubspaceConfig(prompt_tokens=5, intrinsic_dim=100), seed=0)
    >>> sub.soft_prompt(np.zeros(100)).embeds.shape  # == p0
    torch.Size([5, hidden])
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np
import torch

from .constants import CPU_INTRINSIC_DIM, CPU_PROMPT_TOKENS
from .errors import ConfigError
from .prompts import SoftPrompt
from .vocab import Vocabulary


class Projection(str, Enum):
    NORMAL = "normal"
    UNIFORM = "uniform"


class P0Init(str, Enum):
    ZEROS = "zeros"
    VOCAB = "vocab"  # embeddings of n random (readable) vocabulary words
    TEXT = "text"  # embeddings of p0_text, which must be exactly n tokens
    CUE = "cue"  # the template's own cue words ("\nSentiment:"): the prompt replaces them, so z = 0 is the manual prompt


@dataclass(frozen=True)
class SubspaceConfig:
    prompt_tokens: int = field(default=CPU_PROMPT_TOKENS, metadata={"help": "number of prompt tokens n"})
    intrinsic_dim: int = field(default=CPU_INTRINSIC_DIM, metadata={"help": "dimension d of z"})
    projection: Projection = field(default=Projection.NORMAL, metadata={"help": "distribution of A"})
    alpha: float = field(default=1.0, metadata={"help": "scale of A relative to the BBT std rule"})
    p0: P0Init = field(default=P0Init.VOCAB, metadata={
        "help": "start point p0: zeros, vocab (random words), text (--p0-text), or cue (the template's own cue words, "
                "which the prompt then replaces: the search starts at the manual prompt; prompt length = the cue's)"})
    p0_text: str = field(default="", metadata={"help": "text whose embeddings are p0 (with p0=text)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "projection", Projection(self.projection))
        object.__setattr__(self, "p0", P0Init(self.p0))
        for name in ("prompt_tokens", "intrinsic_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        if self.p0 is P0Init.TEXT and not self.p0_text:
            raise ConfigError("p0='text' needs p0_text (e.g. a manual prompt of prompt_tokens tokens)")


@dataclass(frozen=True, eq=False)
class Subspace:
    A: torch.Tensor  # (n * hidden, d)
    p0: torch.Tensor  # (n, hidden)

    @property
    def dim(self) -> int:
        return int(self.A.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.p0.shape[0])

    def embeds(self, z: np.ndarray) -> torch.Tensor:
        """(P, n, hidden) prompts for a (P, d) or (d,) array of z."""
        Z = torch.as_tensor(np.atleast_2d(z), dtype=self.A.dtype)
        return (Z @ self.A.T).view(Z.shape[0], *self.p0.shape) + self.p0

    def soft_prompt(self, z: np.ndarray) -> SoftPrompt:
        return SoftPrompt(self.embeds(z)[0])

    def fingerprint(self) -> str:
        """Hash of A and p0: a resumed run checks it rebuilt the same subspace."""
        h = hashlib.sha256(self.A.numpy().tobytes())
        h.update(self.p0.numpy().tobytes())
        return h.hexdigest()[:16]

    def rescaled(self, factor: float) -> "Subspace":
        return replace(self, A=self.A * factor)

    @classmethod
    def build(cls, vocab: Vocabulary, config: SubspaceConfig, seed: int, allowed: torch.Tensor | None = None,
              sigma0: float = 1.0) -> "Subspace":
        """`sigma0` is the optimizer's initial step: the std rule divides by it, so the step in embedding space
        is ``alpha * std_hat`` whatever sigma0 is."""
        emb = vocab.embeddings.float()
        n, hidden, d = config.prompt_tokens, emb.shape[1], config.intrinsic_dim
        gen = torch.Generator().manual_seed(seed)
        std = config.alpha * float(emb.std()) / (np.sqrt(d) * sigma0)
        if config.projection is Projection.NORMAL:
            A = torch.randn(n * hidden, d, generator=gen) * std
        else:
            A = (torch.rand(n * hidden, d, generator=gen) * 2 - 1) * std * np.sqrt(3.0)
        return cls(A, _p0(vocab, config, gen, allowed))


def _p0(vocab: Vocabulary, config: SubspaceConfig, gen: torch.Generator, allowed: torch.Tensor | None) -> torch.Tensor:
    n, emb = config.prompt_tokens, vocab.embeddings.float()
    if config.p0 is P0Init.ZEROS:
        return torch.zeros(n, emb.shape[1])
    if config.p0 is P0Init.TEXT:
        ids = vocab.tokenizer.encode(config.p0_text, add_special_tokens=False)
        if len(ids) != n:
            raise ConfigError(
                f"p0_text {config.p0_text!r} is {len(ids)} tokens but prompt_tokens={n}; "
                f"set prompt_tokens={len(ids)} or change the text"
            )
        return emb[ids].clone()
    pool = torch.nonzero(allowed if allowed is not None else vocab.allowed_mask("words")).flatten()
    pick = pool[torch.randperm(len(pool), generator=gen)[:n]]
    return emb[pick].clone()
