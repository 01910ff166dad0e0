"""A model's vocabulary as bbtune needs it: tokenizer plus the embedding of every token.

"The embedding of a token" has one definition in bbtune: what the model's input-embedding *module* outputs for
its id (`token_embeddings`), which is what the text around a prompt goes through. It is not the module's weight
row: Gemma's module multiplies the rows by ``embed_scale`` = sqrt(hidden) (25.3 for Gemma 3 270M), so prompts
built from raw rows were 25 times too small next to the text. Reading the module's output takes the model's own
scale, whatever its family calls it. The subspace (p0, A's std rule), discretization (nearest tokens, both
metrics), the gradient baselines' start, ``prompt_embeds`` requests and PEFT export all read this space.
A remote backend gets it from a local copy of the same model family (HF dir or GGUF).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

import torch

from bbtune.constants import COMMON_WORD_RANK

_CHUNK = 32768  # ids embedded per call: bounds the extra memory for a 262k-token vocabulary
_WORD = re.compile(r"^ ?[A-Za-z]+$")
_COMMON = re.compile(r"^ [a-z]{3,}$")  # a lower-case word of >= 3 letters that starts a new word
FILTERS = ("words", "common", "printable", "all")


def token_embeddings(model: Any, ids: Iterable[int]) -> torch.Tensor:
    """(len(ids), hidden) float32 CPU embeddings of token ids: the input-embedding module's output (scale included).

    >>> # token_embeddings(model, [5, 7]) == model.get_input_embeddings()(torch.tensor([5, 7])) as float32
    """
    module = model.get_input_embeddings()
    with torch.no_grad():
        ids_tensor = torch.as_tensor(list(ids), dtype=torch.long, device=module.weight.device)
        return module(ids_tensor).detach().float().cpu()


@dataclass(frozen=True, eq=False)
class Vocabulary:
    tokenizer: Any
    embeddings: torch.Tensor  # (vocab, hidden) float32 on cpu: `token_embeddings` of every id

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any) -> "Vocabulary":
        rows = model.get_input_embeddings().weight.shape[0]
        size = len(tokenizer) if len(tokenizer) <= rows else rows
        chunks = [token_embeddings(model, range(start, min(start + _CHUNK, size))) for start in range(0, size, _CHUNK)]
        return cls(tokenizer, torch.cat(chunks))

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
