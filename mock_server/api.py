"""OpenAI-compatible endpoint handlers: JSON body in, JSON reply out (or an `ApiError`), no sockets.

Greedy decoding with temperature 0 (the argmax token is the completion), seeded sampling otherwise. Replies
follow OpenAI's shapes, including the legacy completions ``logprobs`` object (tokens, token_logprobs,
top_logprobs, text_offset) and chat's ``logprobs.content``; every reply carries ``usage``.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from bbtune.backends.wire import decode_embeds

from .config import EchoSupport, ServerConfig
from .scorer import Scorer

_ids = itertools.count(1)


class ApiError(Exception):
    """An error reply in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def _int(body: Mapping[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(f"'{name}' must be an integer in [{lo}, {hi}], got {value!r}", name)
    return value


def _check_model(cfg: ServerConfig, body: Mapping[str, Any]) -> None:
    model = body.get("model")
    if not cfg.serves(str(model)):
        raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it. "
                            f"This server serves `{cfg.name}`.", code="model_not_found", param="model")


# ---------------------------------------------------------------------- decoding


@dataclass
class _Run:
    """One sequence's prompt log-probs and what was generated after it."""

    prompt_rows: torch.Tensor  # (n, vocab): row t predicts token t+1 (only the last row unless echo)
    generated: list[int] = field(default_factory=list)
    rows: list[torch.Tensor] = field(default_factory=list)  # the distribution each generated token came from
    stopped: bool = False


def _sampling(body: Mapping[str, Any]) -> tuple[float, dict[int, float], torch.Generator]:
    temperature = body.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise _bad(f"'temperature' must be a number in [0, 2], got {temperature!r}", "temperature")
    raw_bias = body.get("logit_bias") or {}
    if not isinstance(raw_bias, Mapping):
        raise _bad("'logit_bias' must map token ids to numbers", "logit_bias")
    try:
        bias = {int(k): float(v) for k, v in raw_bias.items()}
    except (TypeError, ValueError):
        raise _bad("'logit_bias' must map token ids to numbers in [-100, 100]", "logit_bias") from None
    if any(not -100 <= v <= 100 for v in bias.values()):
        raise _bad("'logit_bias' values must be in [-100, 100]", "logit_bias")
    gen = torch.Generator().manual_seed(int(body.get("seed") or 0))
    return float(temperature), bias, gen


def _decode(scorer: Scorer, embeds: torch.Tensor, max_tokens: int, body: Mapping[str, Any], echo: bool = False,
            ignore_bias: bool = False) -> _Run:
    temperature, bias, gen = _sampling(body)
    if embeds.shape[0] == 0:
        raise _bad("the prompt is empty", "prompt")
    if embeds.shape[0] + max_tokens > scorer.context_length:
        raise _bad(f"This model's maximum context length is {scorer.context_length} tokens; the prompt has "
                   f"{embeds.shape[0]} and max_tokens is {max_tokens}", "max_tokens")
    if bias and max(bias) >= scorer.vocab_size:
        raise _bad(f"logit_bias token id {max(bias)} is outside the vocabulary", "logit_bias")
    rows = scorer.logprobs(embeds, None if ignore_bias else bias, every_position=echo)
    run = _Run(rows)
    eos = scorer.tokenizer.eos_token_id
    for step in range(max_tokens):
        row = rows[-1]
        token = int(row.argmax()) if temperature == 0 else int(torch.multinomial((row / temperature).softmax(-1), 1, generator=gen))
        run.generated.append(token)
        run.rows.append(row)
        if token == eos:
            run.stopped = True
            break
        if step + 1 < max_tokens:
            embeds = torch.cat([embeds, scorer.embed([token])])
            rows = scorer.logprobs(embeds, None if ignore_bias else bias, every_position=False)
    return run


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


def _completion_inputs(scorer: Scorer, cfg: ServerConfig, body: Mapping[str, Any]) -> list[_Input]:
    inputs: list[_Input] = []
    raw_embeds = body.get("prompt_embeds")
    if raw_embeds is not None:
        if not cfg.prompt_embeds:
            raise _bad("You must set `--enable-prompt-embeds` to input `prompt_embeds`.", "prompt_embeds")
        for item in raw_embeds if isinstance(raw_embeds, list) else [raw_embeds]:
            try:
                tensor = decode_embeds(item)
            except Exception as err:  # noqa: BLE001 - any decoding failure is the caller's bad input
                raise _bad(f"'prompt_embeds' could not be decoded: {err}", "prompt_embeds") from None
            if tensor.shape[1] != scorer.hidden_size:
                raise _bad(f"prompt_embeds hidden size {tensor.shape[1]} != model hidden size {scorer.hidden_size}",
                           "prompt_embeds")
            inputs.append(_Input(tensor, None, ""))
    prompt = body.get("prompt")
    if prompt is None or (prompt == "" and inputs):
        if not inputs:
            raise _bad("'prompt' is required", "prompt")
        return inputs
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise _bad("'prompt' must be a string, a list of strings, or token ids", "prompt")
    for item in prompt:
        if isinstance(item, str):
            ids = scorer.encode(item)
            inputs.append(_Input(scorer.embed(ids) if ids else torch.zeros(0, scorer.hidden_size), ids, item))
        elif isinstance(item, list) and all(isinstance(t, int) and 0 <= t < scorer.vocab_size for t in item):
            inputs.append(_Input(scorer.embed(item), list(item), scorer.tokenizer.decode(item)))
        else:
            raise _bad("each prompt must be a string or a list of token ids in the vocabulary", "prompt")
    return inputs


def completions(scorer: Scorer, cfg: ServerConfig, body: Mapping[str, Any]) -> dict[str, Any]:
    _check_model(cfg, body)
    if body.get("stream"):
        raise _bad("this mock does not stream; send stream=false", "stream")
    _int(body, "n", 1, 1, 1)
    max_tokens = _int(body, "max_tokens", 16, 0, 1 << 20)
    k = _int(body, "logprobs", None, 0, cfg.max_logprobs)
    if body.get("logprobs") is not None and k is None:
        raise _bad(f"'logprobs' must be at most {cfg.max_logprobs}", "logprobs")
    echo = bool(body.get("echo", False))
    if echo and k is not None and cfg.echo is EchoSupport.REJECT:
        raise _bad("Setting 'echo' and 'logprobs' at the same time is not supported for this model.", "echo")
    inputs = _completion_inputs(scorer, cfg, body)
    if len(inputs) > 1 and cfg.refuse_lists:
        raise ApiError(500, "Internal Server Error", type="server_error")
    if len(inputs) > 1 and not cfg.list_prompts:
        raise _bad("this server takes one prompt per request; send a string, not a list", "prompt")
    if echo and any(i.ids is None for i in inputs):
        raise _bad("'echo' is not supported with prompt_embeds", "echo")
    out, prompt_tokens, completion_tokens = [], 0, 0
    for index, item in enumerate(inputs):
        run = _decode(scorer, item.embeds, max_tokens, body, echo=echo, ignore_bias=cfg.ignore_logit_bias)
        prompt_tokens += item.embeds.shape[0]
        completion_tokens += len(run.generated)
        out.append(_completion_choice(scorer, cfg, index, item, run, echo, k))
    return {"id": f"cmpl-{next(_ids)}", "object": "text_completion", "created": int(time.time()), "model": cfg.name,
            "choices": out, "usage": _usage(prompt_tokens, completion_tokens)}


def _completion_choice(scorer: Scorer, cfg: ServerConfig, index: int, item: _Input, run: _Run, echo: bool,
                       k: int | None) -> dict[str, Any]:
    texts = scorer.token_texts
    generated = "".join(texts[t] for t in run.generated if t != scorer.tokenizer.eos_token_id)
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
    offsets = [start + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    choice["logprobs"] = {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
    return choice


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


def chat_completions(scorer: Scorer, cfg: ServerConfig, body: Mapping[str, Any]) -> dict[str, Any]:
    _check_model(cfg, body)
    if body.get("stream"):
        raise _bad("this mock does not stream; send stream=false", "stream")
    _int(body, "n", 1, 1, 1)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list", "messages")
    max_tokens = _int(body, "max_completion_tokens", None, 1, 1 << 20) or _int(body, "max_tokens", 16, 1, 1 << 20)
    want = bool(body.get("logprobs", False))
    k = _int(body, "top_logprobs", None, 0, min(cfg.max_logprobs, 20))
    if k is not None and not want:
        raise _bad("'top_logprobs' requires 'logprobs' to be true", "top_logprobs")
    ids = scorer.chat_ids([_message_text(m) for m in messages])
    run = _decode(scorer, scorer.embed(ids), max_tokens or 16, body, ignore_bias=cfg.ignore_logit_bias)
    texts = scorer.token_texts
    content = [
        {"token": texts[t], "logprob": float(row[t]), "bytes": list(texts[t].encode()),
         "top_logprobs": [{"token": texts[i], "logprob": lp, "bytes": list(texts[i].encode())}
                          for i, lp in scorer.top(row, k or 0)]}
        for t, row in zip(run.generated, run.rows)
    ]
    text = "".join(texts[t] for t in run.generated if t != scorer.tokenizer.eos_token_id)
    choice = {"index": 0, "message": {"role": "assistant", "content": text},
              "logprobs": {"content": content} if want else None, "finish_reason": "stop" if run.stopped else "length"}
    return {"id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": cfg.name, "choices": [choice], "usage": _usage(len(ids), len(run.generated))}


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
    special = body.get("add_special_tokens", True)
    ids = scorer.encode(text) if special else list(scorer.tokenizer(text, add_special_tokens=False)["input_ids"])
    return {"tokens": ids, "count": len(ids), "max_model_len": scorer.context_length}
