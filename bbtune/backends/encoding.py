"""Token ids a local model scores: each example's input, the cue, the label words, and the special tokens that
start a sequence, checked against the model's context (or cut to `max_input_tokens`, as text, so every path
and every server sees the same truncated input)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Iterator, Sequence

from bbtune.core.prompts import HardPrompt
from bbtune.errors import TaskError, VerbalizerError
from bbtune.tasks import Example, Placement, TaskFormat, multi_token_message, verbalizer_token_sequences
from bbtune.backends.labeltrie import LabelTrie


@dataclass(frozen=True)
class Encoded:
    """Token ids of a batch of examples under one format."""

    lead: list[int]  # special tokens that start every sequence (BOS / CLS), maybe empty
    heads: list[list[int]]  # each example's input part
    cue: list[int]  # the text between input and label word
    label_seqs: list[tuple[int, ...]]  # each label word's tokens (see `verbalizer_token_sequences`)
    trie: LabelTrie = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trie", trie_of(tuple(self.label_seqs)))

    @property
    def label_ids(self) -> list[int]:
        """The label tokens of single-token words (what one forward reads)."""
        assert self.trie.single, "multi-token label words are read step by step (`trie`)"
        return [s[0] for s in self.label_seqs]

    def before_prompt(self, placement: Placement) -> list[list[int]]:
        """Per example, the ids a prompt follows: lead + input (suffix) or the lead alone (prefix)."""
        return [self.lead + (head if placement is Placement.SUFFIX else []) for head in self.heads]


@lru_cache(maxsize=16)
def trie_of(label_seqs: tuple[tuple[int, ...], ...]) -> LabelTrie:
    """The trie of a verbalizer's token sequences, built once: a whole vocabulary read as labels
    (`LocalBackend.score_topk`) is tens of thousands of words, scored chunk after chunk."""
    return LabelTrie.build(label_seqs)


class InputEncoder:
    """Encodes examples for one tokenizer; label ids are computed once per verbalizer."""

    def __init__(self, tokenizer: Any, is_masked: bool, context_length: int, max_input_tokens: int | None):
        self.tokenizer, self.is_masked = tokenizer, is_masked
        self.context_length, self.max_input_tokens = context_length, max_input_tokens
        self._label_seqs: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[int, ...]]] = {}
        self.whole_vocabulary = 0  # > 0: every token id below it is read as a "label" (`LocalBackend.score_topk`)

    def lead(self) -> list[int]:
        """Special tokens that start every sequence (BOS / CLS), as the tokenizer adds them; maybe none."""
        special = self.tokenizer("", add_special_tokens=True)["input_ids"]
        return special[:1] if special and (self.is_masked or special[0] == self.tokenizer.bos_token_id) else []

    def encode(self, examples: Sequence[Example], fmt: TaskFormat, n_prompt: int) -> Encoded:
        label_seqs = self.label_seqs(fmt)
        lead = self.lead()
        cue = self.ids(fmt.template.render(examples[0]).cue)
        extra = len(lead) + n_prompt + len(cue) + (2 if self.is_masked else 0)
        heads = []
        for i, ex in enumerate(examples):
            ids = self.ids(fmt.render(ex).head)
            if not ids:
                raise TaskError(f"example {i} has an empty input text; remove it from the data")
            budget = self.context_length - extra
            if self.max_input_tokens is not None:
                ids = ids[: min(self.max_input_tokens, budget)]
            elif len(ids) > budget:
                raise TaskError(
                    f"example {i} ({ex.text[:40]!r}...) is {len(ids)} tokens with the template's text before it "
                    f"(any demonstrations included); with the prompt ({n_prompt}) and the rest of the template "
                    f"({extra - n_prompt}) it overflows the model's context of {self.context_length}. "
                    f"Set max_input_tokens (e.g. {budget}) to truncate inputs, or shorten them (or show fewer "
                    "demonstrations)"
                )
            heads.append(ids)
        return Encoded(lead, heads, cue, label_seqs)

    def label_seqs(self, fmt: TaskFormat) -> list[tuple[int, ...]]:
        """Each label word's token ids, computed once per verbalizer and template; a masked LM reads one token
        at its mask, so it takes single-token words only."""
        if fmt.is_generation:  # no label words: its inputs are encoded to generate after them
            return []
        if self.whole_vocabulary:  # the answer position's whole distribution: one "label" per token
            return [(i,) for i in range(self.whole_vocabulary)]
        key = (fmt.template.pattern, tuple(fmt.verbalizer.items()))
        if key not in self._label_seqs:
            seqs = verbalizer_token_sequences(self.tokenizer, fmt)
            longest = max(range(len(seqs)), key=lambda j: len(seqs[j]))
            if self.is_masked and len(seqs[longest]) > 1:
                label, word = list(fmt.verbalizer.items())[longest]
                raise VerbalizerError("a masked LM scores one token at its mask, so it takes single-token words only "
                                      "(or use a causal LM): " + multi_token_message(self.tokenizer, label, word,
                                                                                    list(seqs[longest])))
            self._label_seqs[key] = seqs
        return self._label_seqs[key]

    @contextmanager
    def reading_whole_vocabulary(self, size: int) -> Iterator[None]:
        """Within it, every token id below `size` is a one-token "label": the paths read the whole distribution."""
        self.whole_vocabulary = size
        try:
            yield
        finally:
            self.whole_vocabulary = 0

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def fit_inputs(self, examples: Sequence[Example], fmt: TaskFormat) -> Sequence[Example]:
        """With `max_input_tokens`, each example's text cut (at a token) until its input part of the template fits.
        Cut as text, so every path truncates alike: hard prompts scored as their whole string (what an API sees)
        as well as soft prompts and cached inputs."""
        if self.max_input_tokens is None:
            return examples
        return [self._fit_input(ex, fmt, self.max_input_tokens) for ex in examples]

    def _fit_input(self, ex: Example, fmt: TaskFormat, limit: int) -> Example:
        for attempt in range(8):  # decode -> encode may give a token more than was kept: cut again, deeper
            excess = len(self.ids(fmt.render(ex).head)) - limit
            name = "text_b" if ex.text_b and len(ex.text_b) > len(ex.text) else "text"
            ids = self.ids(getattr(ex, name))
            if excess <= 0 or len(ids) <= 1:
                break
            ex = replace(ex, **{name: self.tokenizer.decode(ids[: max(1, len(ids) - excess - attempt)])})
        return ex

    def text_ids(self, prompt: HardPrompt, examples: Sequence[Example], fmt: TaskFormat) -> list[list[int]]:
        """Per example, the token ids of the whole input string with the prompt's text in place, tokenized
        whole: what a text API sees (a mock or vLLM server tokenizes the same string the same way)."""
        texts = [fmt.text(ex, prompt.text) for ex in examples]
        return [self.lead() + ids for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]


def prompt_part(rows: list[list[int]], enc: Encoded, placement: Placement) -> tuple[int, ...] | None:
    """The prompt's ids in whole-string rows, when every row is lead + head + ids + cue (suffix) or
    lead + ids + head + cue (prefix) with the same ids; None when the prompt's tokens depend on the example
    or merge with the head or cue."""
    found = set()
    for row, head, before in zip(rows, enc.heads, enc.before_prompt(placement)):
        after = ([] if placement is Placement.SUFFIX else head) + enc.cue
        end = len(row) - len(after)
        if end < len(before) or row[: len(before)] != before or row[end:] != after:
            return None
        found.add(tuple(row[len(before): end]))
    return found.pop() if len(found) == 1 else None


def single_id(tokenizer: Any, text: str) -> int | None:
    """The one token id `text` is, where the tokenizer encodes it as one token that decodes back to it (what
    ``logit_bias`` needs, and so all a lifted token can be: `Backend.score_lifted`); None otherwise."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 and tokenizer.decode(ids) == text else None
