"""What goes over the wire for each scoring mode: request bodies in, label log-probs out.

Modes (`ScoreMode`), one request shape each:

- ``top_logprobs``: ``/v1/completions`` with ``max_tokens=1, logprobs=k``; the label words' log-probs are read
  from the top-k list of the next token. A label absent from the list is bounded by the k-th value (its true
  log-prob is at most that) and counted as missing.
- ``chat``: ``/v1/chat/completions`` with ``logprobs=true, top_logprobs=k``; read like ``top_logprobs``.
- ``echo``: ``/v1/completions`` with ``prompt + label word``, ``echo=true``: the label token's own log-prob,
  exact, one prompt per label.
- ``prompt_embeds``: ``/v1/completions`` with ``prompt_embeds`` (vLLM's encoding: base64 of a ``torch.save``d
  float tensor of shape (seq_len, hidden)); read like ``top_logprobs``. Soft prompts go over the wire this way.

Parsers check the reply's shape and values and raise `MalformedResponseError`; they never fill in a zero.

    >>> top_logprob_body("m", ["a b"], k=5)["logprobs"]
    5
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import MalformedResponseError

COMPLETIONS = "/completions"
CHAT = "/chat/completions"
_LOGPROB_SLACK = 1e-4  # servers round; a log-prob a hair above 0 is not an error


class ScoreMode(str, Enum):
    """How a remote server is asked for label log-probs (see the module docstring)."""

    TOP_LOGPROBS = "top_logprobs"
    ECHO = "echo"
    CHAT = "chat"
    PROMPT_EMBEDS = "prompt_embeds"

    @property
    def takes_lists(self) -> bool:
        """Whether one request can carry several prompts (chat cannot)."""
        return self is not ScoreMode.CHAT


# ---------------------------------------------------------------------- prompt_embeds codec


def encode_embeds(embeds: torch.Tensor) -> str:
    """vLLM's ``prompt_embeds`` encoding: base64 of ``torch.save`` of a (seq_len, hidden) tensor."""
    buf = io.BytesIO()
    torch.save(embeds.detach().to("cpu").contiguous(), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_embeds(data: str | bytes) -> torch.Tensor:
    """Inverse of `encode_embeds`; refuses anything but a dense 2-D float tensor (1 x n x h is squeezed)."""
    raw = base64.b64decode(data, validate=True)
    tensor = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise ValueError("prompt_embeds must decode to a floating-point torch tensor")
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 2:
        raise ValueError(f"prompt_embeds must have shape (seq_len, hidden), got {tuple(tensor.shape)}")
    return tensor


# ---------------------------------------------------------------------- request bodies


def _one_or_list(items: Sequence[Any]) -> Any:
    """A single prompt goes as itself: some servers (llama.cpp, older vLLM) reject or mishandle lists."""
    return items[0] if len(items) == 1 else list(items)


def top_logprob_body(model: str, texts: Sequence[str], k: int) -> dict[str, Any]:
    return {"model": model, "prompt": _one_or_list(texts), "max_tokens": 1, "temperature": 0, "logprobs": k}


def embeds_body(model: str, encoded: Sequence[str], k: int) -> dict[str, Any]:
    return {"model": model, "prompt_embeds": _one_or_list(encoded), "max_tokens": 1, "temperature": 0, "logprobs": k}


def echo_body(model: str, texts: Sequence[str]) -> dict[str, Any]:
    # max_tokens=1, not 0: vLLM refuses 0. logprobs=1: the smallest value every server accepts with echo.
    return {"model": model, "prompt": _one_or_list(texts), "max_tokens": 1, "temperature": 0, "logprobs": 1,
            "echo": True}


def chat_body(model: str, text: str, k: int) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 1, "temperature": 0,
            "logprobs": True, "top_logprobs": k}


# ---------------------------------------------------------------------- replies


def _fail(what: str) -> MalformedResponseError:
    return MalformedResponseError(f"malformed reply: {what}")


def choices(reply: Mapping[str, Any], n: int) -> list[Mapping[str, Any]]:
    """The reply's `n` choices in prompt order (by their `index`), or an error if any is missing."""
    found = reply.get("choices") if isinstance(reply, Mapping) else None
    if not isinstance(found, list):
        raise _fail("no 'choices' list")
    by_index: dict[int, Mapping[str, Any]] = {}
    for pos, choice in enumerate(found):
        if not isinstance(choice, Mapping):
            raise _fail(f"choice {pos} is not an object")
        by_index.setdefault(int(choice.get("index", pos)), choice)
    if sorted(by_index) != list(range(n)):
        raise _fail(f"expected choices 0..{n - 1}, got indexes {sorted(by_index)}")
    return [by_index[i] for i in range(n)]


def _logprob(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(f"{where} is not a number: {value!r}")
    value = float(value)
    if math.isnan(value) or value > _LOGPROB_SLACK:
        raise _fail(f"{where} = {value} is not a log-probability (must be <= 0)")
    return min(value, 0.0)


def completion_top(choice: Mapping[str, Any]) -> dict[str, float]:
    """The next token's top-k {token: log-prob} from a /v1/completions choice (the first generated position,
    even if a server ignores max_tokens=1 and generates more)."""
    logprobs = choice.get("logprobs")
    tops = logprobs.get("top_logprobs") if isinstance(logprobs, Mapping) else None
    if not isinstance(tops, list) or not tops or not isinstance(tops[0], Mapping) or not tops[0]:
        raise _fail("no top_logprobs for the next token (does the server return logprobs?)")
    return {str(t): _logprob(v, f"top_logprobs[{t!r}]") for t, v in tops[0].items()}


def chat_top(choice: Mapping[str, Any]) -> dict[str, float]:
    """The first generated token's top-k {token: log-prob} from a /v1/chat/completions choice."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if not isinstance(content, list) or not content or not isinstance(content[0], Mapping):
        raise _fail("no logprobs.content in the chat reply (does the server return chat logprobs?)")
    tops = content[0].get("top_logprobs")
    if not isinstance(tops, list) or not tops:
        raise _fail("empty top_logprobs in the chat reply")
    out: dict[str, float] = {}
    for entry in tops:
        if not isinstance(entry, Mapping) or "token" not in entry:
            raise _fail(f"top_logprobs entry {entry!r} has no token")
        out.setdefault(str(entry["token"]), _logprob(entry.get("logprob"), f"top_logprobs[{entry['token']!r}]"))
    return out


@dataclass(frozen=True)
class LabelKeys:
    """How each label's token may be spelled in a top-k list: its text, or vLLM's ``token_id:N``."""

    spellings: tuple[tuple[str, ...], ...]

    @classmethod
    def build(cls, words: Sequence[str], token_ids: Sequence[int] | None, decoded: Sequence[str] | None) -> "LabelKeys":
        out = []
        for j, word in enumerate(words):
            keys = [word]
            if decoded is not None and decoded[j] not in keys:
                keys.append(decoded[j])
            if token_ids is not None:
                keys.append(f"token_id:{token_ids[j]}")
            out.append(tuple(keys))
        return cls(tuple(out))


def label_scores(top: Mapping[str, float], labels: LabelKeys) -> tuple[np.ndarray, int]:
    """Each label's log-prob from a top-k dict; a label not in it gets the k-th (smallest) value, an upper
    bound on its true log-prob. Returns (scores, number of labels missing)."""
    floor = min(top.values())
    out = np.empty(len(labels.spellings))
    missing = 0
    for j, keys in enumerate(labels.spellings):
        hit = next((top[k] for k in keys if k in top), None)
        if hit is None:
            missing += 1
        out[j] = floor if hit is None else hit
    return out, missing


def echo_label_logprob(choice: Mapping[str, Any], prompt: str, word: str) -> float:
    """Log-prob of the label word's token at the end of an echoed ``prompt`` (= context + word).

    The prompt's last token is found from ``text_offset`` (or the tokens' lengths); it must be exactly the
    word, otherwise the server merged the word with the text before it and the score would be wrong.
    """
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, Mapping):
        raise _fail("no logprobs in the echo reply")
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values) or not tokens:
        raise _fail("echo reply lacks matching 'tokens' and 'token_logprobs'")
    offsets = logprobs.get("text_offset")
    if not isinstance(offsets, list) or len(offsets) != len(tokens):
        offsets = list(np.cumsum([0] + [len(str(t)) for t in tokens[:-1]]))
    inside = [i for i, off in enumerate(offsets) if isinstance(off, (int, np.integer)) and off < len(prompt)]
    if len(inside) < 2:  # the context and the word at least
        raise _fail("the echo reply does not cover the prompt (the server ignores echo)")
    last = inside[-1]
    if str(tokens[last]) != word or offsets[last] != len(prompt) - len(word):
        raise _fail(
            f"the prompt's last token is {tokens[last]!r}, not the label word {word!r}: the server tokenized the "
            "word together with the text before it; end the template's cue at a word boundary"
        )
    if values[last] is None:
        raise _fail("the echo reply has no log-prob for the label token")
    return _logprob(values[last], "echo token_logprob")
