"""`RemoteBackend`: scores prompts through an OpenAI-compatible server (OpenAI, vLLM, llama.cpp, the mock).

One `score()` call turns (prompts x examples) into requests for the configured `ScoreMode` (see
`bbtune.backends.wire`), sends them concurrently (a CMA-ES population goes out at once, spread over the
replicas), and reads the label words' log-probs back. Around each request: the on-disk cache, the
budget (`max_requests`, `max_tokens`, `max_cost`, reserved before sending), retries with backoff, and
typed errors. Before the first score a probe checks what the server supports and whether its numbers are
consistent (`check()`, see `bbtune.backends.probe`), and adapts (one prompt per request, a shallower or deeper
top-k, logit_bias on or off) or refuses with what to do instead.

Which server supports which mode:

| mode | OpenAI | vLLM | llama-cpp-python server | mock |
|---|---|---|---|---|
| top_logprobs (bounded) | completion models, k <= 5 | yes, k <= --max-logprobs | yes, any k; lists -> HTTP 500 | yes |
| chat (bounded) | yes, k <= 20 | yes | yes, any k | yes |
| echo (exact) | base models only; gpt-3.5-turbo-instruct refuses | yes | no: log-probs shifted by one | yes |
| prompt_embeds (soft; bounded) | no | with --enable-prompt-embeds | no | yes |
| logit_bias in the log-probs | (the probe decides) | (the probe decides) | no: sampling only | yes |
| text (answers parsed to labels) | yes | yes | yes | yes (also with --no-logprobs) |

``text`` needs no log-probs at all (hosted chat APIs that return only text): each input's answers are mapped to
labels by rules (`bbtune.tasks.answers`) and a label's score is the log of its smoothed share of the answers.

Label words of several tokens (``" very negative"``): echo sums their tokens exactly; top_logprobs and
prompt_embeds chain requests (each token's top-k after the input and the word's earlier tokens, see `wire`);
chat refuses them. Chaining needs ``local_model`` (the tokenizer says where a word's tokens end).

"Bounded": a label outside the top-k is *missing*: its score is NaN, counted in `stats.missing_rate`, and the
loss gives it a documented meaning (`bbtune.search.losses`). The probe finds the deepest top-k the server accepts,
turns on ``logit_bias`` on the label tokens where the server honours it (labels then always make the list;
the log-probs are then those of the biased distribution, whose label *differences* are the true ones), asks
deeper lists where it does not, and refuses a run whose sample misses more than ``max_missing`` of its
labels. The probe's findings (`ProbeReport`) go into the run folder (``metrics.json``, key ``probe``).

`score_topk` adds each prompt's top-k at the answer position (what a readout learns from), up to the deepest the
probe found the server accepts (`capabilities.topk`), always read from requests *without* logit_bias; what each mode
sends for it: `bbtune.backends.remote_topk`.

    >>> backend = RemoteBackend(RemoteConfig(base_url=server.url, model="tiny", local_model="tiny"))  # doctest: +SKIP
    >>> backend.score([HardPrompt((), "")], [Example("a film", "pos")], fmt).shape                    # doctest: +SKIP
    (1, 1, 2)
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Sequence

import httpx
import numpy as np
import torch

from bbtune.constants import (
    API_KEY_ENV,
    CHAT_TOKEN_MARGIN,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_REMOTE_BATCH,
    DEFAULT_TIMEOUT_S,
    DEFAULT_TOP_K,
    OPENAI_API_KEY_ENV,
    DEFAULT_CHAT_INSTRUCTION,
    DEFAULT_ANSWER_TOKENS,
    DEFAULT_MAX_MISSING,
    DEFAULT_MAX_UNPARSED,
    DEFAULT_SMOOTHING,
    LOGIT_BIAS,
    MAX_ANSWERS_PER_REQUEST,
    PROBE_TOLERANCE,
    PROMPT_TOKEN_MARGIN,
)
from bbtune.errors import CapabilityError, ConfigError, TaskError, VerbalizerError
from bbtune.core import secrets
from bbtune.core.options import string_tuple
from bbtune.core.prompts import HardPrompt, Prompt, prompt_kind
from bbtune.core.topk import AnswerTopK
from bbtune.tasks import Example, TaskFormat, verbalizer_token_ids
from bbtune.tasks.answers import AnswerRules, AnswerScores, answer_scores, parse_synonyms
from bbtune.core.vocab import Vocabulary
from bbtune.backends import wire
from bbtune.backends.accounting import Ledger, Limits, SpendingLimiter, Prices, RemoteStats, restore
from bbtune.backends.base import Backend, Capabilities, check_generate_args, check_scores, cut_at_stop
from bbtune.backends.cache import ResponseCache
from bbtune.backends.continuations import check_continuations, score_continuations
from bbtune.backends.http import ApiClient, KeyInfo
from bbtune.backends.labeltrie import LabelTrie
from bbtune.backends.loop import LoopThread
from bbtune.backends.replicas import ReplicaPool, display_url
from bbtune.backends.probe import explain, run_probe
from bbtune.backends.remote_topk import topk_strategy
from bbtune.backends.wire import LabelKeys, ProbeReport, ScoreMode

if TYPE_CHECKING:
    from bbtune.backends.local import LocalBackend


def _h(default: Any, help: str) -> Any:  # noqa: A002 - the CLI reads `help`
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RemoteConfig:
    """Where the server is, how to score on it, and what a run may spend. The API key is never a field:
    it is read from the environment variable `api_key_env` (then ``OPENAI_API_KEY``). Plain field types
    (0 / '' = off) so the command line can be generated from it."""

    base_url: str = _h("http://127.0.0.1:8000/v1", "server base URL; several, comma-separated = replicas of one model")
    model: str = _h("tiny", "model name the server knows")
    mode: ScoreMode = _h(ScoreMode.TOP_LOGPROBS, "top_logprobs, chat, echo, prompt_embeds (soft prompts) or text "
                                                 "(servers without log-probs: scores from parsed answers)")
    local_model: str = _h("", "the same model locally ('tiny', 'smollm2', HF dir, .gguf): tokenizer, verbalizer "
                              "check, vocabulary, prompt embeddings ('' = none)")
    api_key_env: str = _h(API_KEY_ENV, f"environment variable holding the API key (else ${OPENAI_API_KEY_ENV})")
    top_k: int = _h(DEFAULT_TOP_K, "deepest log-probs asked per position; the probe steps down (20, 10, 5, 1) where the server refuses")
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
    logit_bias: str = _h("auto", f"bias on every label token so labels enter the top-k (differences kept): 'auto' "
                                 f"({LOGIT_BIAS:g} where the probe finds it honoured), 'off', or a number in (0, 100]")
    max_missing: float = _h(DEFAULT_MAX_MISSING, "largest share of label scores missing from the top-k on the probe's "
                                                 "sample before the run stops (0..1)")
    chat_instruction: str = _h(DEFAULT_CHAT_INSTRUCTION, "chat and text-over-chat modes: text put before each "
                                                         "message, {labels} = the answer words ('' = none)")
    answer_endpoint: str = _h("chat", "text mode: ask 'chat' (/chat/completions) or 'completions' for answers")
    answer_samples: int = _h(1, "text mode: answers per input (n); a label's score is log of its smoothed share")
    answer_temperature: float = _h(0.0, "text mode: sampling temperature (0 = greedy; answer_samples > 1 needs > 0)")
    answer_tokens: int = _h(DEFAULT_ANSWER_TOKENS, "text mode: most tokens per answer")
    answer_smoothing: float = _h(DEFAULT_SMOOTHING, "text mode: a in log((count + a) / (n + a * labels)), > 0")
    answer_synonyms: tuple[str, ...] = _h((), "text mode: more words naming a label, each 'LABEL=word|word' "
                                              "(the verbalizer word always names its label)")
    answer_fold_case: bool = _h(True, "text mode: 'Great' names great")
    answer_strip_punctuation: bool = _h(True, "text mode: punctuation counts as a space ('so-so' is 'so so')")
    answer_collapse_whitespace: bool = _h(True, "text mode: runs of spaces and newlines count as one space")
    max_unparsed: float = _h(DEFAULT_MAX_UNPARSED, "text mode: largest share of the probe's sample answers naming no "
                                                   "label before the run stops (0..1)")

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
        secrets.check_env_name(self.api_key_env, "api_key_env")
        object.__setattr__(self, "answer_synonyms", string_tuple(self.answer_synonyms))
        parse_synonyms(self.answer_synonyms)  # a malformed entry fails here, not at the first score
        for name in ("local_model", "cache_dir"):
            object.__setattr__(self, name, getattr(self, name) or "")
        for name in ("max_requests", "max_tokens", "max_cost"):
            object.__setattr__(self, name, getattr(self, name) or 0)
        self._check_numbers()
        self._check_bias()
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
            ("max_missing", 0 <= self.max_missing <= 1, "in [0, 1]"),
            ("answer_endpoint", self.answer_endpoint in ("chat", "completions"), "'chat' or 'completions'"),
            ("answer_samples", self.answer_samples >= 1, ">= 1"),
            ("answer_temperature", 0 <= self.answer_temperature <= 2, "in [0, 2]"),
            ("answer_temperature", self.answer_samples == 1 or self.answer_temperature > 0,
             "> 0 when answer_samples > 1 (n greedy answers are one answer n times)"),
            ("answer_tokens", self.answer_tokens >= 1, ">= 1"),
            ("answer_smoothing", self.answer_smoothing > 0, "> 0"),
            ("max_unparsed", 0 <= self.max_unparsed <= 1, "in [0, 1]"),
        ):
            if not ok:
                raise ConfigError(f"RemoteConfig.{name} must be {rule}, got {getattr(self, name)!r}")

    def _check_bias(self) -> None:
        value = str(self.logit_bias).strip().lower()
        object.__setattr__(self, "logit_bias", value)
        if value in ("auto", "off"):
            return
        try:
            ok = 0 < float(value) <= 100
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"--remote-logit-bias must be 'auto', 'off' or a number in (0, 100], got {self.logit_bias!r}")

    @property
    def bias(self) -> float:
        """The label-token bias to try (0 = off)."""
        return 0.0 if self.logit_bias == "off" else LOGIT_BIAS if self.logit_bias == "auto" else float(self.logit_bias)

    @property
    def uses_chat(self) -> bool:
        """Whether requests go to /chat/completions (chat mode, or text mode asking chat)."""
        return self.mode is ScoreMode.CHAT or (self.mode is ScoreMode.TEXT and self.answer_endpoint == "chat")

    def answer_rules(self, fmt: TaskFormat) -> AnswerRules:
        """Text mode: how answers name `fmt`'s labels (its verbalizer words plus `answer_synonyms`)."""
        return AnswerRules.build(fmt.verbalizer, parse_synonyms(self.answer_synonyms), fold_case=self.answer_fold_case,
                                 strip_punctuation=self.answer_strip_punctuation,
                                 collapse_whitespace=self.answer_collapse_whitespace)

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


def _key(env: str) -> KeyInfo:
    """The key in $`env`, checked before it goes into a header (a newline or non-ASCII character is refused in one
    line, not retried as a network fault) and hidden from every message and file."""
    value = os.environ.get(env) or None
    if value is not None:
        secrets.remember(value)
        secrets.check_key(value, f"the API key in ${env}")
    return KeyInfo(env, value)


def _headers(value: Mapping[str, str] | Sequence[tuple[str, str] | str]) -> tuple[str, ...]:
    """'Name: value' strings from a mapping, (name, value) pairs, or such strings (command line)."""
    items = value.items() if isinstance(value, Mapping) else string_tuple(value)
    out: list[str] = []
    for item in items:
        name, sep, val = item.partition(":") if isinstance(item, str) else (item[0], ":", item[1])
        secrets.remember_header(item if isinstance(item, str) else f"{item[0]}:{item[1]}")
        if not sep or not name.strip():
            raise ConfigError(f"extra_headers entry {len(out) + 1} is not 'Name: value' (quote each header whole: "
                              "'Authorization: Bearer ...'; the value is not shown)")
        secrets.check_key(str(val).strip(), f"extra_headers entry {name.strip()!r}")
        out.append(f"{name.strip()}:{str(val).strip()}")
    return tuple(out)


class RemoteBackend(Backend):
    """Scores prompts through an OpenAI-compatible server (see the module docstring).

    `transport` (an ``httpx.AsyncBaseTransport``, e.g. ``httpx.MockTransport``) replaces the network in
    tests; `sleep` replaces the retry wait. Close with `close()` or use as a context manager.
    """

    stats: RemoteStats

    def __init__(self, config: RemoteConfig | None = None, *, transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, **overrides: Any):
        self.config = config if config is not None else RemoteConfig(**overrides)
        cfg = self.config
        self.name = f"remote:{cfg.model}@{display_url(cfg.urls[0])}"
        self.capabilities = Capabilities(soft=cfg.mode is ScoreMode.PROMPT_EMBEDS, hard=True, gradients=False,
                                         generate=True, logprobs=cfg.mode is not ScoreMode.TEXT,
                                         topk=0 if cfg.mode is ScoreMode.TEXT else cfg.top_k)  # the probe may lower it
        self.stats = RemoteStats()
        self.probe_: ProbeReport | None = None
        self.top_k_, self.batch_size_ = cfg.top_k, (cfg.batch_size if cfg.mode.takes_lists and not cfg.uses_chat else 1)
        self.answers_per_request_ = MAX_ANSWERS_PER_REQUEST  # the probe lowers it to 1 where the server refuses n
        self.logit_bias_ = 0.0  # set by the probe where the server honours it (or by the config without a probe)
        if not cfg.probe and cfg.logit_bias not in ("auto", "off"):
            self.logit_bias_ = cfg.bias
        self._transport, self._sleep = transport, sleep
        self._loop = LoopThread()
        self._api: ApiClient | None = None
        self._local: Any = None
        self.ledger_: Ledger | None = None  # the run folder's write-ahead ledger (keep_books)
        self._replies_dir = self.config.cache_dir

    # ------------------------------------------------------------------ public

    def score(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> np.ndarray:
        """Label log-probs (P, B, L); NaN for a label missing from a top-k list (counted in stats)."""
        if not examples:
            raise TaskError("score() got no examples; give at least one")
        self.capabilities.require(prompt_kind(list(prompts)), self.name)
        if self.config.probe and self.probe_ is None:
            self.check((prompts[0], examples, fmt))
        if self.config.mode is ScoreMode.TEXT:
            found = self.answer_scores(prompts, examples, fmt)
            self.stats.count_answers(found.answers, found.unparsed)
            scores = found.scores
        else:
            scores = self.label_logprobs(prompts, examples, fmt, bias=self.logit_bias_)
        self.stats.count_labels(scores.size, int(np.isnan(scores).sum()))
        self.stats.add(len(prompts), len(examples))
        return check_scores(scores, len(prompts), len(examples), len(fmt.labels), self.name)

    def score_topk(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                   k: int) -> tuple[np.ndarray, list[AnswerTopK]]:
        """`score`'s label log-probs (P, B, L) and each prompt's top-k at the answer position, from requests
        without logit_bias (a readout learns the model's own distribution), at most min(k, `capabilities.topk`)
        tokens a row and never more than the server returned; what each mode sends: `bbtune.backends.remote_topk`."""
        if not examples:
            raise TaskError("score_topk() got no examples; give at least one")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"score_topk() needs k >= 1 (tokens per row), got {k!r}")
        self.capabilities.require(prompt_kind(list(prompts)), self.name)
        strategy = topk_strategy(self.config.mode, self.name)
        if self.config.probe and self.probe_ is None:
            self.check((prompts[0], examples, fmt))
        depth = min(k, self.capabilities.topk)
        flat, tops = strategy.collect(self, prompts, examples, fmt, depth)
        scores = flat.reshape(len(prompts), len(examples), len(fmt.labels))
        self.stats.count_labels(scores.size, int(np.isnan(scores).sum()))
        self.stats.add(len(prompts), len(examples))
        B = len(examples)
        found = [AnswerTopK.from_pairs([top.items() for top in tops[p * B: (p + 1) * B]], depth)
                 for p in range(len(prompts))]
        return check_scores(scores, len(prompts), len(examples), len(fmt.labels), self.name), found

    def label_logprobs(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat, *,
                       bias: float = 0.0, salt: str = "", strict: bool = False,
                       answer_tops: list[dict[str, float]] | None = None) -> np.ndarray:
        """(P, B, L) label log-probs as the server gives them (NaN = missing; with `strict` also a label with
        any spelling unlisted), with `bias` on every label token; counts nothing (the probe uses it too). Top-k modes:
        `answer_tops`, where given, gets each row's top-k list at the answer position, the reply the scores were read
        from (chained words: the first step's), for `score_topk`."""
        P, B, L = len(prompts), len(examples), len(fmt.verbalizer)
        if self.config.mode is ScoreMode.ECHO:
            assert answer_tops is None, "echo reads its top-k with the words (remote_topk)"
            pairs = [(t + w, w) for t in self.texts(prompts, examples, fmt) for w in fmt.verbalizer.values()]
            flat = np.array(self.send(wire.echo_requests(self.shape(), pairs, lambda p: self.count_tokens(p[0]))),
                            dtype=np.float64)
        elif self.label_trie(fmt) is not None:
            flat = self._chained(prompts, examples, fmt, bias=bias, salt=salt, strict=strict, answer_tops=answer_tops)
        else:
            labels = self.label_keys(fmt)
            shape = self.shape(labels.token_ids if bias else (), bias)
            tops = self.send(self.requests(shape, self.inputs(prompts, examples, fmt)), salt=salt)
            if answer_tops is not None:
                answer_tops.extend(tops)
            flat = np.stack([wire.label_scores(top, labels, strict)[0] for top in tops])
        return flat.reshape(P, B, L)

    def continuation_logprobs(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                              continuations: Sequence[Sequence[str]]) -> np.ndarray:
        """(P, B, C) log-probs of each example's strings after its input (see `Backend`): exact by echo, chained
        top-k requests in the top-k modes (NaN where a token is outside its list, counted in stats)."""
        n_strings = check_continuations(examples, continuations)
        self.capabilities.require(prompt_kind(list(prompts)), self.name)

        def scores(ps: Sequence[Prompt], exs: Sequence[Example], words: TaskFormat) -> np.ndarray:
            if self.config.probe and self.probe_ is None:
                self.check((ps[0], exs, words))
            return self.label_logprobs(ps, exs, words, bias=self.logit_bias_)

        if self.config.mode is ScoreMode.ECHO:  # any strings per row: every (row, string) in one concurrent send
            if self.config.probe and self.probe_ is None:
                self.check()
            pairs = [(t + w, w) for i, t in enumerate(self.texts(prompts, examples, fmt))
                     for w in continuations[i % len(examples)]]
            sent = self.send(wire.echo_requests(self.shape(), pairs, lambda p: self.count_tokens(p[0])))
            out = np.array(sent, dtype=np.float64).reshape(len(prompts), len(examples), n_strings)
        else:
            out = score_continuations(scores, prompts, examples, fmt, continuations)
        self.stats.count_labels(out.size, int(np.isnan(out).sum()))
        self.stats.add(len(prompts), len(examples))
        return check_scores(out, len(prompts), len(examples), n_strings, self.name)

    def label_trie(self, fmt: TaskFormat) -> LabelTrie | None:
        """The label words' token trie where some word has several tokens and the mode chains requests for it
        (top_logprobs, prompt_embeds); None where every word is one token (read from one top-k list) or there is no
        local tokenizer to tell. Chat mode refuses such words: it reads only an answer's first token."""
        if self.config.mode is ScoreMode.ECHO:
            return None
        if self.tokenizer is None:
            spaced = [w for w in fmt.verbalizer.values() if len(w.split()) > 1]
            if spaced:
                raise ConfigError(
                    f"label words {spaced} are several words, so several tokens, and --remote-mode "
                    f"{self.config.mode.value} reads one token per list; set --remote-local-model to the same model "
                    "(its tokenizer splits the words, then each token is read by a chained request) or use "
                    "--remote-mode echo (exact, where the server supports echo)")
            return None
        trie = LabelTrie.build(self.reference().encoder.label_seqs(fmt))
        if trie.single:
            return None
        if self.config.mode is ScoreMode.CHAT:
            long = [w for w, n in zip(fmt.verbalizer.values(), trie.lengths) if n > 1]
            raise CapabilityError(
                f"label words of several tokens ({long}) cannot be scored in chat mode, which reads only the first "
                "token of an answer; use --remote-mode echo (exact, where the server supports echo) or "
                "--remote-mode top_logprobs (chained requests, one per token), or single-token words")
        return trie

    def _chained(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat, *, bias: float,
                 salt: str, strict: bool, answer_tops: list[dict[str, float]] | None = None) -> np.ndarray:
        """(P * B, L) scores of multi-token words by chained top-k requests: per trie step, each row's input
        extended by the step's prefix tokens, the next tokens read from its top-k list. Every step's requests go
        out at once (teacher forcing: no step waits for another's answer). The bias, if any, is put on the first
        step's tokens only: that step's shift is common to every label, a deeper step's would not be."""
        trie, tok = self.label_trie(fmt), self.tokenizer
        assert trie is not None and tok is not None, "chained only where a tokenizer found multi-token words"
        items = self.inputs(prompts, examples, fmt)
        requests: list[wire.Request] = []
        keys = []
        for i, step in enumerate(trie.steps):
            shape = self.shape(step.next_ids if bias and i == 0 else (), bias)
            extended = [self._extend(item, step.prefix, fmt) for item in items] if step.prefix else items
            requests += self.requests(shape, extended)
            texts = [tok.decode([t]) for t in step.next_ids]
            keys.append(LabelKeys.build(texts, step.next_ids, texts))
        replies = self.send(requests, salt=salt)
        if answer_tops is not None:  # the first step (no prefix) reads the answer position itself
            answer_tops.extend(replies[: len(items)])
        per_step, start = [], 0
        for key in keys:
            tops, start = replies[start: start + len(items)], start + len(items)
            per_step.append(np.stack([wire.label_scores(top, key, strict)[0] for top in tops]))
        return trie.combine(per_step)

    def _extend(self, item: Any, prefix: Sequence[int], fmt: TaskFormat) -> Any:
        """A row's input followed by a word's first tokens: as text (their decoding, which must start a label word
        exactly, or the server would see other tokens) or as embeddings (prompt_embeds)."""
        if self.config.mode is ScoreMode.PROMPT_EMBEDS:
            return torch.cat([item, self.reference().embed_text_ids(list(prefix))])
        text = self.reference().tokenizer.decode(list(prefix))
        if not any(w.startswith(text) for w in fmt.verbalizer.values()):
            raise VerbalizerError(f"the tokens {list(prefix)} of a label word decode to {text!r}, which starts none of "
                                  f"the words {list(fmt.verbalizer.values())}; chained requests need tokens that decode "
                                  "to the word's own text: use --remote-mode echo, or other words")
        return item + text

    def answer_scores(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                      salt: str = "") -> AnswerScores:
        """Text mode: (P, B, L) log smoothed shares of the answers naming each label (`bbtune.tasks.answers`;
        NaN where every answer named none), with the answers' counts; counts nothing in `stats`."""
        cfg = self.config
        answers = self.generate(prompts, examples, fmt, max_tokens=cfg.answer_tokens, n=cfg.answer_samples,
                                temperature=cfg.answer_temperature, salt=salt)
        return answer_scores(answers, fmt.labels, cfg.answer_rules(fmt), cfg.answer_smoothing)

    def generate(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat, *,
                 max_tokens: int = 16, n: int = 1, temperature: float = 0.0, stop: Sequence[str] = ("\n",),
                 salt: str = "") -> list[list[list[str]]]:
        """P x B x n answers after each row's input (the chat instruction first when asking chat), through the
        same requests, budget, ledger, retries and cache as scores; `n` in one request where the server takes
        it (the probe finds out), else repeated requests with distinct seeds."""
        if not examples:
            raise TaskError("generate() got no examples; give at least one")
        check_generate_args(max_tokens, n, temperature, stop)
        if prompt_kind(list(prompts)) == "soft":
            self._refuse_soft()
        gen = self.generation(max_tokens, n, temperature, stop)
        answers = self.complete(self.texts(prompts, examples, fmt), gen, salt=salt)
        B = len(examples)
        return [answers[p * B : (p + 1) * B] for p in range(len(prompts))]

    def generation(self, max_tokens: int, n: int, temperature: float, stop: Sequence[str]) -> wire.Generation:
        """How answers are asked right now (the endpoint, and the probe's findings about ``n``)."""
        return wire.Generation(wire.CHAT if self.config.uses_chat else wire.COMPLETIONS, max_tokens, n, temperature,
                               tuple(stop), max(1, min(n, self.answers_per_request_)))

    def complete(self, texts: Sequence[str], gen: wire.Generation, salt: str = "", retries: int | None = None,
                 size: int | None = None) -> list[list[str]]:
        """Each text's `gen.n` answers, cut at the first stop string (a server may ignore ``stop``)."""
        requests = wire.generation_requests(self.config.model, gen, texts, self.count_tokens, size or self.batch_size_)
        out: list[list[str]] = [[] for _ in texts]
        for index, answers in self.send(requests, salt=salt, retries=retries):
            out[index].extend(cut_at_stop(a, gen.stop) for a in answers)
        return out

    def _refuse_soft(self) -> None:
        raise CapabilityError(f"backend {self.name} sends text ({self.config.mode.value} mode): a soft prompt is not "
                              "text; tune hard prompts (--mode hard), or use --remote-mode prompt_embeds with a "
                              "server that takes prompt embeddings")

    def check(self, sample: tuple[Prompt, Sequence[Example], TaskFormat] | None = None) -> ProbeReport:
        """Probe the server: model served, features of the mode, consistent numbers, and on `sample` (a prompt,
        examples, their format) logit_bias and the missing rate (see probe.py). Runs before the first score
        unless ``probe=False``; may lower `batch_size_` / `top_k_` and set `logit_bias_` (see the report)."""
        self.probe_ = run_probe(self, sample)
        if self.capabilities.topk:  # the deepest top-k the server accepted
            self.capabilities = replace(self.capabilities, topk=self.top_k_)
        return self.probe_

    def probe_report(self) -> ProbeReport | None:
        return self.probe_

    def local_model(self) -> LocalBackend | None:
        return self.reference() if self.config.local_model else None

    def vocabulary(self) -> Vocabulary:
        return self.reference().vocabulary()

    def describe(self) -> dict[str, Any]:
        """Config, probe findings and stats, for the results folder; never the key."""
        return {"backend": self.name, "config": self.config.public(), "stats": self.stats.as_dict(),
                "probe": asdict(self.probe_) if self.probe_ else None}

    def close(self) -> None:
        if self.ledger_ is not None:
            self.ledger_.close()
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

    def reference(self) -> LocalBackend:
        """A LocalBackend over `local_model`: the tokenizer, the embedding table, the input layout."""
        if self._local is None:
            if not self.config.local_model:
                raise ConfigError(
                    "this needs the model's tokenizer/embeddings: set --remote-local-model to the same model "
                    "(a HF directory, a .gguf file, 'smollm2' or 'tiny')")
            from bbtune.backends.local import LocalBackend

            self._local = LocalBackend(self.config.local_model)
        return self._local

    @property
    def tokenizer(self) -> Any | None:
        return self.reference().tokenizer if self.config.local_model else None

    def label_keys(self, fmt: TaskFormat) -> LabelKeys:
        """How the labels appear in a reply: chat matches every spelling of the word, completions the word's token."""
        words = list(fmt.verbalizer.values())
        tok = self.tokenizer
        trie = self.label_trie(fmt)  # chat mode refuses multi-token words here
        if self.config.mode is ScoreMode.CHAT:
            return LabelKeys.chat(words, tok)
        if tok is None:
            return LabelKeys.build(words, None, None)
        if trie is not None:  # chained: what a first request's list must hold (the bias goes on these tokens)
            first = trie.steps[0].next_ids
            return LabelKeys.build([tok.decode([i]) for i in first], first, None)
        ids = verbalizer_token_ids(tok, fmt)
        return LabelKeys.build(words, ids, [tok.decode([i]) for i in ids])

    def count_tokens(self, text: str) -> int:
        """Upper estimate of a text's tokens for the budget: exact with the local tokenizer, else its bytes
        (a byte-level BPE token is at least one byte)."""
        tok = self.tokenizer
        n = len(tok(text, add_special_tokens=True)["input_ids"]) if tok is not None else len(text.encode())
        return n + PROMPT_TOKEN_MARGIN + (CHAT_TOKEN_MARGIN if self.config.uses_chat else 0)

    # ------------------------------------------------------------------ building requests

    def shape(self, bias_ids: Sequence[int] = (), bias: float = 0.0) -> wire.Shape:
        """How requests are built now (the probe's findings), with `bias` on the tokens `bias_ids`."""
        cfg = self.config
        return wire.Shape(cfg.model, cfg.mode, self.top_k_, self.batch_size_,
                          {t: bias for t in bias_ids} if bias and bias_ids else None)

    def texts(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> list[str]:
        """Row (p, b) = p * B + b: prefix ``prompt + head + cue``, suffix ``head + prompt + cue``; in chat mode
        after the instruction that names the answer words."""
        lead = self._instruction(fmt)
        out = []
        for prompt in prompts:
            if not isinstance(prompt, HardPrompt):
                self._refuse_soft()
            assert isinstance(prompt, HardPrompt)
            for ex in examples:
                out.append(lead + fmt.text(ex, prompt.text))
        return out

    def _instruction(self, fmt: TaskFormat) -> str:
        template = self.config.chat_instruction
        if not self.config.uses_chat or not template:
            return ""
        words = [w.strip() for w in fmt.verbalizer.values()]
        named = ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
        return template.replace("{labels}", named)

    def inputs(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> list[Any]:
        """What goes over the wire for each row: texts, or input embeddings (prompt_embeds)."""
        if self.config.mode is ScoreMode.PROMPT_EMBEDS:
            return self.reference().input_embeds(prompts, examples, fmt)
        return self.texts(prompts, examples, fmt)

    def requests(self, shape: wire.Shape, items: Sequence[Any], size: int | None = None) -> list[wire.Request]:
        """Top-k requests for texts or input embeddings, in chunks of `size` (default the shape's batch size)."""
        if self.config.mode is ScoreMode.PROMPT_EMBEDS:
            return wire.embeds_requests(shape, items, lambda e: int(e.shape[0]) + PROMPT_TOKEN_MARGIN, size)
        return wire.text_requests(shape, items, self.count_tokens, size)

    # ------------------------------------------------------------------ sending

    def keep_books(self, ledger: Path, replies: Path, resume: bool) -> None:
        """Book every request in the write-ahead `ledger` (and keep replies in `replies` unless --remote-cache-dir
        is set), so a run killed at any instant and resumed neither forgets a request nor pays twice for an
        answer; on `resume` the spending counters start from the ledger's totals."""
        self.ledger_ = Ledger(ledger)
        if resume:
            restore(self.stats, self.ledger_.spent())
        self._replies_dir = self.config.cache_dir or str(replies)
        if self._api is not None:  # a client made before (a probe by hand) gets the books too
            self._api.meter.ledger = self.ledger_
            self._api.cache = self._api.cache or ResponseCache(self._replies_dir)

    def _client(self) -> ApiClient:
        if self._api is None:
            cfg = self.config
            env = cfg.api_key_env if os.environ.get(cfg.api_key_env) else (
                OPENAI_API_KEY_ENV if os.environ.get(OPENAI_API_KEY_ENV) else cfg.api_key_env)
            stats = self.stats
            self._api = ApiClient(
                ReplicaPool(cfg.urls, cfg.limits),
                SpendingLimiter(Limits(cfg.max_requests or None, cfg.max_tokens or None, cfg.max_cost or None),
                      Prices(cfg.price_prompt_per_mtok, cfg.price_completion_per_mtok), stats, self.ledger_),
                stats, model=cfg.model, key=_key(env),
                headers={"User-Agent": "bbtune", **cfg.headers}, timeout_s=cfg.timeout_s,
                max_retries=cfg.max_retries, cache=ResponseCache(self._replies_dir) if self._replies_dir else None,
                transport=self._transport, sleep=self._sleep)
        return self._api

    def get(self, path: str, parse: Callable[[dict[str, Any]], Any]) -> Any:
        """One GET (e.g. ``/models``), parsed."""
        return self._loop.run(self._client().call(path, None, parse, method="GET"))

    def send(self, requests: list[wire.Request], salt: str = "", retries: int | None = None) -> list[Any]:
        """Send all requests concurrently; their parsed items, flattened in order. `salt` keeps deliberate
        repeats apart in the cache; `retries` overrides the configured count (the probe sends some with none)."""
        api = self._client()

        async def all_of() -> list[list[Any]]:
            tasks = [asyncio.ensure_future(api.call(r.path, r.body, r.parse, estimate=r.estimate, salt=salt,
                                                    retries=retries)) for r in requests]
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
