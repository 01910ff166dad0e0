"""A boosted ensemble of text prompts: several weak (prompt, readout) pairs voting, as in PromptBoosting.

One text prompt read by a small readout is a weak classifier; several, each fitted where the earlier ones were
wrong, make a strong one (Hou et al., ICML 2023: AdaBoost's multi-class form SAMME over a pool of prompts, each
with a learned verbalizer). Each round fits every candidate readout of every pool prompt on the training answers
resampled by the current example weights, keeps the pair with the lowest weighted error, and raises the weight of
the examples it got wrong. The weak readouts are the ones with few parameters (``bias``, ``verbalizer``): a
readout that memorises its training answers has no error left to weigh, and boosting then stops after one round.

Prediction reads every member's prompt, so an ensemble of m distinct prompts costs m calls per input.

    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1])
    >>> a = Answers(np.log([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6]]))  # each wrong on another example
    >>> b = Answers(np.log([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9]]))
    >>> c = Answers(np.log([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]))
    >>> ensemble = boost([a, b, c], y, rounds=3, kinds=("raw",))
    >>> [m.prompt for m in ensemble.members], ensemble.predict([a, b, c]).tolist()
    ([0, 1, 2], [0, 0, 1, 1])
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from bbtune.search.answers import Answers
from bbtune.search.losses import label_log_softmax
from bbtune.search.readouts.choice import available
from bbtune.search.readouts.estimators import Readout, ReadoutKind, load_readout, make_readout

WEAK = (ReadoutKind.BIAS, ReadoutKind.VERBALIZER)
DEFAULT_ROUNDS = 5


@dataclass(frozen=True)
class Member:
    """One weak classifier: which pool prompt it reads, its readout, and its vote (SAMME's alpha)."""

    prompt: int
    readout: Readout
    weight: float


@dataclass(frozen=True)
class BoostedReadout:
    """The ensemble: members' weighted votes, over the pool prompts they read."""

    members: tuple[Member, ...]
    n_labels: int

    @property
    def prompts(self) -> tuple[int, ...]:
        """The pool prompts a prediction reads (one call per input each)."""
        return tuple(sorted({m.prompt for m in self.members}))

    def log_scores(self, answers: Sequence[Answers]) -> np.ndarray:
        """(B, L) normalized votes; `answers[i]` is pool prompt i's answers on the inputs (only `prompts` read)."""
        votes = np.zeros((len(answers[self.members[0].prompt]), self.n_labels))
        for member in self.members:
            votes[np.arange(len(votes)), member.readout.predict(answers[member.prompt])] += member.weight
        return label_log_softmax(votes)

    def predict(self, answers: Sequence[Answers]) -> np.ndarray:
        return self.log_scores(answers).argmax(axis=1)

    def as_json(self) -> dict[str, Any]:
        return {"n_labels": self.n_labels, "members": [{"prompt": m.prompt, "weight": m.weight,
                                                        "readout": m.readout.describe()} for m in self.members]}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> "BoostedReadout":
        return cls(tuple(Member(int(m["prompt"]), load_readout(m["readout"]), float(m["weight"]))
                         for m in saved["members"]), int(saved["n_labels"]))


def boost(pool: Sequence[Answers], y: np.ndarray, rounds: int = DEFAULT_ROUNDS,
          kinds: Sequence[ReadoutKind | str] = WEAK, seed: int = 0) -> BoostedReadout:
    """SAMME over every (pool prompt, readout kind) pair, `rounds` at most (module docstring). Stops early where
    the best pair is no better than chance under the weights, or makes no error (it would get an infinite vote).
    Kinds that read the top-k are left out where the pool's answers carry none."""
    y = np.asarray(y, dtype=int)
    kinds = available(kinds, all(a.topk is not None for a in pool)) or [ReadoutKind.BIAS]
    n_labels = pool[0].labels.shape[1]
    weights = np.full(len(y), 1.0 / len(y))
    rng = np.random.default_rng(seed)
    members: list[Member] = []
    for _ in range(rounds):
        rows = np.sort(rng.choice(len(y), size=len(y), p=weights))
        best: tuple[float, int, Readout, np.ndarray] | None = None
        for i, answers in enumerate(pool):
            for kind in kinds:
                readout = make_readout(kind, quick=True).fit(answers.select(rows), y[rows])
                wrong = readout.predict(answers) != y
                error = float(weights[wrong].sum())
                if best is None or error < best[0]:
                    best = (error, i, readout, wrong)
        assert best is not None
        error, prompt, readout, wrong = best
        if error >= 1.0 - 1.0 / n_labels:  # no better than chance: nothing left to learn
            break
        alpha = math.log((1.0 - max(error, 1e-10)) / max(error, 1e-10)) + math.log(n_labels - 1)
        members.append(Member(prompt, readout, alpha))
        if error == 0.0:  # perfect on train: its vote decides alone
            break
        weights = weights * np.exp(alpha * wrong)
        weights /= weights.sum()
    if not members:  # not even one pair beat chance: the first prompt, calibrated, alone
        members.append(Member(0, make_readout(ReadoutKind.BIAS).fit(pool[0], y), 1.0))
    return BoostedReadout(tuple(members), n_labels)
