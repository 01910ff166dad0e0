"""`RemoteBackend`: scores prompts through an OpenAI-compatible server (OpenAI, vLLM, llama.cpp, the mock).

One `score()` call turns (prompts x examples) into requests for the configured `ScoreMode` (see
`bbtune.backends.wire`), sends them concurrently (a CMA-ES population goes out at once, spread over the
replicas), and reads the label words' log-probs back. Around each request: the on-disk cache, the
budget (`max_requests`, `max_tokens`, `max_cost`, reserved before sending), retries with backoff, and
typed errors. Before the first score a probe checks what the server supports and whether its numbers are
consistent (`check()`), and falls back (lists of prompts -> one per request) or says which mode to use.

Which server supports which mode:

| mode | OpenAI | vLLM | llama.cpp server | mock |
|---|---|---|---|---|
| top_logprobs (bounded) | completion models, k <= 5 | yes, k <= --max-logprobs | yes | yes |
| chat (bounded) | yes, k <= 20 | yes | yes | yes |
| echo (exact) | base models only; gpt-3.5-turbo-instruct refuses | yes | no: ignores echo | yes |
| prompt_embeds (soft; bounded) | no | with --enable-prompt-embeds | no | yes |

"Bounded": a label outside the top-k gets the k-th value (an upper bound), counted in `stats.missing_rate`;
ask for a deep top-k where the server allows it (vLLM ``--max-logprobs``). The probe finds out the rest.

    >>> backend = RemoteBackend(RemoteConfig(base_url=server.url, model="tiny", local_model="tiny"))  # doctest: +SKIP
    >>> backend.score([HardPrompt((), "")], [Example("a film", "pos")], fmt).shape                    # doctest: +SKIP
    (1, 1, 2)
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Awaitable, Callable, Mapping, Sequence

import httpx
import numpy as np
import torch

from ..constants import (
    API_KEY_ENV,
    CHAT_TOKEN_MARGIN,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_REMOTE_BATCH,
    DEFAULT_TIMEOUT_S,
    DEFAULT_TOP_K,
    OPENAI_API_KEY_ENV,
    PROBE_TOLERANCE,
    PROMPT_TOKEN_MARGIN,
)
from ..errors import ConfigError, TaskError
from ..prompts import HardPrompt, Prompt, prompt_kind
from ..tasks import Example, Placement, TaskFormat, verbalizer_token_ids
from ..vocab import Vocabulary
from . import wire
from .accounting import Limits, Meter, Prices, RemoteStats
from .base import Capabilities, check_scores
from .cache import ResponseCache
from .http import ApiClient, KeyInfo
from .loop import LoopThread
from .replicas import ReplicaPool, display_url
from .wire import LabelKeys, ScoreMode


def _h(default: Any, help: str) -> Any:  # noqa: A002 - the CLI reads `help`
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RemoteConfig:
    """Where the server is, how to score on it, and what a run may spend. The API key is never a field:
    it is read from the environment variable `api_key_env` (then ``OPENAI_API_KEY``). Plain field types
    (0 / '' = off) so the command line can be generated from it."""

    base_url: str = _h("http://127.0.0.1:8000/v1", "server base URL; several, comma-separated = replicas of one model")
    model: str = _h("tiny", "model name the server knows")
    mode: ScoreMode = _h(ScoreMode.TOP_LOGPROBS, "top_logprobs, chat, echo or prompt_embeds (soft prompts)")
    local_model: str = _h("", "the same model locally ('tiny', 'smollm2', HF dir, .gguf): tokenizer, verbalizer "
                              "check, vocabulary, prompt embeddings ('' = none)")
    api_key_env: str = _h(API_KEY_ENV, f"environment variable holding the API key (else ${OPENAI_API_KEY_ENV})")
    top_k: int = _h(DEFAULT_TOP_K, "log-probs asked per position (OpenAI completions: <= 5, chat: <= 20)")
    batch_size: int = _h(DEFAULT_REMOTE_BATCH, "prompts per request where the server takes lists")
    concurrency: int = _h(DEFAULT_CONCURRENCY, "requests in flight per replica")
    replica_concurrency: tuple[int, ...] = _h((), "one limit per base_url, overriding concurrency")
    timeout_s: float = _h(DEFAULT_TIMEOUT_S, "seconds to wait for one reply")
    max_retries: int = _h(DEFAULT_MAX_RETRIES, "retries of a failed request (429, 5xx, dropped, timed out)")
    cache_dir: str = _h("", "folder of cached replies, so a rerun pays nothing twice ('' = no cache)")
    max_requests: int = _h(0, "hard limit on HTTP requests, retries included (0 = none)")
    max_tokens: int = _h(0, "hard limit on prompt + completion tokens (0 = none)")
    max_cost: float = _h(0.0, "hard limit on the estimated cost (0 = none)")
    price_prompt_per_mtok: float = _h(0.0, "price per million prompt tokens")
    price_completion_per_mtok: float = _h(0.0, "price per million completion tokens")
    extra_headers: tuple[str, ...] = _h((), "more HTTP headers, each 'Name: value'")
    probe: bool = _h(True, "check the server's capabilities and consistency before the first score")
    probe_tolerance: float = _h(PROBE_TOLERANCE, "how closely repeated log-probs must agree")

    def __post_init__(self) -> None:
        raw = self.base_url.split(",") if isinstance(self.base_url, str) else list(self.base_url)
        urls = [u.strip().rstrip("/") for u in raw if u.strip()]
        if not urls or any(not u.startswith(("http://", "https://")) for u in urls):
            raise ConfigError(f"base_url must be http(s) URL(s), e.g. 'http://localhost:8000/v1'; got {self.base_url!r}")
        object.__setattr__(self, "base_url", ",".join(urls))
        object.__setattr__(self, "replica_concurrency", tuple(int(c) for c in self.replica_concurrency))
        if self.replica_concurrency and len(self.replica_concurrency) != len(urls):
            raise ConfigError(f"replica_concurrency needs one value per base_url ({len(urls)}), "
                              f"got {self.replica_concurrency}")
        try:
            object.__setattr__(self, "mode", ScoreMode(self.mode))
        except ValueError:
            raise ConfigError(f"mode {self.mode!r} is not one of {[m.value for m in ScoreMode]}") from None
        object.__setattr__(self, "extra_headers", _headers(self.extra_headers))
        for name in ("local_model", "cache_dir"):
            object.__setattr__(self, name, getattr(self, name) or "")
        for name in ("max_requests", "max_tokens", "max_cost"):
            object.__setattr__(self, name, getattr(self, name) or 0)
        self._check_numbers()
        if self.mode is ScoreMode.PROMPT_EMBEDS and not self.local_model:
            raise ConfigError("mode='prompt_embeds' needs local_model= (the same model locally, to embed prompts)")

    def _check_numbers(self) -> None:
        top_cap = 20 if self.mode is ScoreMode.CHAT else 10_000
        for name, ok, rule in (
            ("top_k", 1 <= self.top_k <= top_cap, f"in [1, {top_cap}]"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("concurrency", self.concurrency >= 1 and all(c >= 1 for c in self.replica_concurrency), ">= 1"),
            ("timeout_s", self.timeout_s > 0, "> 0"),
            ("max_retries", self.max_retries >= 0, ">= 0"),
            ("max_requests", self.max_requests >= 0, ">= 0 (0 = no limit)"),
            ("max_tokens", self.max_tokens >= 0, ">= 0 (0 = no limit)"),
            ("max_cost", self.max_cost >= 0, ">= 0 (0 = no limit)"),
            ("price_prompt_per_mtok", self.price_prompt_per_mtok >= 0, ">= 0"),
            ("price_completion_per_mtok", self.price_completion_per_mtok >= 0, ">= 0"),
            ("probe_tolerance", self.probe_tolerance >= 0, ">= 0"),
        ):
            if not ok:
                raise ConfigError(f"RemoteConfig.{name} must be {rule}, got {getattr(self, name)!r}")

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(self.base_url.split(","))

    @property
    def limits(self) -> tuple[int, ...]:
        """In-flight requests allowed per replica."""
        return self.replica_concurrency or (self.concurrency,) * len(self.urls)

    @property
    def headers(self) -> dict[str, str]:
        return dict(h.split(":", 1) for h in self.extra_headers)  # type: ignore[misc]

    def build(self, **kwargs: Any) -> "RemoteBackend":
        return RemoteBackend(self, **kwargs)

    def public(self) -> dict[str, Any]:
        """The config for the results folder: URLs without credentials, header names without values."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(base_url=",".join(display_url(u) for u in self.urls), mode=self.mode.value,
                   extra_headers=[h.split(":", 1)[0] for h in self.extra_headers])
        return out


def _headers(value: Mapping[str, str] | Sequence[tuple[str, str] | str]) -> tuple[str, ...]:
    """'Name: value' strings from a mapping, (name, value) pairs, or such strings (command line)."""
    items = value.items() if isinstance(value, Mapping) else value
    out = []
    for item in items:
        name, sep, val = item.partition(":") if isinstance(item, str) else (item[0], ":", item[1])
        if not sep or not name.strip():
            raise ConfigError(f"extra_headers entry {item!r} is not 'Name: value'")
        out.append(f"{name.strip()}:{str(val).strip()}")
    return tuple(out)


@dataclass(frozen=True)
class _Batch:
    """One request: where it goes, its body, how to read its reply, and the tokens to reserve for it."""

    path: str
    body: dict[str, Any]
    parse: Callable[[dict[str, Any]], list[Any]]
    estimate: tuple[int, int]


@dataclass
class ProbeReport:
    """What `RemoteBackend.check()` found; saved with the run's stats."""

    mode: str
    top_k: int
    batch_size: int
    top_k_returned: int | None = None
    models: list[str] | None = None
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class RemoteBackend:
    """Scores prompts through an OpenAI-compatible server (see the module docstring).

    `transport` (an ``httpx.AsyncBaseTransport``, e.g. ``httpx.MockTransport``) replaces the network in
    tests; `sleep` replaces the retry wait. Close with `close()` or use as a context manager.
    """

    def __init__(self, config: RemoteConfig | None = None, *, transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, **overrides: Any):
        self.config = config if config is not None else RemoteConfig(**overrides)
        cfg = self.config
        self.name = f"remote:{cfg.model}@{display_url(cfg.urls[0])}"
        self.capabilities = Capabilities(soft=cfg.mode is ScoreMode.PROMPT_EMBEDS, hard=True, gradients=False)
        self.stats = RemoteStats()
        self.probe_: ProbeReport | None = None
        self.top_k_, self.batch_size_ = cfg.top_k, (cfg.batch_size if cfg.mode.takes_lists else 1)
        self._transport, self._sleep = transport, sleep
        self._loop = LoopThread()
        self._api: ApiClient | None = None
        self._local: Any = None

    # ------------------------------------------------------------------ public

    def score(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> np.ndarray:
        """Label log-probs (P, B, L); labels missing from a top-k list get the k-th value (counted in stats)."""
        if not examples:
            raise TaskError("score() got no examples; give at least one")
        self.capabilities.require(prompt_kind(list(prompts)), self.name)
        if self.config.probe and self.probe_ is None:
            self.check()
        labels = self._label_keys(fmt)
        P, B, L = len(prompts), len(examples), len(labels.spellings)
        if self.config.mode is ScoreMode.ECHO:
            pairs = [(t + w, w) for t in self._texts(prompts, examples, fmt) for w in fmt.verbalizer.values()]
            flat = np.array(self._run(self._echo_items(pairs)), dtype=np.float64)
        else:
            tops = self._run(self._inputs(prompts, examples, fmt))
            flat = np.stack([self._read_labels(top, labels) for top in tops])
        self.stats.add(P, B)
        return check_scores(flat.reshape(P, B, L), P, B, L, self.name)

    def check(self) -> ProbeReport:
        """Probe the server: model served, features of the mode, consistent numbers (see probe.py). Runs
        before the first score unless ``probe=False``; may lower `batch_size_` / `top_k_` (see the report)."""
        from .probe import run_probe

        self.probe_ = run_probe(self)
        return self.probe_

    def vocabulary(self) -> Vocabulary:
        return self._reference().vocabulary()

    def describe(self) -> dict[str, Any]:
        """Config, probe findings and stats, for the results folder; never the key."""
        return {"backend": self.name, "config": self.config.public(), "stats": self.stats.as_dict(),
                "probe": asdict(self.probe_) if self.probe_ else None}

    def close(self) -> None:
        if self._api is not None:
            self._loop.run(self._api.aclose())
            self._api = None
        self._loop.close()

    def __enter__(self) -> "RemoteBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteBackend({self.name}, mode={self.config.mode.value})"

    # ------------------------------------------------------------------ local side: tokenizer, embeddings

    def _reference(self) -> Any:
        """A LocalBackend over `local_model`: the tokenizer, the embedding table, the input layout."""
        if self._local is None:
            if not self.config.local_model:
                raise ConfigError(
                    "this needs the model's tokenizer/embeddings: set RemoteConfig.local_model to the same model "
                    "(a HF directory, a .gguf file, 'smollm2' or 'tiny')")
            from .local import LocalBackend

            self._local = LocalBackend(self.config.local_model)
        return self._local

    @property
    def tokenizer(self) -> Any | None:
        return self._reference().tokenizer if self.config.local_model else None

    def _label_keys(self, fmt: TaskFormat) -> LabelKeys:
        words = list(fmt.verbalizer.values())
        tok = self.tokenizer
        if tok is None:
            return LabelKeys.build(words, None, None)
        ids = verbalizer_token_ids(tok, fmt)  # raises VerbalizerError for a word that is not one token
        return LabelKeys.build(words, ids, [tok.decode([i]) for i in ids])

    def _count_tokens(self, text: str) -> int:
        """Upper estimate of a text's tokens for the budget: exact with the local tokenizer, else its bytes
        (a byte-level BPE token is at least one byte)."""
        tok = self.tokenizer
        n = len(tok(text, add_special_tokens=True)["input_ids"]) if tok is not None else len(text.encode())
        return n + PROMPT_TOKEN_MARGIN + (CHAT_TOKEN_MARGIN if self.config.mode is ScoreMode.CHAT else 0)

    # ------------------------------------------------------------------ building requests

    def _texts(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> list[str]:
        """Row (p, b) = p * B + b: prefix ``prompt + head + cue``, suffix ``head + prompt + cue``."""
        out = []
        for prompt in prompts:
            assert isinstance(prompt, HardPrompt)
            for ex in examples:
                r = fmt.render(ex)
                out.append(prompt.text + r.head + r.cue if fmt.placement is Placement.PREFIX else r.head + prompt.text + r.cue)
        return out

    def _sequence_embeds(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> list[torch.Tensor]:
        """Each row's full input embeddings, in LocalBackend's order (lead, prompt/head by placement, cue)."""
        local = self._reference()
        with torch.inference_mode():
            table = local.prompt_embeds(prompts).float().cpu()
            enc = local._encode(examples, fmt, table.shape[1])
            lead, cue = local._embed_ids(enc.lead).float(), local._embed_ids(enc.cue).float()
            heads = [local._embed_ids(h).float() for h in enc.heads]
        prefix = fmt.placement is Placement.PREFIX
        return [torch.cat([lead, *((p, h) if prefix else (h, p)), cue]) for p in table for h in heads]

    def _inputs(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> list[_Batch]:
        if self.config.mode is ScoreMode.PROMPT_EMBEDS:
            return self._embeds_items(self._sequence_embeds(prompts, examples, fmt))
        return self._text_items(self._texts(prompts, examples, fmt))

    def _split(self, items: Sequence[Any], size: int | None, path: str, body: Callable[[Sequence[Any]], dict[str, Any]],
               parse: Callable[[Sequence[Any]], Callable[[dict[str, Any]], list[Any]]],
               tokens: Callable[[Any], int]) -> list[_Batch]:
        """One request per chunk of `items` (`size`, default `batch_size_`), with its parser and token estimate."""
        size = size or self.batch_size_
        parts = [items[i : i + size] for i in range(0, len(items), size)]
        return [_Batch(path, body(part), parse(part), (sum(map(tokens, part)), len(part))) for part in parts]

    def _text_items(self, texts: Sequence[str], size: int | None = None) -> list[_Batch]:
        model, k = self.config.model, self.top_k_
        if self.config.mode is ScoreMode.CHAT:  # chat takes one conversation per request
            return self._split(texts, 1, wire.CHAT, lambda part: wire.chat_body(model, part[0], k),
                               lambda part: _chat_parser, self._count_tokens)
        return self._split(texts, size, wire.COMPLETIONS, lambda part: wire.top_logprob_body(model, part, k),
                           lambda part: _top_parser(len(part)), self._count_tokens)

    def _embeds_items(self, embeds: Sequence[torch.Tensor], size: int | None = None) -> list[_Batch]:
        model, k = self.config.model, self.top_k_
        return self._split(embeds, size, wire.COMPLETIONS,
                           lambda part: wire.embeds_body(model, [wire.encode_embeds(e) for e in part], k),
                           lambda part: _top_parser(len(part)), lambda e: int(e.shape[0]) + PROMPT_TOKEN_MARGIN)

    def _echo_items(self, pairs: Sequence[tuple[str, str]], size: int | None = None) -> list[_Batch]:
        """(text ending in the label word, the word) pairs."""
        def parser(part: Sequence[tuple[str, str]]) -> Callable[[dict[str, Any]], list[Any]]:
            return lambda r: [wire.echo_label_logprob(c, t, w) for c, (t, w) in zip(wire.choices(r, len(part)), part)]

        return self._split(pairs, size, wire.COMPLETIONS, lambda part: wire.echo_body(self.config.model, [t for t, _ in part]),
                           parser, lambda pair: self._count_tokens(pair[0]))

    # ------------------------------------------------------------------ sending

    def _client(self) -> ApiClient:
        if self._api is None:
            cfg = self.config
            env = cfg.api_key_env if os.environ.get(cfg.api_key_env) else (
                OPENAI_API_KEY_ENV if os.environ.get(OPENAI_API_KEY_ENV) else cfg.api_key_env)
            stats = self.stats
            self._api = ApiClient(
                ReplicaPool(cfg.urls, cfg.limits),
                Meter(Limits(cfg.max_requests or None, cfg.max_tokens or None, cfg.max_cost or None),
                      Prices(cfg.price_prompt_per_mtok, cfg.price_completion_per_mtok), stats),
                stats, model=cfg.model, key=KeyInfo(env, os.environ.get(env) or None),
                headers={"User-Agent": "bbtune", **cfg.headers}, timeout_s=cfg.timeout_s,
                max_retries=cfg.max_retries, cache=ResponseCache(cfg.cache_dir) if cfg.cache_dir else None,
                transport=self._transport, sleep=self._sleep)
        return self._api

    def _run(self, batches: list[_Batch], salt: str = "") -> list[Any]:
        """Send all batches concurrently; their parsed items, flattened in order."""
        from .probe import explain

        api = self._client()

        async def all_of() -> list[list[Any]]:
            tasks = [asyncio.ensure_future(api.call(b.path, b.body, b.parse, estimate=b.estimate, salt=salt))
                     for b in batches]
            try:
                return await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

        try:
            parts = self._loop.run(all_of())
        except Exception as err:
            better = explain(err, self.config.mode)
            if better is err:
                raise
            raise better from err
        return [item for part in parts for item in part]

    def _read_labels(self, top: Mapping[str, float], labels: LabelKeys) -> np.ndarray:
        scores, missing = wire.label_scores(top, labels)
        self.stats.count_labels(len(scores), missing)
        return scores


def _top_parser(n: int) -> Callable[[dict[str, Any]], list[Any]]:
    return lambda reply: [wire.completion_top(c) for c in wire.choices(reply, n)]


def _chat_parser(reply: dict[str, Any]) -> list[Any]:
    return [wire.chat_top(wire.choices(reply, 1)[0])]
