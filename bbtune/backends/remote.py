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
| top_logprobs | yes (k <= 5; instruct models) | yes (k <= --max-logprobs) | yes | yes |
| chat | yes (k <= 20) | yes | yes | yes |
| echo | babbage/davinci-002 only | yes | no (ignores echo) | yes |
| prompt_embeds (soft) | no | --enable-prompt-embeds | no | yes |

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
from ..prompts import HardPrompt, Prompt, SoftPrompt, prompt_kind
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
    it is read from the environment variable `api_key_env` (then ``OPENAI_API_KEY``)."""

    base_url: str | tuple[str, ...] = _h("http://127.0.0.1:8000/v1", "server base URL; several (tuple or "
                                         "comma-separated) = replicas of the same model")
    model: str = _h("tiny", "model name the server knows")
    mode: ScoreMode = _h(ScoreMode.TOP_LOGPROBS, "top_logprobs, chat, echo or prompt_embeds (soft prompts)")
    local_model: str | None = _h(None, "the same model locally ('tiny', 'smollm2', HF dir, .gguf): tokenizer, "
                                       "verbalizer check, vocabulary, prompt embeddings")
    api_key_env: str = _h(API_KEY_ENV, f"environment variable holding the API key (else ${OPENAI_API_KEY_ENV})")
    top_k: int = _h(DEFAULT_TOP_K, "log-probs asked per position (OpenAI completions: <= 5, chat: <= 20)")
    batch_size: int = _h(DEFAULT_REMOTE_BATCH, "prompts per request where the server takes lists")
    concurrency: int | tuple[int, ...] = _h(DEFAULT_CONCURRENCY, "requests in flight per replica (one value, or "
                                                                  "one per base_url, comma-separated)")
    timeout_s: float = _h(DEFAULT_TIMEOUT_S, "seconds to wait for one reply")
    max_retries: int = _h(DEFAULT_MAX_RETRIES, "retries of a failed request (429, 5xx, dropped, timed out)")
    cache_dir: str | None = _h(None, "folder of cached replies; a rerun pays nothing twice")
    max_requests: int | None = _h(None, "hard limit on HTTP requests (retries included)")
    max_tokens: int | None = _h(None, "hard limit on prompt + completion tokens")
    max_cost: float | None = _h(None, "hard limit on estimated cost")
    price_prompt_per_mtok: float = _h(0.0, "price per million prompt tokens")
    price_completion_per_mtok: float = _h(0.0, "price per million completion tokens")
    extra_headers: tuple[tuple[str, str], ...] = _h((), "more HTTP headers: (name, value) pairs or 'Name: value'")
    probe: bool = _h(True, "check the server's capabilities and consistency before the first score")
    probe_tolerance: float = _h(PROBE_TOLERANCE, "how closely repeated log-probs must agree")

    def __post_init__(self) -> None:
        urls = self.base_url.split(",") if isinstance(self.base_url, str) else list(self.base_url)
        urls = [u.strip().rstrip("/") for u in urls if u.strip()]
        if not urls or any(not u.startswith(("http://", "https://")) for u in urls):
            raise ConfigError(f"base_url must be http(s) URL(s), e.g. 'http://localhost:8000/v1'; got {self.base_url!r}")
        object.__setattr__(self, "base_url", tuple(urls))
        conc = _ints(self.concurrency, len(urls))
        if len(conc) != len(urls) or any(c < 1 for c in conc):
            raise ConfigError(f"concurrency must be >= 1, one value or one per base_url ({len(urls)}); got {self.concurrency!r}")
        object.__setattr__(self, "concurrency", conc)
        try:
            object.__setattr__(self, "mode", ScoreMode(self.mode))
        except ValueError:
            raise ConfigError(f"mode {self.mode!r} is not one of {[m.value for m in ScoreMode]}") from None
        object.__setattr__(self, "extra_headers", _headers(self.extra_headers))
        self._check_numbers()
        if self.mode is ScoreMode.PROMPT_EMBEDS and not self.local_model:
            raise ConfigError("mode='prompt_embeds' needs local_model= (the same model locally, to embed prompts)")

    def _check_numbers(self) -> None:
        top_cap = 20 if self.mode is ScoreMode.CHAT else 10_000
        for name, ok, rule in (
            ("top_k", 1 <= self.top_k <= top_cap, f"in [1, {top_cap}]"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("timeout_s", self.timeout_s > 0, "> 0"),
            ("max_retries", self.max_retries >= 0, ">= 0"),
            ("max_requests", self.max_requests is None or self.max_requests >= 0, ">= 0 or None"),
            ("max_tokens", self.max_tokens is None or self.max_tokens >= 0, ">= 0 or None"),
            ("max_cost", self.max_cost is None or self.max_cost >= 0, ">= 0 or None"),
            ("price_prompt_per_mtok", self.price_prompt_per_mtok >= 0, ">= 0"),
            ("price_completion_per_mtok", self.price_completion_per_mtok >= 0, ">= 0"),
            ("probe_tolerance", self.probe_tolerance >= 0, ">= 0"),
        ):
            if not ok:
                raise ConfigError(f"RemoteConfig.{name} must be {rule}, got {getattr(self, name)!r}")

    def build(self, **kwargs: Any) -> "RemoteBackend":
        return RemoteBackend(self, **kwargs)

    def public(self) -> dict[str, Any]:
        """The config for the results folder (URLs without credentials; headers by name only)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["base_url"] = [display_url(u) for u in self.base_url]
        out["mode"] = self.mode.value
        out["extra_headers"] = [k for k, _ in self.extra_headers]
        return out


def _ints(value: int | str | Sequence[int], n: int) -> tuple[int, ...]:
    """One int for all replicas, one per replica, or the same as a comma-separated string (command line)."""
    if isinstance(value, str):
        value = [int(v) for v in value.split(",") if v.strip()]
    if isinstance(value, int):
        return (value,) * n
    return tuple(int(v) for v in value) if len(value) != 1 else (int(value[0]),) * n


def _headers(value: Mapping[str, str] | Sequence[tuple[str, str] | str]) -> tuple[tuple[str, str], ...]:
    """A mapping, (name, value) pairs, or 'Name: value' strings (command line)."""
    items = value.items() if isinstance(value, Mapping) else value
    out = []
    for item in items:
        name, sep, val = item.partition(":") if isinstance(item, str) else (item[0], ":", item[1])
        if not sep or not name.strip():
            raise ConfigError(f"extra_headers entry {item!r} is not 'Name: value'")
        out.append((name.strip(), str(val).strip()))
    return tuple(out)


@dataclass(frozen=True)
class _Batch:
    """One request: its body, how to read its reply, and the tokens to reserve for it."""

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
        self.name = f"remote:{cfg.model}@{display_url(cfg.base_url[0])}"
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

    def check(self, fmt: TaskFormat | None = None) -> ProbeReport:
        """Probe the server once: model served, features of the mode, and consistent numbers (see probe.py)."""
        from .probe import run_probe

        self.probe_ = run_probe(self, fmt)
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
            embeds = self._sequence_embeds(prompts, examples, fmt)
            return self._embeds_items([wire.encode_embeds(e) for e in embeds], [e.shape[0] for e in embeds])
        return self._text_items(self._texts(prompts, examples, fmt))

    def _chunks(self, n: int, size: int | None) -> list[slice]:
        size = size or self.batch_size_
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    def _text_items(self, texts: list[str], size: int | None = None) -> list[_Batch]:
        cfg, k = self.config, self.top_k_
        if cfg.mode is ScoreMode.CHAT:
            return [_Batch(wire.chat_body(cfg.model, t, k), lambda r: [wire.chat_top(wire.choices(r, 1)[0])],
                           (self._count_tokens(t), 1)) for t in texts]
        return [_Batch(wire.top_logprob_body(cfg.model, texts[s], k), _top_parser(s.stop - s.start),
                       (sum(map(self._count_tokens, texts[s])), s.stop - s.start)) for s in self._chunks(len(texts), size)]

    def _embeds_items(self, encoded: list[str], lengths: list[int], size: int | None = None) -> list[_Batch]:
        return [_Batch(wire.embeds_body(self.config.model, encoded[s], self.top_k_), _top_parser(s.stop - s.start),
                       (sum(lengths[s]) + PROMPT_TOKEN_MARGIN, s.stop - s.start)) for s in self._chunks(len(encoded), size)]

    def _echo_items(self, pairs: list[tuple[str, str]], size: int | None = None) -> list[_Batch]:
        """(text ending in the label word, the word) pairs."""
        texts = [t for t, _ in pairs]

        def parser(part: list[tuple[str, str]]) -> Callable[[dict[str, Any]], list[Any]]:
            return lambda r: [wire.echo_label_logprob(c, t, w) for c, (t, w) in zip(wire.choices(r, len(part)), part)]

        return [_Batch(wire.echo_body(self.config.model, texts[s]), parser(pairs[s]),
                       (sum(map(self._count_tokens, texts[s])), s.stop - s.start)) for s in self._chunks(len(texts), size)]

    # ------------------------------------------------------------------ sending

    def _client(self) -> ApiClient:
        if self._api is None:
            cfg = self.config
            env = cfg.api_key_env if os.environ.get(cfg.api_key_env) else (
                OPENAI_API_KEY_ENV if os.environ.get(OPENAI_API_KEY_ENV) else cfg.api_key_env)
            stats = self.stats
            self._api = ApiClient(
                ReplicaPool(cfg.base_url, cfg.concurrency),  # type: ignore[arg-type]
                Meter(Limits(cfg.max_requests, cfg.max_tokens, cfg.max_cost),
                      Prices(cfg.price_prompt_per_mtok, cfg.price_completion_per_mtok), stats),
                stats, model=cfg.model, key=KeyInfo(env, os.environ.get(env) or None),
                headers={"User-Agent": "bbtune", **dict(cfg.extra_headers)}, timeout_s=cfg.timeout_s,
                max_retries=cfg.max_retries, cache=ResponseCache(cfg.cache_dir) if cfg.cache_dir else None,
                transport=self._transport, sleep=self._sleep)
        return self._api

    def _run(self, batches: list[_Batch], salt: str = "") -> list[Any]:
        """Send all batches concurrently; their parsed items, flattened in order."""
        from .probe import explain

        api = self._client()

        async def all_of() -> list[list[Any]]:
            tasks = [asyncio.ensure_future(api.call(self.config.mode.path, b.body, b.parse, estimate=b.estimate,
                                                    salt=salt)) for b in batches]
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
