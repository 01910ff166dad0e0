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
import math
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np
import torch

from bbtune.constants import CPU_INTRINSIC_DIM, CPU_PROMPT_TOKENS, MAX_PROJECTION_MB
from bbtune.errors import ConfigError
from bbtune.core.prompts import SoftPrompt
from bbtune.core.vocab import Vocabulary


class Projection(str, Enum):
    NORMAL = "normal"
    UNIFORM = "uniform"


# Step sizes (alpha, in embedding stds) by start point. From random words, BBT's alpha = 1 (a step of sigma moves a
# coordinate by one embedding std). From the template's cue, which already scores well, a step of 1 std replaces
# the cue wholesale and every candidate scores worse than the start (SST-2, 10 candidates: train CE 0.46-0.53
# against 0.375 at the cue); at 0.15 about a third of the candidates improve on it. See docs/guide/defaults.md.
ALPHA_FROM_WORDS = 1.0
ALPHA_FROM_CUE = 0.15


class P0Init(str, Enum):
    ZEROS = "zeros"
    VOCAB = "vocab"  # embeddings of n random (readable) vocabulary words
    TEXT = "text"  # embeddings of p0_text, which must be exactly n tokens
    AUTO = "auto"  # cue where the template has one and the prompt sits after the input (suffix), else vocab
    CUE = "cue"  # the template's own cue words ("\nSentiment:"): the prompt replaces them, so z = 0 is the manual prompt


@dataclass(frozen=True)
class SubspaceConfig:
    prompt_tokens: int = field(default=0, metadata={
        "help": f"number of prompt tokens n; 0 = the cue's length when starting from the cue (more: the cue after "
                f"copies of its first token, e.g. newlines), else {CPU_PROMPT_TOKENS}"})
    intrinsic_dim: int = field(default=CPU_INTRINSIC_DIM, metadata={"help": "dimension d of z"})
    projection: Projection = field(default=Projection.NORMAL, metadata={"help": "distribution of A"})
    alpha: float = field(default=0.0, metadata={
        "help": f"step in embedding space, in embedding stds (BBT's std rule); 0 = by start point: {ALPHA_FROM_WORDS} "
                f"from random words or text, {ALPHA_FROM_CUE} from the cue"})
    p0: P0Init = field(default=P0Init.AUTO, metadata={
        "help": "start point p0: cue (the template's own cue words, which the prompt then replaces: the search starts "
                "at the manual prompt; prompt length = the cue's unless prompt_tokens pads it), vocab (random "
                "words, BBT), text (p0_text), zeros; auto = cue where possible, else vocab"})
    p0_text: str = field(default="", metadata={"help": "text whose embeddings are p0 (with p0=text)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "projection", Projection(self.projection))
        object.__setattr__(self, "p0", P0Init(self.p0))
        if self.prompt_tokens < 0:
            raise ConfigError(f"prompt_tokens must be >= 1 (or 0 = chosen by the p0 start), got {self.prompt_tokens}")
        if self.intrinsic_dim < 1:
            raise ConfigError(f"intrinsic_dim must be >= 1, got {self.intrinsic_dim}")
        if not self.alpha >= 0 or not math.isfinite(self.alpha):
            raise ConfigError(f"alpha={self.alpha}: it must be > 0 (or 0 = chosen by the p0 start)")
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
              sigma0: float = 1.0, p0_ids: tuple[int, ...] = ()) -> "Subspace":
        """`sigma0` is the optimizer's initial step: the std rule divides by it, so the step in embedding space
        is ``alpha * std_hat`` whatever sigma0 is. `p0_ids` (with ``p0=text``) gives p0's tokens directly: the
        tuner's cue start knows them, and a padded cue's text would tokenize differently (newlines merge)."""
        config = replace(config, prompt_tokens=config.prompt_tokens or CPU_PROMPT_TOKENS)
        emb = vocab.embeddings.float()
        n, hidden, d = config.prompt_tokens, emb.shape[1], config.intrinsic_dim
        mb = n * hidden * d * 4 / 2**20
        if mb > MAX_PROJECTION_MB:  # refused before torch tries to allocate it
            raise ConfigError(f"intrinsic_dim={d} with prompt_tokens={n} makes the projection A ({n * hidden} x {d}) "
                              f"{mb:,.0f} MB, over {MAX_PROJECTION_MB} MB: lower intrinsic_dim (BBT uses 500) or "
                              "prompt_tokens")
        gen = torch.Generator().manual_seed(seed)
        std = (config.alpha or ALPHA_FROM_WORDS) * float(emb.std()) / (np.sqrt(d) * sigma0)
        if config.projection is Projection.NORMAL:
            A = torch.randn(n * hidden, d, generator=gen) * std
        else:
            A = (torch.rand(n * hidden, d, generator=gen) * 2 - 1) * std * np.sqrt(3.0)
        return cls(A, _p0(vocab, config, gen, allowed, p0_ids))


def _p0(vocab: Vocabulary, config: SubspaceConfig, gen: torch.Generator, allowed: torch.Tensor | None,
        p0_ids: tuple[int, ...] = ()) -> torch.Tensor:
    n, emb = config.prompt_tokens, vocab.embeddings.float()
    if config.p0 is P0Init.ZEROS:
        return torch.zeros(n, emb.shape[1])
    if config.p0 is P0Init.TEXT:
        ids = list(p0_ids) or vocab.tokenizer.encode(config.p0_text, add_special_tokens=False)
        if len(ids) != n:
            raise ConfigError(
                f"p0_text {config.p0_text!r} is {len(ids)} tokens but prompt_tokens={n}; "
                f"set prompt_tokens={len(ids)} or change the text"
            )
        return emb[ids].clone()
    pool = torch.nonzero(allowed if allowed is not None else vocab.allowed_mask("words")).flatten()
    pick = pool[torch.randperm(len(pool), generator=gen)[:n]]
    return emb[pick].clone()
