"""The one seam between the tuner and a model: `Backend.score`.

A backend scores a batch of candidate prompts (all soft or all hard) on a batch of examples and returns
log-probabilities of every label word, shape (n_prompts, n_examples, n_labels). One call scores a whole
CMA-ES population. What a backend accepts is declared in `capabilities` and checked before a run starts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import numpy as np

from bbtune.errors import CapabilityError
from bbtune.core.prompts import Prompt

if TYPE_CHECKING:
    from bbtune.tasks import Example, TaskFormat
    from bbtune.core.vocab import Vocabulary


@dataclass(frozen=True)
class Capabilities:
    """What a backend can score. `gradients`: it can also give gradients w.r.t. soft prompts (local only)."""

    soft: bool
    hard: bool = True
    gradients: bool = False

    def require(self, kind: str, backend_name: str) -> None:
        if not getattr(self, kind):
            hint = {
                "soft": "use a hard-prompt method (projection in the loop) or a backend that accepts prompt embeddings",
                "hard": "use soft prompts with this backend",
                "gradients": "gradient baselines need a LocalBackend",
            }[kind]
            raise CapabilityError(f"backend {backend_name} cannot score {kind} prompts; {hint}")


@dataclass
class CallStats:
    """Counters every backend keeps. A *call* is one candidate prompt scored on one batch of examples
    (BBT's unit of budget); `examples_scored` counts (prompt, example) pairs."""

    calls: int = 0
    examples_scored: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    tokens_processed: int = 0
    labels_missing: int = 0  # label scores that are NaN: absent from a top-k reply (remote top-k scoring)

    def add(self, n_prompts: int, n_examples: int) -> None:
        self.calls += n_prompts
        self.examples_scored += n_prompts * n_examples

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@runtime_checkable
class Backend(Protocol):
    """Anything that can score prompts. Implementations: LocalBackend, RemoteBackend."""

    name: str
    capabilities: Capabilities
    stats: CallStats

    def score(self, prompts: Sequence[Prompt], examples: Sequence["Example"], fmt: "TaskFormat") -> np.ndarray:
        """Log-probs of each label word: float array (len(prompts), len(examples), len(fmt.labels))."""
        ...

    def vocabulary(self) -> "Vocabulary":
        """Tokenizer and input-embedding matrix, for `A`'s scale and for discretization."""
        ...


def check_scores(scores: np.ndarray, n_prompts: int, n_examples: int, n_labels: int, source: str) -> np.ndarray:
    """Guard the seam: shape, and numbers that are log-probs or an honest NaN ("missing": the server did not
    give this label's log-prob; `bbtune.search.losses` says what it costs). An infinity is a bug upstream and never
    reaches a loss."""
    expected = (n_prompts, n_examples, n_labels)
    if scores.shape != expected:
        raise AssertionError(f"{source} returned scores of shape {scores.shape}, expected {expected}")
    known = scores[~np.isnan(scores)]
    if not np.all(np.isfinite(known)):
        raise CapabilityError(f"{source} returned infinite log-probs; its scores cannot be trusted")
    return scores
