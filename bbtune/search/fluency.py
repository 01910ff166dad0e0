"""Fluency of a hard prompt: the model's own log-probability of the prompt text.

A hard search that only minimizes the task loss finds word salad (`' politicdat TechnStepcept'`). Adding the
prompt's mean negative log-likelihood per token (its log-perplexity) to the loss, as PEZ's fluency-regularized
variant does, pulls the search towards text the model itself finds likely, i.e. text a person can read:

    loss(p) = task_loss(p) + w * NLL(p),   NLL(p) = -1/n * sum_i log P(t_i | <start>, t_<i)

A remote backend is judged by its local copy of the same model (`--remote-local-model`), so the term costs no
paid request. The same scorer tells whole words from word pieces for the ``common`` vocabulary: after a piece
(`' researc'`) the model expects more letters, after a word it expects a space or punctuation.

Example:
    >>> scorer = text_scorer(LocalBackend("tiny"))          # doctest: +SKIP
    >>> perplexity(scorer, " the film was great")           # doctest: +SKIP
"""
from __future__ import annotations

import math
import re
import weakref
from functools import cached_property
from typing import Any, Sequence

import numpy as np
import torch

from bbtune.backends.base import Backend
from bbtune.constants import FLUENCY_BATCH, WORD_PIECE_MIN_P
from bbtune.errors import CapabilityError, ConfigError
from bbtune.core.prompts import HardPrompt, Prompt

_LETTER = re.compile(r"^[A-Za-z]")  # a token that would continue the word before it
_SCORERS: "weakref.WeakKeyDictionary[Any, TextScorer]" = weakref.WeakKeyDictionary()  # one per model


class TextScorer:
    """Log-probabilities of whole texts under a causal LM (`model`, `tokenizer` as `LocalBackend` holds them)."""

    def __init__(self, model: Any, tokenizer: Any):
        if "MaskedLM" in type(model).__name__:
            raise CapabilityError("fluency and vocab_filter=common need a causal LM to read the prompt; "
                                  "this model is a masked LM: use fluency=0 and another vocab_filter")
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self._pieces: dict[int, float] = {}

    @cached_property
    def start_id(self) -> int:
        """The token a text is read after: the document separator of byte-level BPE models (`<|endoftext|>`),
        else BOS, else EOS; so a prompt is judged as the start of a text, the same way for every candidate."""
        tok = self.tokenizer
        sep = tok.get_vocab().get("<|endoftext|>")
        for candidate in (sep, tok.bos_token_id, tok.eos_token_id):
            if candidate is not None:
                return int(candidate)
        raise CapabilityError("the tokenizer has no <|endoftext|>, BOS or EOS token to start a text with")

    def nll(self, texts: Sequence[str]) -> np.ndarray:
        """Mean negative log-likelihood per token of each text (nats); an empty text scores 0."""
        encoded = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        out = np.zeros(len(texts))
        for start in range(0, len(texts), FLUENCY_BATCH):
            part = encoded[start:start + FLUENCY_BATCH]
            if any(part):
                out[start:start + len(part)] = self._nll_batch(part)
        return out

    def _nll_batch(self, encoded: list[list[int]]) -> np.ndarray:
        longest = max(map(len, encoded))
        ids = torch.zeros(len(encoded), longest + 1, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        ids[:, 0], mask[:, 0] = self.start_id, 1
        for row, seq in enumerate(encoded):  # right padding: the padded tail is masked out of the sum
            ids[row, 1:len(seq) + 1] = torch.tensor(seq, dtype=torch.long)
            mask[row, 1:len(seq) + 1] = 1
        with torch.inference_mode():
            logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
        token_logp = logp.gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
        counts = mask[:, 1:].sum(1).clamp(min=1)
        return (-token_logp.sum(1) / counts).cpu().numpy()

    def piece_probability(self, token_ids: Sequence[int]) -> torch.Tensor:
        """For each token, the probability that the model's next token continues it with letters (no space).
        Kept: a benchmark builds many tuners over one backend (one scorer, see `text_scorer`) and the test reads
        thousands of tokens."""
        known = self._pieces
        missing = [i for i in dict.fromkeys(token_ids) if i not in known]
        if missing:
            known.update(zip(missing, self._piece_probability(missing).tolist()))
        return torch.tensor([known[i] for i in token_ids])

    def _piece_probability(self, token_ids: Sequence[int]) -> torch.Tensor:
        decoded = [self.tokenizer.decode([i]) for i in range(len(self.tokenizer))]
        letters = torch.tensor([bool(_LETTER.match(s)) for s in decoded], device=self.device)
        out = []
        for start in range(0, len(token_ids), FLUENCY_BATCH):
            part = torch.tensor(list(token_ids[start:start + FLUENCY_BATCH]), dtype=torch.long, device=self.device)
            ids = torch.stack([torch.full_like(part, self.start_id), part], dim=1)
            with torch.inference_mode():
                logits = self.model(input_ids=ids).logits[:, -1, : len(letters)].float()
            out.append(torch.softmax(logits, dim=-1)[:, letters].sum(-1))
        return torch.cat(out).cpu() if out else torch.zeros(0)


def text_scorer(backend: Backend) -> TextScorer:
    """The scorer that judges `backend`'s prompts: its own model, or a remote backend's local copy."""
    local = backend.local_model()
    if local is None:
        raise CapabilityError(f"backend {backend.name!r} has no local model to read prompts with; use a local "
                              "backend or set RemoteConfig.local_model, or run with fluency=0")
    if local.model not in _SCORERS:
        _SCORERS[local.model] = TextScorer(local.model, local.vocabulary().tokenizer)
    return _SCORERS[local.model]


def prompt_nll(scorer: TextScorer, prompts: Sequence[Prompt]) -> np.ndarray:
    """Mean NLL per token of each hard prompt's text (what an API receives), repeated prompts read once."""
    texts = [p.text for p in prompts if isinstance(p, HardPrompt)]
    if len(texts) != len(prompts):
        raise CapabilityError("fluency is defined for hard prompts only; use mode=hard with fluency")
    unique = list(dict.fromkeys(texts))
    nll = dict(zip(unique, scorer.nll(unique)))
    return np.array([nll[t] for t in texts])


def perplexity(scorer: TextScorer, text: str) -> float:
    """exp(mean NLL per token) of `text` read as the start of a document; 1.0 for an empty text."""
    return math.exp(float(scorer.nll([text])[0]))


def whole_words(scorer: TextScorer, allowed: torch.Tensor, max_piece_p: float = WORD_PIECE_MIN_P) -> torch.Tensor:
    """`allowed` less the tokens the model reads as word pieces: it expects more letters after them more than
    `max_piece_p` of the time and twice as often as after the median candidate (a model that cannot tell,
    e.g. an untrained one, keeps every token rather than none)."""
    ids = torch.nonzero(allowed).flatten()
    keep = allowed.clone()
    piece = scorer.piece_probability(ids.tolist())
    keep[ids] = piece < max(max_piece_p, 2 * float(piece.median()) if len(piece) else 0.0)
    if not keep.any():
        raise ConfigError("vocab_filter=common leaves no whole word for this model; use vocab_filter=words")
    return keep
