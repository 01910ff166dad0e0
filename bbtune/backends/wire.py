"""What goes over the wire: request bodies in, label log-probs out. Which bodies a mode sends, and how many, is
its strategy's business (`bbtune.backends.modes`); this module imports none of them.

Modes (`ScoreMode`), one request shape each:

- ``top_logprobs``: ``/v1/completions`` with ``max_tokens=1, logprobs=k``; the label words' log-probs are read
  from the top-k list of the next token.
- ``chat``: ``/v1/chat/completions`` with ``logprobs=true, top_logprobs=k``; read like ``top_logprobs``, but a
  label matches its word in every spelling the model may answer with (see `label_variants`).
- ``echo``: ``/v1/completions`` with ``prompt + label word``, ``echo=true``: the label word's own log-prob (the
  sum over its tokens), exact, one prompt per label.
- ``prompt_embeds``: ``/v1/completions`` with ``prompt_embeds`` (vLLM's encoding: base64 of a ``torch.save``d
  float tensor of shape (seq_len, hidden)); read like ``top_logprobs``. Soft prompts go over the wire this way.
- ``text``: no log-probs at all (hosted chat APIs that return only text): ``/v1/chat/completions`` (or
  ``/v1/completions``) asks for an answer (`Generation`: ``max_tokens``, ``n``, ``temperature``, ``stop``) and
  the answers become label scores by rules (`bbtune.tasks.answers`).

Every mode but ``text`` also gives the top-k at the answer position (`RemoteBackend.score_topk`): the top-k
modes from the list they read labels from, ``echo`` from ``logprobs=k`` at the word's first token
(`echo_answer_top`).

Label words of several tokens: ``echo`` sums the word's tokens from one echoed prompt; the top-k modes
(``top_logprobs``, ``prompt_embeds``) *chain*: the first token's top-k after the input, the next token's top-k
after the input and the first token, and so on (teacher forcing; words sharing a prefix share its requests,
see `bbtune.backends.labeltrie`). A token absent from its list makes the word's score missing. ``chat`` reads
only an answer's first token and refuses such words.

**A missing label is NaN, never a bound.** A label absent from a top-k list has an unknown log-prob (below the
k-th value); `label_scores` gives it NaN, the run counts it (``missing_rate``) and the loss decides what it
means (`bbtune.search.losses`). Two remedies keep labels in the list:

- ``logit_bias``: the same bias on every label token (all spellings). The server then returns log-probs of the
  *biased* distribution: every label's log-prob moves by the same amount (``+bias - log Z'``), so the
  differences between labels, which is all the losses use (they renormalise over the labels), are the true ones.
  The probe checks a server honours it before a run relies on it.
- chat variants: an instruct model answers ``Positive`` or ``positive`` rather than the template's
  `` positive``; the probabilities of one label's variants (distinct tokens, disjoint events) add up, so the
  label's log-prob is their logsumexp.

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
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from bbtune.backends.findings import ProbeReport  # noqa: F401 - re-exported: it lived here
from bbtune.errors import MalformedResponseError

COMPLETIONS = "/completions"
CHAT = "/chat/completions"
_LOGPROB_SLACK = 1e-4  # servers round; a log-prob a hair above 0 is not an error


class ScoreMode(str, Enum):
    """How a remote server is asked for label log-probs (see the module docstring)."""

    TOP_LOGPROBS = "top_logprobs"
    ECHO = "echo"
    CHAT = "chat"
    PROMPT_EMBEDS = "prompt_embeds"
    TEXT = "text"



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


def _with_bias(body: dict[str, Any], bias: Mapping[int, float] | None) -> dict[str, Any]:
    """OpenAI's ``logit_bias``: token ids as strings (JSON keys) to a number in [-100, 100]."""
    if bias:
        body["logit_bias"] = {str(t): float(v) for t, v in sorted(bias.items())}
    return body


def top_logprob_body(model: str, texts: Sequence[str], k: int, bias: Mapping[int, float] | None = None) -> dict[str, Any]:
    return _with_bias({"model": model, "prompt": _one_or_list(texts), "max_tokens": 1, "temperature": 0,
                       "logprobs": k}, bias)


def embeds_body(model: str, encoded: Sequence[str], k: int, bias: Mapping[int, float] | None = None) -> dict[str, Any]:
    return _with_bias({"model": model, "prompt_embeds": _one_or_list(encoded), "max_tokens": 1, "temperature": 0,
                       "logprobs": k}, bias)


def echo_body(model: str, texts: Sequence[str], k: int = 1) -> dict[str, Any]:
    # max_tokens=1, not 0: vLLM refuses 0. logprobs=1: the smallest value every server accepts with echo (a deeper
    # `k` only where the top-k at each prompt position is wanted, `RemoteBackend.score_topk`).
    return {"model": model, "prompt": _one_or_list(texts), "max_tokens": 1, "temperature": 0, "logprobs": k,
            "echo": True}


def chat_body(model: str, text: str, k: int, bias: Mapping[int, float] | None = None) -> dict[str, Any]:
    return _with_bias({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 1,
                       "temperature": 0, "logprobs": True, "top_logprobs": k}, bias)


@dataclass(frozen=True)
class Request:
    """One HTTP request: where it goes, its body, how to read its reply, and the tokens to reserve for it."""

    path: str
    body: dict[str, Any]
    parse: Callable[[dict[str, Any]], list[Any]]
    estimate: tuple[int, int]


# ---------------------------------------------------------------------- text answers (text mode, `generate`)


@dataclass(frozen=True)
class Generation:
    """What text to ask for: at most `max_tokens` per answer, `n` answers per input (`per_request` of them in
    one request through ``n``, the rest by repeated requests with seeds 1, 2, ...: a server that refuses ``n``
    still gives n distinct samples), at `temperature`, cut at the first `stop` string."""

    endpoint: str  # CHAT or COMPLETIONS
    max_tokens: int = 16
    n: int = 1
    temperature: float = 0.0
    stop: tuple[str, ...] = ("\n",)
    per_request: int = 1

    @property
    def repeats(self) -> int:
        return -(-self.n // self.per_request)


def generation_body(model: str, gen: Generation, texts: Sequence[str], n: int, seed: int) -> dict[str, Any]:
    """No ``logprobs`` field at all: a text-only server may refuse it. ``n`` and ``seed`` only when needed (a
    greedy answer needs neither, and some servers refuse them)."""
    body: dict[str, Any] = {"model": model, "max_tokens": gen.max_tokens, "temperature": gen.temperature}
    if gen.endpoint == CHAT:
        body["messages"] = [{"role": "user", "content": texts[0]}]
    else:
        body["prompt"] = _one_or_list(texts)
    if gen.stop:
        body["stop"] = list(gen.stop)
    if n > 1:
        body["n"] = n
    if gen.temperature > 0:
        body["seed"] = seed
    return body


def generation_requests(model: str, gen: Generation, texts: Sequence[str], tokens: Callable[[str], int],
                        size: int) -> list[Request]:
    """Requests for `gen.n` answers to every text; each parses to ``(text index, [answers])`` pairs, so the
    caller gathers a text's answers from however many requests they came in."""
    size = 1 if gen.endpoint == CHAT else size
    out = []
    for start in range(0, len(texts), size):
        part = list(texts[start : start + size])
        for r in range(gen.repeats):
            n = min(gen.per_request, gen.n - r * gen.per_request)
            out.append(Request(gen.endpoint, generation_body(model, gen, part, n, r),
                               _answers_parser(gen.endpoint, start, len(part), n),
                               (sum(map(tokens, part)), len(part) * n * gen.max_tokens)))
    return out


def _answers_parser(endpoint: str, start: int, n_texts: int, n: int) -> Callable[[dict[str, Any]], list[Any]]:
    read = chat_answer if endpoint == CHAT else completion_answer

    def parse(reply: dict[str, Any]) -> list[Any]:
        found = [read(c) for c in choices(reply, n_texts * n)]  # OpenAI: choice index = text * n + sample
        return [(start + i, found[i * n : (i + 1) * n]) for i in range(n_texts)]

    return parse


def completion_answer(choice: Mapping[str, Any]) -> str:
    """The generated text of a /v1/completions choice."""
    text = choice.get("text")
    if not isinstance(text, str):
        raise _fail(f"a completion choice has no 'text' string (got {str(text)[:60]!r})")
    return text


def chat_answer(choice: Mapping[str, Any]) -> str:
    """The answer of a /v1/chat/completions choice; null content (a refusal, a tool call) is an empty answer,
    which names no label (unparsed), rather than an error that would stop a run."""
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise _fail("a chat choice has no 'message' object")
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, list):  # content parts
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    if not isinstance(content, str):
        raise _fail(f"a chat message's content is not text (got {str(content)[:60]!r})")
    return content


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
    """How each label may appear in a top-k list: per label its variants (distinct tokens: `` positive``,
    ``Positive``), per variant its spellings (the text, or vLLM's ``token_id:N``); `token_ids` of all variants
    (for ``logit_bias``; empty without a local tokenizer)."""

    variants: tuple[tuple[tuple[str, ...], ...], ...]
    token_ids: tuple[int, ...] = ()

    @classmethod
    def build(cls, words: Sequence[str], token_ids: Sequence[int] | None, decoded: Sequence[str] | None) -> "LabelKeys":
        """One variant per label: the word itself (completion modes, where the template fixes the spelling)."""
        out = []
        for j, word in enumerate(words):
            keys = [word]
            if decoded is not None and decoded[j] not in keys:
                keys.append(decoded[j])
            if token_ids is not None:
                keys.append(f"token_id:{token_ids[j]}")
            out.append((tuple(keys),))
        return cls(tuple(out), tuple(token_ids or ()))

    @classmethod
    def chat(cls, words: Sequence[str], tokenizer: Any | None) -> "LabelKeys":
        """Every spelling of each word an answer may start with (see `label_variants`); with a tokenizer only
        the single-token ones, which are the only ones a first-token top-k list can hold."""
        out, ids, taken = [], [], set()
        for word in words:
            variants: list[tuple[str, ...]] = []
            for text in label_variants(word):
                if text in taken:  # two labels never share a variant
                    continue
                taken.add(text)
                if tokenizer is None:
                    variants.append((text,))
                    continue
                piece = tokenizer.encode(text, add_special_tokens=False)
                if len(piece) == 1:
                    variants.append((text, f"token_id:{piece[0]}"))
                    ids.append(piece[0])
            out.append(tuple(variants))
        return cls(tuple(out), tuple(ids))

    @property
    def n_labels(self) -> int:
        return len(self.variants)


def label_variants(word: str) -> list[str]:
    """The word as the template spells it first, then with and without a leading space, in lower case,
    Capitalized and UPPER case.

    >>> label_variants(" positive")[:4]
    [' positive', 'positive', ' Positive', 'Positive']
    """
    core = word.strip()
    out = [word]
    for cased in (core.lower(), core.capitalize(), core.upper()):
        for text in (" " + cased, cased):
            if text not in out:
                out.append(text)
    return out


def label_scores(top: Mapping[str, float], labels: LabelKeys, strict: bool = False) -> tuple[np.ndarray, int]:
    """Each label's log-prob from a top-k dict: the logsumexp of its variants found there (distinct tokens,
    so their probabilities add); NaN for a label none of whose variants is listed (its log-prob is unknown,
    below the k-th value), or with `strict` for one with any variant unlisted (its sum is then partial).
    Returns (scores, number of labels missing).

    >>> label_scores({"a": -0.5, "A": -1.0}, LabelKeys(((("a",), ("A",)), (("b",),))))[1]
    1
    """
    out = np.full(labels.n_labels, np.nan)
    for j, variants in enumerate(labels.variants):
        hits = [next(top[k] for k in keys if k in top) for keys in variants if any(k in top for k in keys)]
        if hits and (len(hits) == len(variants) or not strict):
            out[j] = float(np.logaddexp.reduce(hits))
    missing = int(np.isnan(out).sum())
    return out, missing


def echo_label_logprob(choice: Mapping[str, Any], prompt: str, word: str) -> float:
    """Log-prob of the label word at the end of an echoed ``prompt`` (= context + word): the sum of its tokens'
    log-probs, each given the text before it (teacher forcing, exact), however many tokens the word has.

    The word's tokens are found from ``text_offset`` (or the tokens' lengths); the first must start exactly where
    the word does, otherwise the server merged the word with the text before it and the score would be wrong.
    """
    return _echo_sum(*_echo_word(choice, prompt, word))


def echo_answer_top(choice: Mapping[str, Any], prompt: str, word: str) -> tuple[float, dict[str, float]]:
    """The word's log-prob (`echo_label_logprob`) and the top-k list at its first token: the answer position, the
    same list after every word of one context except that a server also lists the echoed token itself (OpenAI:
    "up to logprobs+1 elements"), which the caller drops by keeping what every word's list shares."""
    logprobs, own = _echo_word(choice, prompt, word)
    tops = logprobs.get("top_logprobs")
    top = tops[own[0]] if isinstance(tops, list) and len(tops) > own[0] else None
    if not isinstance(top, Mapping) or not top:
        raise _fail("the echo reply has no top_logprobs at the label word's first token (does the server list the "
                    "prompt's top-k with echo?)")
    return _echo_sum(logprobs, own), {str(t): _logprob(v, f"echo top_logprobs[{t!r}]") for t, v in top.items()}


def _echo_sum(logprobs: Mapping[str, Any], own: Sequence[int]) -> float:
    values = logprobs["token_logprobs"]
    if any(values[i] is None for i in own):
        raise _fail("the echo reply has no log-prob for a token of the label word")
    return float(sum(_logprob(values[i], "echo token_logprob") for i in own))


def _echo_word(choice: Mapping[str, Any], prompt: str, word: str) -> tuple[Mapping[str, Any], list[int]]:
    """The echo reply's ``logprobs`` and the indexes of the label word's tokens at the end of ``prompt``."""
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
    start = len(prompt) - len(word)
    first = next((i for i in inside if offsets[i] >= start), inside[-1])
    own = [i for i in inside if i >= first]
    if first == inside[0] or offsets[first] != start or "".join(str(tokens[i]) for i in own) != word:
        shown = [str(tokens[i]) for i in inside[max(0, inside.index(first) - 1):]]
        raise _fail(
            f"the prompt ends in the tokens {shown}, which do not start at the label word {word!r}: the server "
            "tokenized the word together with the text before it; end the template's cue at a word boundary"
        )
    return logprobs, own
