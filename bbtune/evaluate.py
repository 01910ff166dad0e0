"""Scoring a fixed prompt on a set of examples (dev, test, transfer), in chunks so big sets fit memory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .backends.base import Backend
from .losses import accuracy, per_prompt_loss
from .prompts import Prompt
from .tasks import Example, TaskFormat


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float  # cross-entropy over the label words
    n: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_acc": self.accuracy, f"{prefix}_loss": self.loss, f"{prefix}_n": self.n}


def evaluate(backend: Backend, prompt: Prompt, examples: Sequence[Example], fmt: TaskFormat, chunk: int = 64) -> Evaluation:
    """Accuracy and CE of one prompt on `examples`; counts as len(examples)/chunk model calls."""
    if not examples:
        raise ValueError("evaluate() got no examples")
    scores = np.concatenate(
        [backend.score([prompt], examples[i : i + chunk], fmt) for i in range(0, len(examples), chunk)], axis=1
    )
    labels = fmt.label_ids(examples)
    return Evaluation(float(accuracy(scores, labels)[0]), float(per_prompt_loss(scores, labels)[0]), len(examples))
