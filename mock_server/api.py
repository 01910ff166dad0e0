"""OpenAI-compatible endpoint handlers: JSON body in, JSON reply out (or an `ApiError`), no sockets.

Greedy decoding with temperature 0 (the argmax token is the completion), seeded sampling otherwise. Replies
follow OpenAI's shapes, including the legacy completions ``logprobs`` object (tokens, token_logprobs,
top_logprobs, text_offset) and chat's ``logprobs.content``; every reply carries ``usage``. ``n`` answers per
prompt (choice index = prompt * n + sample) and ``stop`` strings work on both endpoints; with
``ServerConfig.logprobs`` off (``--no-logprobs``) the server answers text only, as hosted chat APIs that accept
and ignore ``logprobs``: ``"logprobs": null`` in every choice.

Every parameter is checked for type and range before any prompt is tokenized, and prompts for count and
length (`ServerConfig.max_prompts`, ``max_messages``, ``max_prompt_chars``, the model's context) before any is
tokenized: bad input gets a 400 that names the parameter, never a 500 or minutes of work. A request's total
work (prompt tokens plus prompts x ``n`` x ``max_tokens``) is bounded by ``max_request_tokens`` before any token
is generated, and generation stops when the client has gone (`CLIENT_GONE`, set by the HTTP layer).
"""
from __future__ import annotations

import itertools
import re
import reprlib
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .config import EchoSupport, ServerConfig
from .embeds import EmbedsError, load_prompt_embeds
from .scorer import Scorer

_ids = itertools.count(1)
# whether the client of the request this thread serves has closed its connection (the HTTP layer sets it)
CLIENT_GONE: ContextVar[Callable[[], bool]] = ContextVar("CLIENT_GONE", default=lambda: False)
_SEED_MAX = 2**63 - 1  # an int64, as OpenAI's `seed`; torch.Generator takes it
_BIAS_MAX = 100  # OpenAI's logit_bias range is [-_BIAS_MAX, _BIAS_MAX]
_TOKEN_ID = re.compile(r"-?[0-9]{1,12}")  # a logit_bias key; longer is out of any vocabulary (and cheap to refuse)


class ApiError(Exception):
    """An error reply in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientGone(Exception):
    """The client closed its connection mid-request: nobody waits for the answer, so generation stops."""


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def _show(value: Any) -> str:
    """A bad value for an error message, cut short: a 1,000,000-item list must not come back whole."""
    return reprlib.repr(value)


def _int(body: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    """An integer parameter in [lo, hi]; missing or null is `default` (as OpenAI treats null)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(f"'{name}' must be an integer in [{lo}, {hi}], got {_show(value)}", name)
    return value


def _number(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    """A real-number parameter in [lo, hi] (NaN and infinities fail the range); missing or null is `default`."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise _bad(f"'{name}' must be a number in [{lo:g}, {hi:g}], got {_show(value)}", name)
    return float(value)


def _flag(body: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """A boolean parameter: ``"echo": "no"`` is a mistake to report, not a truthy string to act on."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"'{name}' must be true or false, got {_show(value)}", name)
    return value


def _check_model(cfg: ServerConfig, body: Mapping[str, Any]) -> None:
    model = body.get("model")
    if not cfg.serves(str(model)):
        raise ApiError(404, f"The model `{_show(model)}` does not exist or you do not have access to it. "
                            f"This server serves `{cfg.name}`.", code="model_not_found", param="model")


# ---------------------------------------------------------------------- decoding


@dataclass
class _Run:
    """One sequence's prompt log-probs and what was generated after it."""

    prompt_rows: torch.Tensor  # (n, vocab): row t predicts token t+1 (only the last row unless echo)
    generated: list[int] = field(default_factory=list)
    rows: list[torch.Tensor] = field(default_factory=list)  # the distribution each generated token came from
    stopped: bool = False


@dataclass(frozen=True)
class _Sampling:
    """The request's sampling parameters, checked once before any prompt is tokenized. `n` answers per prompt
    are drawn one after another from one generator (so they differ, and the same request gets the same ones);
    generation ends at the first `stop` string, which the answer does not include (as OpenAI)."""

    temperature: float
    bias: dict[int, float]
    seed: int
    n: int = 1
    stop: tuple[str, ...] = ()

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


_MAX_N = 128  # answers per prompt in one request (OpenAI's limit)
_MAX_STOP = 4  # OpenAI's limit on stop sequences


def _sampling(body: Mapping[str, Any], vocab_size: int) -> _Sampling:
    """temperature in [0, 2], seed an int64 >= 0 (torch.manual_seed overflows past it), logit_bias as below,
    n in [1, 128], stop a string or a list of up to 4 non-empty strings."""
    seed = _int(body, "seed", 0, 0, _SEED_MAX)
    return _Sampling(_number(body, "temperature", 1.0, 0.0, 2.0), _logit_bias(body, vocab_size), seed or 0,
                     _int(body, "n", 1, 1, _MAX_N) or 1, _stop(body))


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    raw = body.get("stop")
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if (not isinstance(items, list) or not 1 <= len(items) <= _MAX_STOP
            or not all(isinstance(x, str) and x for x in items)):
        raise _bad(f"'stop' must be a non-empty string or a list of 1 to {_MAX_STOP} of them, got {_show(raw)}", "stop")
    return tuple(items)


def _logit_bias(body: Mapping[str, Any], vocab_size: int) -> dict[int, float]:
    """``{"token id": bias}`` with ids in [0, vocab) and biases in [-_BIAS_MAX, _BIAS_MAX]; a negative id would
    index the logits from the end, so it is refused by name like any other id outside the vocabulary."""
    raw = body.get("logit_bias")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _bad(f"'logit_bias' must map token ids to numbers in [-{_BIAS_MAX}, {_BIAS_MAX}]", "logit_bias")
    if len(raw) > vocab_size:
        raise _bad(f"'logit_bias' has {len(raw)} entries; the vocabulary has {vocab_size} tokens", "logit_bias")
    bias: dict[int, float] = {}
    for key, value in raw.items():
        key = str(key)
        if not _TOKEN_ID.fullmatch(key) or not 0 <= int(key) < vocab_size:
            raise _bad(f"logit_bias token id {_show(key)} is not a token id in [0, {vocab_size})", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -_BIAS_MAX <= value <= _BIAS_MAX:
            raise _bad(f"logit_bias value for token {key} must be a number in [-{_BIAS_MAX}, {_BIAS_MAX}], "
                       f"got {_show(value)}", "logit_bias")
        bias[int(key)] = float(value)
    return bias


def _check_work(cfg: ServerConfig, prompt_tokens: int, prompts: int, n: int, max_tokens: int) -> None:
    """Each field is capped on its own; their product is not, so a request's total is (before generating)."""
    work = prompt_tokens + prompts * n * max_tokens
    if work > cfg.max_request_tokens:
        raise _bad(f"This request may cost {work} tokens ({prompt_tokens} prompt tokens + {prompts} prompt(s) x "
                   f"n={n} x max_tokens={max_tokens}), over the server's max_request_tokens of "
                   f"{cfg.max_request_tokens} (--max-request-tokens): send fewer prompts, a smaller n or max_tokens.",
                   "max_tokens")


def _check_context(scorer: Scorer, prompt_tokens: int, max_tokens: int) -> None:
    if prompt_tokens + max_tokens > scorer.context_length:
        raise _bad(f"This model's maximum context length is {scorer.context_length} tokens; the prompt has "
                   f"{prompt_tokens} and max_tokens is {max_tokens}", "max_tokens")


def _sample(row: torch.Tensor, temperature: float, gen: torch.Generator) -> int:
    """One token from softmax(row / T). The max comes off first and the division is in float64, so a tiny T
    (1e-300 is 0 in float32) gives the argmax rather than 0/0 = NaN."""
    scaled = (row.double() - row.max().double()) / temperature
    return int(torch.multinomial(scaled.softmax(-1), 1, generator=gen))


def _decode(scorer: Scorer, embeds: torch.Tensor, max_tokens: int, sampling: _Sampling, echo: bool = False,
            ignore_bias: bool = False, gen: torch.Generator | None = None) -> _Run:
    if embeds.shape[0] == 0:
        raise _bad("the prompt is empty", "prompt")
    _check_context(scorer, embeds.shape[0], max_tokens)
    bias, temperature = None if ignore_bias else sampling.bias, sampling.temperature
    gen = gen if gen is not None else sampling.generator()
    rows = scorer.logprobs(embeds, bias, every_position=echo)
    run = _Run(rows)
    eos = scorer.tokenizer.eos_token_id
    gone = CLIENT_GONE.get()
    for step in range(max_tokens):
        if gone():
            raise ClientGone()
        row = rows[-1]
        token = int(row.argmax()) if temperature == 0 else _sample(row, temperature, gen)
        run.generated.append(token)
        run.rows.append(row)
        if token == eos or (sampling.stop and _cut(_text(scorer, run), sampling.stop) is not None):
            run.stopped = True
            break
        if step + 1 < max_tokens:
            embeds = torch.cat([embeds, scorer.embed([token])])
            rows = scorer.logprobs(embeds, bias, every_position=False)
    return run


def _text(scorer: Scorer, run: _Run) -> str:
    """The generated text (the end-of-text token is no text)."""
    return "".join(scorer.token_texts[t] for t in run.generated if t != scorer.tokenizer.eos_token_id)


def _cut(text: str, stop: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(found) if found else None


def _answer(scorer: Scorer, run: _Run, stop: tuple[str, ...]) -> str:
    text = _text(scorer, run)
    cut = _cut(text, stop) if stop else None
    return text if cut is None else text[:cut]


def _decode_n(scorer: Scorer, embeds: torch.Tensor, max_tokens: int, sampling: _Sampling, echo: bool,
              ignore_bias: bool) -> list[_Run]:
    """`sampling.n` runs after one prompt, drawn in turn from one generator."""
    gen = sampling.generator()
    return [_decode(scorer, embeds, max_tokens, sampling, echo, ignore_bias, gen) for _ in range(sampling.n)]


def _top_dict(scorer: Scorer, row: torch.Tensor, k: int, chosen: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, lp in scorer.top(row, k) + [(chosen, float(row[chosen]))]:
        out.setdefault(scorer.token_texts[i], lp)  # tokens that decode alike keep the best (first) value
    return out


# ---------------------------------------------------------------------- /v1/completions


@dataclass(frozen=True)
class _Input:
    embeds: torch.Tensor
    ids: list[int] | None  # None for prompt_embeds
    text: str


def _is_ids(value: Any) -> bool:
    """A non-empty list of ints (not bools): one prompt given as token ids."""
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def _embeds_items(cfg: ServerConfig, body: Mapping[str, Any]) -> list[Any]:
    raw = body.get("prompt_embeds")
    if raw is None:
        return []
    if not cfg.prompt_embeds:
        raise _bad("You must set `--enable-prompt-embeds` to input `prompt_embeds`.", "prompt_embeds")
    return raw if isinstance(raw, list) else [raw]


def _prompt_items(body: Mapping[str, Any], have_embeds: bool) -> list[Any]:
    """The prompts as a list, one per choice; a lone string or token-id list is one prompt."""
    prompt = body.get("prompt")
    if prompt is None or (prompt == "" and have_embeds):
        if not have_embeds:
            raise _bad("'prompt' is required", "prompt")
        return []
    if isinstance(prompt, str) or _is_ids(prompt):
        return [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise _bad("'prompt' must be a string, a list of strings, or token ids", "prompt")
    return prompt


def _check_prompt(scorer: Scorer, cfg: ServerConfig, item: Any, max_tokens: int) -> None:
    """Refuse a prompt on its shape and size alone, before any prompt is tokenized (tokenizing runs ~1 us a
    character: a 10 MB prompt would cost 10 s to find too long)."""
    if isinstance(item, str):
        if len(item) > cfg.max_prompt_chars:
            raise _bad(f"A prompt has {len(item)} characters; this server takes at most {cfg.max_prompt_chars} "
                       "(--max-prompt-chars).", "prompt")
        return
    if not _is_ids(item):
        raise _bad("each prompt must be a string or a non-empty list of token ids", "prompt")
    _check_context(scorer, len(item), max_tokens)
    bad = next((t for t in item if not 0 <= t < scorer.vocab_size), None)
    if bad is not None:
        raise _bad(f"prompt token id {bad} is not in the vocabulary [0, {scorer.vocab_size})", "prompt")


def _embeds_input(scorer: Scorer, item: Any) -> _Input:
    if not isinstance(item, str):
        raise _bad("each 'prompt_embeds' entry must be a base64 string", "prompt_embeds")
    try:
        tensor = load_prompt_embeds(item, scorer.hidden_size)
    except EmbedsError as err:
        raise _bad(str(err), "prompt_embeds") from None
    if not bool(torch.isfinite(tensor).all()):
        raise _bad("prompt_embeds hold NaN or infinite values", "prompt_embeds")
    return _Input(tensor, None, "")


def _prompt_input(scorer: Scorer, item: str | list[int], max_tokens: int) -> _Input:
    if isinstance(item, list):
        return _Input(scorer.embed(item), list(item), scorer.tokenizer.decode(item))
    ids = scorer.encode(item)
    _check_context(scorer, len(ids), max_tokens)  # before the next prompt is tokenized
    return _Input(scorer.embed(ids) if ids else torch.zeros(0, scorer.hidden_size), ids, item)


def _completion_inputs(scorer: Scorer, cfg: ServerConfig, body: Mapping[str, Any], max_tokens: int) -> list[_Input]:
    """Every prompt, checked for count and size first, then tokenized (or decoded, for prompt_embeds)."""
    embeds = _embeds_items(cfg, body)
    prompts = _prompt_items(body, have_embeds=bool(embeds))
    if len(embeds) + len(prompts) > cfg.max_prompts:
        raise _bad(f"{len(embeds) + len(prompts)} prompts in one request; this server takes at most "
                   f"{cfg.max_prompts} (--max-prompts).", "prompt")
    for item in prompts:
        _check_prompt(scorer, cfg, item, max_tokens)
    return [_embeds_input(scorer, e) for e in embeds] + [_prompt_input(scorer, p, max_tokens) for p in prompts]


def completions(scorer: Scorer, cfg: ServerConfig, body: Mapping[str, Any]) -> dict[str, Any]:
    _check_model(cfg, body)
    if _flag(body, "stream"):
        raise _bad("this mock does not stream; send stream=false", "stream")
    max_tokens = _int(body, "max_tokens", 16, 0, 1 << 20) or 0
    k = _int(body, "logprobs", None, 0, cfg.max_logprobs)
    k = k if cfg.logprobs else None  # a text-only server accepts the field and answers without log-probs
    echo = _flag(body, "echo")
    if echo and k is not None and cfg.echo is EchoSupport.REJECT:
        raise _bad("Setting 'echo' and 'logprobs' at the same time is not supported for this model.", "echo")
    sampling = _sampling(body, scorer.vocab_size)
    inputs = _completion_inputs(scorer, cfg, body, max_tokens)
    if len(inputs) > 1 and cfg.refuse_lists:
        raise ApiError(500, "Internal Server Error", type="server_error")
    if len(inputs) > 1 and not cfg.list_prompts:
        raise _bad("this server takes one prompt per request; send a string, not a list", "prompt")
    if echo and any(i.ids is None for i in inputs):
        raise _bad("'echo' is not supported with prompt_embeds", "echo")
    _check_work(cfg, sum(i.embeds.shape[0] for i in inputs), len(inputs), sampling.n, max_tokens)
    out, prompt_tokens, completion_tokens = [], 0, 0
    for i, item in enumerate(inputs):
        prompt_tokens += item.embeds.shape[0]
        runs = _decode_n(scorer, item.embeds, max_tokens, sampling, echo, cfg.ignore_logit_bias)
        for j, run in enumerate(runs):  # OpenAI's order: choice index = prompt * n + sample
            completion_tokens += len(run.generated)
            out.append(_completion_choice(scorer, cfg, i * sampling.n + j, item, run, echo, k, sampling.stop))
    return {"id": f"cmpl-{next(_ids)}", "object": "text_completion", "created": int(time.time()), "model": cfg.name,
            "choices": out, "usage": _usage(prompt_tokens, completion_tokens)}


def _completion_choice(scorer: Scorer, cfg: ServerConfig, index: int, item: _Input, run: _Run, echo: bool,
                       k: int | None, stop: tuple[str, ...] = ()) -> dict[str, Any]:
    texts = scorer.token_texts
    generated = _answer(scorer, run, stop)
    choice: dict[str, Any] = {"index": index, "text": (item.text if echo else "") + generated, "logprobs": None,
                              "finish_reason": "stop" if run.stopped else "length"}
    if k is None:
        return choice
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    if echo and cfg.echo is EchoSupport.FULL and item.ids:
        shift = int(cfg.wrong_echo)  # an off-by-one alignment bug: the row after the right one
        for t, token in enumerate(item.ids):
            row = run.prompt_rows[min(t - 1 + shift, len(item.ids) - 1)]
            tokens.append(texts[token])
            values.append(None if t == 0 else float(row[token]))
            tops.append(None if t == 0 else _top_dict(scorer, row, k, token))
    for token, row in zip(run.generated, run.rows):
        tokens.append(texts[token])
        values.append(float(row[token]))
        tops.append(_top_dict(scorer, row, k, token))
    start = len(item.text) if echo and cfg.echo is EchoSupport.IGNORE else 0
    echoed = len(tokens) - len(run.generated)
    offsets = [_prompt_offset(scorer, item.ids or [], i) for i in range(echoed)]  # characters, as vLLM counts them
    offsets += [start + len(item.text if echoed else "") + sum(len(t) for t in tokens[echoed:i])
                for i in range(echoed, len(tokens))]
    choice["logprobs"] = {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
    return choice


def _prompt_offset(scorer: Scorer, ids: list[int], i: int) -> int:
    """Where prompt token i starts in the prompt's text: the length of the text its earlier tokens decode to
    (not the sum of each token's own text, which counts a character split over two byte tokens twice, and a
    special token's name)."""
    return len(scorer.tokenizer.decode(ids[:i], skip_special_tokens=True))


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# ---------------------------------------------------------------------- /v1/chat/completions


def _message_text(message: Any) -> dict[str, str]:
    if not isinstance(message, Mapping) or "role" not in message:
        raise _bad("each message needs a 'role' and 'content'", "messages")
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    if not isinstance(content, str):
        raise _bad("message 'content' must be a string or a list of text parts", "messages")
    return {"role": str(message["role"]), "content": content}


def _chat_messages(cfg: ServerConfig, body: Mapping[str, Any]) -> list[dict[str, str]]:
    """The messages as role/content strings, refused on count and total size before the template runs."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list", "messages")
    if len(messages) > cfg.max_messages:
        raise _bad(f"{len(messages)} messages in one request; this server takes at most {cfg.max_messages} "
                   "(--max-messages).", "messages")
    texts = [_message_text(m) for m in messages]
    chars = sum(len(m["role"]) + len(m["content"]) for m in texts)
    if chars > cfg.max_prompt_chars:
        raise _bad(f"The messages have {chars} characters; this server takes at most {cfg.max_prompt_chars} "
                   "(--max-prompt-chars).", "messages")
    return texts


def _chat_ids(scorer: Scorer, messages: list[dict[str, str]]) -> list[int]:
    try:
        return scorer.chat_ids(messages)
    except Exception as err:  # noqa: BLE001 - a model's chat template raises on roles or orders it refuses
        raise _bad(f"the chat template refused these messages: {_show(str(err))}", "messages") from None


def chat_completions(scorer: Scorer, cfg: ServerConfig, body: Mapping[str, Any]) -> dict[str, Any]:
    _check_model(cfg, body)
    if _flag(body, "stream"):
        raise _bad("this mock does not stream; send stream=false", "stream")
    max_tokens = _int(body, "max_completion_tokens", None, 1, 1 << 20) or _int(body, "max_tokens", 16, 1, 1 << 20)
    want = _flag(body, "logprobs")
    k = _int(body, "top_logprobs", None, 0, min(cfg.max_logprobs, 20))
    if k is not None and not want:
        raise _bad("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
    want = want and cfg.logprobs  # a text-only server accepts the fields and answers without log-probs
    sampling = _sampling(body, scorer.vocab_size)
    ids = _chat_ids(scorer, _chat_messages(cfg, body))
    _check_work(cfg, len(ids), 1, sampling.n, max_tokens or 16)
    runs = _decode_n(scorer, scorer.embed(ids), max_tokens or 16, sampling, False, cfg.ignore_logit_bias)
    choices = [_chat_choice(scorer, i, run, want, k, sampling.stop) for i, run in enumerate(runs)]
    return {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": cfg.name, "choices": choices, "usage": _usage(len(ids), sum(len(r.generated) for r in runs))}


def _chat_choice(scorer: Scorer, index: int, run: _Run, want: bool, k: int | None,
                 stop: tuple[str, ...]) -> dict[str, Any]:
    """One chat answer; ``logprobs`` (the chosen tokens, with `k` alternatives each) only when `want`."""
    texts = scorer.token_texts
    content = [
        {"token": texts[t], "logprob": float(row[t]), "bytes": list(texts[t].encode()),
         "top_logprobs": [{"token": texts[i], "logprob": lp, "bytes": list(texts[i].encode())}
                          for i, lp in scorer.top(row, k or 0)]}
        for t, row in zip(run.generated, run.rows)
    ] if want else None
    return {"index": index, "message": {"role": "assistant", "content": _answer(scorer, run, stop)},
            "logprobs": {"content": content} if content is not None else None,
            "finish_reason": "stop" if run.stopped else "length"}


# ---------------------------------------------------------------------- small endpoints


def models(cfg: ServerConfig) -> dict[str, Any]:
    names = (cfg.name, *cfg.aliases)
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "mock"} for n in names]}


def tokenize(scorer: Scorer, cfg: ServerConfig, body: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM's ``/tokenize`` (``prompt``) and llama.cpp's (``content``) in one."""
    if "model" in body:
        _check_model(cfg, body)
    text = body.get("prompt", body.get("content"))
    if not isinstance(text, str):
        raise _bad("'prompt' (or 'content') must be a string", "prompt")
    if len(text) > cfg.max_prompt_chars:
        raise _bad(f"The text has {len(text)} characters; this server takes at most {cfg.max_prompt_chars} "
                   "(--max-prompt-chars).", "prompt")
    special = _flag(body, "add_special_tokens", True)
    ids = scorer.encode(text) if special else list(scorer.tokenizer(text, add_special_tokens=False)["input_ids"])
    return {"tokens": ids, "count": len(ids), "max_model_len": scorer.context_length}
