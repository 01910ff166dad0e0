"""Tasks: labelled data, a template with slots for the input and the label word, and a verbalizer.

A task is of one of two kinds (`TaskKind`): *classify* (a label from a fixed set, scored through its verbalizer
word) or *generate* (the label is a free-text answer, e.g. "Paris"; no verbalizer: the answer is scored by its
own likelihood or by a metric on the generated text, see `bbtune.search.objective`).

A template is a string such as ``"{text} It was{label}"``: ``{text}`` (and ``{text_b}`` for pairs) take the
input, ``{label}`` marks where the label word goes and must come last, because a causal LM scores the
next token after the template. The verbalizer maps each label to a word (usually with its leading space:
``" great"``); a word of several tokens (``" very negative"``) is scored exactly, as the sum of its tokens'
log-probs, teacher forced (see `verbalizer_token_sequences`).

Where the tuned prompt goes is a task option (`Placement`): before the input (BBT's prefix) or after it,
just before the label cue. After the input lets a backend reuse the input's keys/values for every candidate.

Example:
    >>> fmt = TaskFormat(Template("{text} It was{label}"), {"negative": " bad", "positive": " good"})
    >>> fmt.render(Example("a fine film", "positive"))
    Rendered(head='a fine film', cue=' It was')
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Mapping, Protocol, Sequence

import numpy as np

from bbtune.errors import TaskError, VerbalizerError

_SLOT = re.compile(r"\{(text|text_b|label)\}")


class Placement(str, Enum):
    """Where the tuned prompt sits in the model input."""

    PREFIX = "prefix"  # <prompt> <input> <cue> [label]   (BBT)
    SUFFIX = "suffix"  # <input> <prompt> <cue> [label]   (lets the input's KV cache be reused)


class TaskKind(str, Enum):
    """What a task's label is: a class with a verbalizer word, or a free-text answer."""

    CLASSIFY = "classify"
    GENERATE = "generate"


@dataclass(frozen=True)
class Example:
    """One labelled input; `text_b` is the second sentence of a pair task."""

    text: str
    label: str
    text_b: str | None = None


@dataclass(frozen=True)
class Rendered:
    """An example split around the prompt slot: `head` holds the input, `cue` leads to the label word."""

    head: str
    cue: str


@dataclass(frozen=True)
class Template:
    """A pattern with `{text}`, optional `{text_b}`, and `{label}` last."""

    pattern: str = "{text} It was{label}"

    def __post_init__(self) -> None:
        slots = _SLOT.findall(self.pattern)
        if "text" not in slots:
            raise TaskError(f"template {self.pattern!r} has no {{text}} slot; add one where the input goes")
        if slots.count("label") != 1 or not self.pattern.endswith("{label}"):
            raise TaskError(
                f"template {self.pattern!r} must end with exactly one {{label}} slot "
                "(a causal LM scores the label word as the next token), e.g. '{text} It was{label}'"
            )
        if re.sub(_SLOT, "", self.pattern).count("{") or re.sub(_SLOT, "", self.pattern).count("}"):
            raise TaskError(f"template {self.pattern!r} has an unknown slot; use only {{text}}, {{text_b}}, {{label}}")

    @property
    def is_pair(self) -> bool:
        return "{text_b}" in self.pattern

    def render(self, example: Example) -> Rendered:
        body, last_slot = self._body_and_cue_start()
        if self.is_pair and example.text_b is None:
            raise TaskError(f"template {self.pattern!r} needs text_b but the example has none: {example.text[:60]!r}")
        fill = {"text": example.text, "text_b": example.text_b or ""}
        head = _SLOT.sub(lambda m: fill[m.group(1)], body[:last_slot])
        return Rendered(head=head, cue=body[last_slot:])

    def without_cue(self) -> tuple["Template", str]:
        """This template with its cue (the words between the last input slot and the label) removed, and the cue:
        a tuned prompt can take the cue's place and start from its words."""
        body, last_slot = self._body_and_cue_start()
        return Template(body[:last_slot] + "{label}"), body[last_slot:]

    def _body_and_cue_start(self) -> tuple[str, int]:
        body = self.pattern[: -len("{label}")]
        return body, max(body.rfind(slot) + len(slot) for slot in ("{text}", "{text_b}") if slot in body)


@dataclass(frozen=True)
class TaskFormat:
    """What a backend needs to score examples: template, verbalizer (label -> word) and prompt placement.
    A generation task (`kind` generate) has no verbalizer: its labels are free-text answers."""

    template: Template
    verbalizer: Mapping[str, str]
    placement: Placement = Placement.SUFFIX
    kind: TaskKind = TaskKind.CLASSIFY

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", TaskKind(self.kind))
        if self.kind is TaskKind.GENERATE and self.verbalizer:
            raise VerbalizerError(no_verbalizer_message(dict(self.verbalizer)))
        if self.kind is TaskKind.CLASSIFY and not self.verbalizer:
            raise VerbalizerError("the verbalizer is empty; map every label to one word, e.g. {'positive': ' great'}")
        object.__setattr__(self, "verbalizer", dict(self.verbalizer))
        object.__setattr__(self, "placement", Placement(self.placement))

    @property
    def is_generation(self) -> bool:
        return self.kind is TaskKind.GENERATE

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.verbalizer)

    def label_index(self, label: str) -> int:
        if self.is_generation:
            raise TaskError("a generation task has no label set (its labels are free-text answers); label indices, "
                            "verbalizers and label calibration apply to classification tasks only")
        try:
            return self.labels.index(label)
        except ValueError:
            raise VerbalizerError(
                f"label {label!r} has no verbalizer word; known labels: {list(self.labels)}. "
                f"Add it to the verbalizer or fix the data"
            ) from None

    def label_ids(self, examples: Sequence[Example]) -> np.ndarray:
        return np.array([self.label_index(e.label) for e in examples], dtype=np.int64)

    def render(self, example: Example) -> Rendered:
        return self.template.render(example)

    def text(self, example: Example, prompt_text: str) -> str:
        """The whole input string with a hard prompt's text in its slot: what a text API receives, and what a
        local backend must tokenize whole to score a hard prompt as that API does.

        >>> TaskFormat(Template("{text} It was{label}"), {"p": " great"}).text(Example("A film.", "p"), " Honest")
        'A film. Honest It was'
        """
        r = self.render(example)
        return prompt_text + r.head + r.cue if self.placement is Placement.PREFIX else r.head + prompt_text + r.cue


    def answer(self, example: Example) -> str:
        """A generation task's reference answer as the text that follows the input: with a leading space where the
        template puts none before ``{label}`` ('Answer:{label}' -> ' Paris'), as a model writes it.

        >>> TaskFormat(Template("Q: {text}\\nA:{label}"), {}, kind="generate").answer(Example("Capital of France?", "Paris"))
        ' Paris'
        """
        before = self.template.pattern[: -len("{label}")]
        text = example.label.strip()
        return text if before[-1:].isspace() else " " + text


def no_verbalizer_message(given: object) -> str:
    """Why a generation task refuses a verbalizer, and what to do."""
    return (f"a generation task's answers are free text, so it takes no verbalizer (got {given!r}); drop "
            "TaskConfig.verbalizer, or use a classification preset")


class _Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...


def verbalizer_token_ids(tokenizer: _Tokenizer, fmt: TaskFormat) -> list[int]:
    """One token id per label, or a `VerbalizerError` that says which word to use instead (where only a single
    token can be scored: a top-k list's logit_bias, masked LMs)."""
    ids: list[int] = []
    for label, word in fmt.verbalizer.items():
        pieces = tokenizer.encode(word, add_special_tokens=False)
        if len(pieces) != 1:
            raise VerbalizerError(multi_token_message(tokenizer, label, word, pieces))
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise VerbalizerError(f"two labels share one verbalizer token: {fmt.verbalizer}; choose distinct words")
    return ids


def verbalizer_token_sequences(tokenizer: _Tokenizer, fmt: TaskFormat) -> list[tuple[int, ...]]:
    """Each label word's token ids, as scoring sees them: a single-token word as its own id (as before), a longer
    word as the ids it gets *after the template's cue* (``encode(cue + word)`` less the cue's ids).

    Why in context: a server tokenizes the input and the word as one string (echo; chained requests send the
    input plus the word's first tokens as text), and a word's tokens can differ alone and after text. Cutting
    them out of ``cue + word`` gives the ids the whole string has, so local and remote scores are of the same
    tokens. A word whose first token merges with the cue's last one cannot be cut out; that is an error.

    >>> fmt = TaskFormat(Template("Review: {text}\nSentiment:{label}"), {"n": " very negative", "p": " positive"})
    >>> [len(ids) for ids in verbalizer_token_sequences(smollm2_tokenizer, fmt)]  # doctest: +SKIP
    [2, 1]
    """
    cue = fmt.template.without_cue()[1]
    cue_ids = tokenizer.encode(cue, add_special_tokens=False) if cue else []
    seqs: list[tuple[int, ...]] = []
    for label, word in fmt.verbalizer.items():
        if not word:
            raise VerbalizerError(f"the verbalizer word of label {label!r} is empty; give it a word, e.g. ' {label}'")
        alone = tokenizer.encode(word, add_special_tokens=False)
        if len(alone) == 1 or not cue_ids:
            seqs.append(tuple(alone))
            continue
        whole = tokenizer.encode(cue + word, add_special_tokens=False)
        if whole[: len(cue_ids)] != cue_ids or len(whole) == len(cue_ids):
            raise VerbalizerError(
                f"verbalizer word {word!r} for label {label!r} merges with the end of the template's cue {cue!r} "
                f"({tokenizer.convert_ids_to_tokens(whole[-len(alone) - 1:])}), so its tokens cannot be scored "
                "apart from the cue; start the word with a space or end the cue at a word boundary")
        seqs.append(tuple(whole[len(cue_ids):]))
    if len(set(seqs)) != len(seqs):
        raise VerbalizerError(f"two labels have the same verbalizer tokens: {fmt.verbalizer}; choose distinct words")
    return seqs


def multi_token_message(tokenizer: _Tokenizer, label: str, word: str, pieces: list[int]) -> str:
    shown = tokenizer.convert_ids_to_tokens(pieces)
    msg = f"verbalizer word {word!r} for label {label!r} is {len(pieces)} tokens for this tokenizer ({shown})"
    for alt in (" " + word.strip(), word.strip(), " " + word.strip().lower(), " " + word.strip().capitalize()):
        if alt != word and len(tokenizer.encode(alt, add_special_tokens=False)) == 1:
            return msg + f"; use {alt!r} (1 token)"
    return msg + "; choose a word that is a single token (most common words with a leading space are)"
