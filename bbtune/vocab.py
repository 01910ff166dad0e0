"""A model's vocabulary as bbtune needs it: tokenizer plus input-embedding matrix.

Both the subspace (A's scale comes from embedding statistics) and discretization (nearest tokens) read it;
a remote backend gets it from a local copy of the same model family (HF dir or GGUF).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

import torch

from .constants import COMMON_WORD_RANK

_WORD = re.compile(r"^ ?[A-Za-z]+$")
_COMMON = re.compile(r"^ [a-z]{3,}$")  # a lower-case word of >= 3 letters that starts a new word
FILTERS = ("words", "common", "printable", "all")


@dataclass(frozen=True, eq=False)
class Vocabulary:
    tokenizer: Any
    embeddings: torch.Tensor  # (vocab, hidden), float32 on cpu

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any) -> "Vocabulary":
        weight = model.get_input_embeddings().weight.detach().float().cpu()
        return cls(tokenizer, weight[: len(tokenizer)] if len(tokenizer) <= weight.shape[0] else weight)

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    @cached_property
    def decoded(self) -> list[str]:
        """Each id decoded on its own (what the token contributes to a text)."""
        return [self.tokenizer.decode([i]) for i in range(self.size)]

    def allowed_mask(self, mode: str = "words", block: Iterable[str] = ()) -> torch.Tensor:
        """Boolean mask of tokens a hard prompt may use.

        'words': alphabetic tokens with an optional leading space (round-trip safe, but word pieces too);
        'common': lower-case words of >= 3 letters after a space among the first `COMMON_WORD_RANK` ids (a BPE
        vocabulary is in merge order, so low ids are frequent strings: no names, few pieces; `fluency.whole_words`
        removes the pieces left); 'printable': any token that decodes to printable text without special tokens; 'all': every
        non-special token. Tokens whose stripped text is in `block` are excluded.
        """
        if mode not in FILTERS:
            raise ValueError(f"vocab filter {mode!r} is not one of {', '.join(FILTERS)}")
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        blocked = {b.strip().lower() for b in block}
        mask = torch.zeros(self.size, dtype=torch.bool)
        for i, text in enumerate(self.decoded):
            if i in special or text.strip().lower() in blocked:
                continue
            if mode == "words":
                ok = bool(_WORD.match(text))
            elif mode == "common":
                ok = i < COMMON_WORD_RANK and bool(_COMMON.match(text))
            elif mode == "printable":
                ok = text.strip() != "" and text.isprintable() and "\ufffd" not in text
            else:
                ok = True
            mask[i] = ok
        if not mask.any():
            raise ValueError(f"vocab filter {mode!r} leaves no token; use 'printable' or 'all'")
        return mask
