"""Scoring any strings after each input (`Backend.continuation_logprobs`) with a backend's label scorer.

A continuation is a label word by another name: the strings after example b's input are scored as the words of a
verbalizer. Examples with the same strings (every example, when they are a task's label words) form one group,
scored in one call of the backend's fast path; examples with strings of their own (generation tasks' references)
make a group each.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from bbtune.core.prompts import Prompt
from bbtune.errors import TaskError
from bbtune.tasks import Example, TaskFormat, TaskKind

LabelScorer = Callable[[Sequence[Prompt], Sequence[Example], TaskFormat], np.ndarray]


def score_continuations(score: LabelScorer, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                        continuations: Sequence[Sequence[str]]) -> np.ndarray:
    """(P, B, C) log-probs of ``continuations[b][c]`` after row (p, b)'s input, from `score` (P, B', L) label
    log-probs of a format whose verbalizer words are the strings.

    >>> fake = lambda ps, exs, f: np.zeros((len(ps), len(exs), len(f.verbalizer)))
    >>> score_continuations(fake, ["p"], [Example("a", "x")], fmt, [[" yes", " no"]]).shape  # doctest: +SKIP
    (1, 1, 2)
    """
    n_strings = check_continuations(examples, continuations)
    out = np.empty((len(prompts), len(examples), n_strings))
    groups: dict[tuple[str, ...], list[int]] = {}
    for b, strings in enumerate(continuations):
        groups.setdefault(tuple(strings), []).append(b)
    for strings, rows in groups.items():
        distinct = list(dict.fromkeys(strings))  # a string listed twice is scored once
        # scored as a classification format whose labels are the strings (a generation task's format has none)
        words = replace(fmt, verbalizer={f"#{i}": s for i, s in enumerate(distinct)}, kind=TaskKind.CLASSIFY)
        scores = score(prompts, [examples[b] for b in rows], words)
        out[:, rows] = scores[:, :, [distinct.index(s) for s in strings]]
    return out


def check_continuations(examples: Sequence[Example], continuations: Sequence[Sequence[str]]) -> int:
    """The number of strings per example, or a `TaskError` saying what is wrong with them."""
    if not examples:
        raise TaskError("continuation_logprobs() got no examples; give at least one")
    if isinstance(continuations, str) or len(continuations) != len(examples):
        raise TaskError(f"continuations must hold one list of strings per example ({len(examples)}), "
                        f"got {len(continuations) if not isinstance(continuations, str) else 'a string'}")
    sizes = {len(c) for c in continuations}
    if len(sizes) != 1 or 0 in sizes:
        raise TaskError(f"every example needs the same number (>= 1) of continuations, got {sorted(sizes)}")
    for b, strings in enumerate(continuations):
        if isinstance(strings, str) or not all(isinstance(s, str) and s for s in strings):
            raise TaskError(f"continuations[{b}] must be a list of non-empty strings, got {strings!r}")
    return sizes.pop()
