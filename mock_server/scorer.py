"""The mock's model: full-vocabulary log-probs from a model `bbtune.backends.models.load_model` loads.

Every sequence is run on its own (no padding), so a prompt gets the same numbers alone or inside a list,
and the numbers match `LocalBackend` on the same model to float tolerance.
"""
from __future__ import annotations

import inspect
import threading
from functools import cached_property, lru_cache
from typing import Any, Sequence

import torch

from bbtune.backends.models import load_model
from bbtune.core.vocab import token_embeddings


class Scorer:
    """Tokenizes, runs and decodes for the endpoints; one forward at a time (the model is shared by threads)."""

    def __init__(self, model: str = "tiny", *, loaded: tuple[Any, Any] | None = None):
        self.model, self.tokenizer = loaded if loaded is not None else load_model(model)
        self._lock = threading.Lock()
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @cached_property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @cached_property
    def token_texts(self) -> list[str]:
        """What each token id decodes to on its own, as OpenAI-style replies name tokens."""
        return [self.tokenizer.decode([i]) for i in range(self.vocab_size)]

    def encode(self, text: str) -> list[int]:
        """Text prompt -> ids, special tokens included (as vLLM's default add_special_tokens=True)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def chat_ids(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The chat template with a generation prompt, or the messages joined by newlines if there is none."""
        if getattr(self.tokenizer, "chat_template", None):
            rendered = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
            return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        return self.encode("\n".join(str(m.get("content", "")) for m in messages))

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """What a text's ids become before the first layer: the same space a `prompt_embeds` request is in."""
        return token_embeddings(self.model, ids)

    def logprobs(self, embeds: torch.Tensor, bias: dict[int, float] | None = None, every_position: bool = True) -> torch.Tensor:
        """(seq_len, vocab) log-probs of the token after each position, or (1, vocab) for the last one only
        (the LM head over every position is a fifth of a small model's work); `bias` is added to the logits."""
        table = self.model.get_input_embeddings().weight
        keep = {"logits_to_keep": 1} if self._keeps_logits and not every_position else {}
        with self._lock, torch.inference_mode():
            logits = self.model(inputs_embeds=embeds.to(table.dtype)[None], use_cache=False, **keep).logits[0].float()
            logits = logits[:, : self.vocab_size].clone()
            if bias:
                ids = torch.tensor(list(bias), dtype=torch.long)
                logits[:, ids] += torch.tensor(list(bias.values()), dtype=logits.dtype)
            return torch.log_softmax(logits if every_position else logits[-1:], dim=-1)

    def top(self, row: torch.Tensor, k: int) -> list[tuple[int, float]]:
        """The k most likely (id, log-prob), best first."""
        if k <= 0:
            return []
        values, ids = torch.topk(row, min(k, row.shape[0]))
        return list(zip(ids.tolist(), values.tolist()))


@lru_cache(maxsize=4)
def shared_scorer(model: str = "tiny") -> Scorer:
    """One Scorer per model per process, so tests that start many servers load the model once."""
    return Scorer(model)
