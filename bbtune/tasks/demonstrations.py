"""Demonstrations: labelled training examples written into the template, before every input (in-context learning).

Written into the template rather than into the prompt, they are part of the task: every prompt a run tries, the
manual one included, is read with them in front; the run folder keeps the template, so `predict`, `load_run` and a
text-only API see the same text; and a readout of the returned log-probs reads what they make the model say. The
examples shown are taken out of train, so no readout or search scores an example that is shown to it.

    >>> from bbtune.tasks.task import load_task
    >>> task = load_task("demo", k=4, test_limit=4, demonstrations=1)  # or: task.with_demonstrations(1, seed)
    >>> len(task.train), task.format.template.pattern.split("{text}")[0].count("\\n")  # 8 less one per label; 2 shown, 2 lines each
    (6, 4)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bbtune.errors import TaskError
from bbtune.tasks.format import Example, TaskFormat, Template

SEPARATOR = "\n"  # between demonstrations, and between the last one and the input


def sample_demonstrations(examples: Sequence[Example], fmt: TaskFormat, shots_per_class: int, seed: int,
                          usable: frozenset[int] | None = None, setting: str = "demonstrations") -> list[Example]:
    """`shots_per_class` of `examples` for each label, in a seeded random order; `usable` (indices into
    `examples`) limits which may be drawn; `setting` is what an error tells the user to lower."""
    rng = np.random.default_rng(seed)
    picked: list[Example] = []
    for label in fmt.labels:
        pool = [ex for i, ex in enumerate(examples) if ex.label == label and (usable is None or i in usable)]
        if len(pool) < shots_per_class:
            raise TaskError(f"label {label!r} has {len(pool)} training examples to show; lower {setting} "
                            f"(now {shots_per_class})")
        picked += [pool[i] for i in rng.choice(len(pool), size=shots_per_class, replace=False)]
    return [picked[i] for i in rng.permutation(len(picked))]


def demonstration_text(examples: Sequence[Example], fmt: TaskFormat, separator: str = SEPARATOR) -> str:
    """Each example as the template renders it, completed by its label word; ends with the separator."""
    shown = []
    for ex in examples:
        rendered = fmt.render(ex)
        shown.append(rendered.head + rendered.cue + fmt.verbalizer[ex.label])
    return separator.join(shown) + separator


def shown_in_template(train: Sequence[Example], fmt: TaskFormat, per_class: int, seed: int,
                      separator: str = SEPARATOR) -> tuple[Template, tuple[Example, ...]]:
    """The template with `per_class` examples of `train` for each label written before its input, and train
    without them (`Task.with_demonstrations`). Examples whose text holds a brace cannot be written into a template
    and are not drawn."""
    if fmt.is_generation:
        raise TaskError("demonstrations need a classification task (labels to draw them by); set demonstrations=0")
    smallest = min(sum(ex.label == label for ex in train) for label in fmt.labels)
    if per_class >= smallest:
        raise TaskError(f"demonstrations={per_class} per class leaves no training example of some label (train has "
                        f"{smallest}); show fewer, or raise k")
    writable = frozenset(i for i, ex in enumerate(train) if not _has_brace(ex))
    shown = sample_demonstrations(train, fmt, per_class, seed, writable)
    ids = {id(ex) for ex in shown}
    return (Template(demonstration_text(shown, fmt, separator) + fmt.template.pattern),
            tuple(ex for ex in train if id(ex) not in ids))


def _has_brace(example: Example) -> bool:
    return any(c in text for text in (example.text, example.text_b or "") for c in "{}")

