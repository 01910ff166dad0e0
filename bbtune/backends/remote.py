"""`RemoteBackend`: scores prompts through an OpenAI-compatible server (OpenAI, vLLM, llama.cpp, the mock).

One `score()` call turns (prompts x examples) into requests for the configured `ScoreMode` (see
`bbtune.backends.wire`), sends them concurrently (a CMA-ES population goes out at once, spread over the
replicas), and reads the label words' log-probs back. Around each request: the on-disk cache, the
budget (`max_requests`, `max_tokens`, `max_cost`, reserved before sending), retries with backoff, and
typed errors. Before the first score a probe checks what the server supports and whether its numbers are
consistent (`check()`, see `bbtune.backends.probe`), whose report the backend applies (one prompt per request, a shallower
or deeper top-k, logit_bias on or off), or refuses with what to do instead.

Each mode is one strategy object (`bbtune.backends.modes`: which server supports which mode, what each sends).

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
sends for it: the mode's `collect_topk`.

    >>> backend = RemoteBackend(RemoteConfig(base_url=server.url, model="tiny", local_model="tiny"))  # doctest: +SKIP
    >>> backend.score([HardPrompt((), "")], [Example("a film", "pos")], fmt).shape                    # doctest: +SKIP
    (1, 1, 2)
"""
from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Sequence

import httpx
import numpy as np

from bbtune.constants import (
    API_KEY_ENV,
    DEFAULT_ANSWER_TOKENS,
    DEFAULT_CHAT_INSTRUCTION,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_MISSING,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_UNPARSED,
    DEFAULT_REMOTE_BATCH,
    DEFAULT_SMOOTHING,
    DEFAULT_TIMEOUT_S,
    DEFAULT_TOP_K,
    LOGIT_BIAS,
    OPENAI_API_KEY_ENV,
    PROBE_TOLERANCE,
)
from bbtune.errors import ConfigError, TaskError
from bbtune.core import secrets
from bbtune.core.options import string_tuple
from bbtune.core.prompts import Prompt, prompt_kind
from bbtune.core.topk import AnswerTopK
from bbtune.tasks import Example, TaskFormat
from bbtune.tasks.answers import AnswerRules, parse_synonyms
from bbtune.core.vocab import Vocabulary
from bbtune.backends import wire
from bbtune.backends.accounting import RemoteStats
from bbtune.backends.base import Backend, check_scores
from bbtune.backends.continuations import check_continuations
from bbtune.backends.findings import ProbeReport, Settings
from bbtune.backends.modes import STRATEGIES, strategy_for
from bbtune.backends.remote_send import Sender
from bbtune.backends.replicas import display_url
from bbtune.backends.probe import run_probe
from bbtune.backends.wire import ScoreMode

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
        if STRATEGIES[self.mode].soft and not self.local_model:
            raise ConfigError(f"mode={self.mode.value!r} needs local_model= (the same model locally, to embed prompts)")

    def _check_numbers(self) -> None:
        top_cap = STRATEGIES[self.mode].max_top_k
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
            raise ConfigError(f"RemoteConfig.logit_bias must be 'auto', 'off' or a number in (0, 100], got {self.logit_bias!r}")

    @property
    def bias(self) -> float:
        """The label-token bias to try (0 = off)."""
        return 0.0 if self.logit_bias == "off" else LOGIT_BIAS if self.logit_bias == "auto" else float(self.logit_bias)

    @property
    def uses_chat(self) -> bool:
        """Whether requests go to /chat/completions (chat mode, or text mode asking chat)."""
        return strategy_for(self).uses_chat

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
        self.strategy = strategy_for(cfg)  # the mode: its requests, replies, probe checks and price
        self.capabilities = self.strategy.capabilities()  # the probe may lower the top-k
        self.stats = RemoteStats()
        self.probe_: ProbeReport | None = None
        self.settings = self.strategy.settings()  # how requests are built: the config's, then the probe's findings
        self.sender = Sender(cfg, self.stats, transport, sleep)  # client, limits, ledger, cache
        self._local: Any = None

    # what the probe found, as the requests use it (read-only: only a probe's report changes them)
    top_k_ = property(lambda self: self.settings.top_k)
    batch_size_ = property(lambda self: self.settings.batch_size)
    logit_bias_ = property(lambda self: self.settings.logit_bias)
    answers_per_request_ = property(lambda self: self.settings.answers_per_request)

    # ------------------------------------------------------------------ public

    def score(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> np.ndarray:
        """Label log-probs (P, B, L); NaN for a label missing from a top-k list (counted in stats)."""
        if not examples:
            raise TaskError("score() got no examples; give at least one")
        self.capabilities.require(prompt_kind(list(prompts)), self.name)
        settings = self.after_probe((prompts[0], examples, fmt))
        scores = self.strategy.score(self, settings, prompts, examples, fmt)
        return self._counted(scores.reshape(len(prompts), len(examples), -1), len(fmt.labels))

    def score_topk(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                   k: int) -> tuple[np.ndarray, list[AnswerTopK]]:
        """`score`'s label log-probs (P, B, L) and each prompt's top-k at the answer position, from requests
        without logit_bias (a readout learns the model's own distribution), at most min(k, `capabilities.topk`)
        tokens a row and never more than the server returned; what each mode sends: its `collect_topk`."""
        if not examples:
            raise TaskError("score_topk() got no examples; give at least one")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"score_topk() needs k >= 1 (tokens per row), got {k!r}")
        self.capabilities.require(prompt_kind(list(prompts)), self.name)
        self.strategy.require_topk(self.name)
        settings = self.after_probe((prompts[0], examples, fmt))
        depth = min(k, self.capabilities.topk)
        flat, tops = self.strategy.collect_topk(self, settings, prompts, examples, fmt, depth)
        scores = self._counted(flat.reshape(len(prompts), len(examples), len(fmt.labels)), len(fmt.labels))
        B = len(examples)
        return scores, [AnswerTopK.from_pairs([top.items() for top in tops[p * B: (p + 1) * B]], depth)
                        for p in range(len(prompts))]

    def score_lifted(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                     tokens: Sequence[str], tops: Sequence[AnswerTopK]) -> np.ndarray:
        """`Backend.score_lifted`: ``logit_bias`` on up to k - 1 of `tokens` at a time and on a token each row's
        list holds (`tops`), whose known value undoes the bias (`ListStrategy.lift`)."""
        if not examples:
            raise TaskError("score_lifted() got no examples; give at least one")
        if len(tops) != len(prompts) or any(len(top) != len(examples) for top in tops):
            raise ValueError("score_lifted() needs the top-k lists score_topk returned for the same prompts and examples")
        self.capabilities.require(prompt_kind(list(prompts)), self.name)
        settings = self.after_probe((prompts[0], examples, fmt))
        flat = self.strategy.lift(self, settings, prompts, examples, fmt, tokens, tops)
        return flat.reshape(len(prompts), len(examples), len(tokens))

    def _counted(self, scores: np.ndarray, n_columns: int) -> np.ndarray:
        """Scores (P, B, C) booked in the stats (missing ones too) and checked."""
        self.stats.count_labels(scores.size, int(np.isnan(scores).sum()))
        self.stats.add(scores.shape[0], scores.shape[1])
        return check_scores(scores, scores.shape[0], scores.shape[1], n_columns, self.name)

    def label_logprobs(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat, *,
                       bias: float = 0.0, salt: str = "", strict: bool = False,
                       answer_tops: list[dict[str, float]] | None = None) -> np.ndarray:
        """(P, B, L) label log-probs as the server gives them (NaN = missing; with `strict` also a label with
        any spelling unlisted), with `bias` on every label token; counts nothing. Top-k modes: `answer_tops`, where
        given, gets each row's top-k list at the answer position."""
        flat = self.strategy.label_logprobs(self, self.settings, prompts, examples, fmt, bias=bias, salt=salt,
                                            strict=strict, answer_tops=answer_tops)
        return flat.reshape(len(prompts), len(examples), len(fmt.verbalizer))

    def continuation_logprobs(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
                              continuations: Sequence[Sequence[str]]) -> np.ndarray:
        """(P, B, C) log-probs of each example's strings after its input (see `Backend`): exact by echo, chained
        top-k requests in the top-k modes (NaN where a token is outside its list, counted in stats)."""
        n_strings = check_continuations(examples, continuations)
        self.capabilities.require(prompt_kind(list(prompts)), self.name)
        return self._counted(self.strategy.continuation_logprobs(self, prompts, examples, fmt, continuations),
                             n_strings)

    def generate(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat, *,
                 max_tokens: int = 16, n: int = 1, temperature: float = 0.0, stop: Sequence[str] = ("\n",),
                 salt: str = "") -> list[list[list[str]]]:
        """P x B x n answers after each row's input (the chat instruction first when asking chat), through the
        same requests, budget, ledger, retries and cache as scores; `n` in one request where the server takes
        it (the probe finds out), else repeated requests with distinct seeds."""
        return self.strategy.generate(self, self.settings, prompts, examples, fmt, max_tokens=max_tokens, n=n,
                                      temperature=temperature, stop=stop, salt=salt)

    def after_probe(self, sample: tuple[Prompt, Sequence[Example], TaskFormat] | None) -> Settings:
        """The settings requests are built with now, after probing on `sample` if the probe is on and has not run."""
        if self.config.probe and self.probe_ is None:
            self.check(sample)
        return self.settings

    def check(self, sample: tuple[Prompt, Sequence[Example], TaskFormat] | None = None) -> ProbeReport:
        """Probe the server: model served, features of the mode, consistent numbers, and on `sample` (a prompt,
        examples, their format) logit_bias and the missing rate (see probe.py). Runs before the first score
        unless ``probe=False``; its report is then applied (the list size, top-k and bias it found)."""
        report = run_probe(self, self.strategy, self.settings, sample)
        self.settings, self.probe_ = report.applied(self.settings), report
        if self.capabilities.topk:  # the deepest top-k the server accepted
            self.capabilities = replace(self.capabilities, topk=self.settings.top_k)
        return report

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
        self.sender.close()

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
                    "this needs the model's tokenizer/embeddings: set RemoteConfig.local_model to the same model "
                    "(a HF directory, a .gguf file, 'smollm2' or 'tiny')")
            from bbtune.backends.local import LocalBackend

            self._local = LocalBackend(self.config.local_model)
        return self._local

    @property
    def tokenizer(self) -> Any | None:
        return self.reference().tokenizer if self.config.local_model else None

    def count_tokens(self, text: str) -> int:
        """Upper estimate of a text's tokens for the budget: exact with the local tokenizer, else its bytes
        (a byte-level BPE token is at least one byte)."""
        tok = self.tokenizer
        n = len(tok(text, add_special_tokens=True)["input_ids"]) if tok is not None else len(text.encode())
        return n + self.strategy.token_margin()

    def texts(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> list[str]:
        """Row (p, b) = p * B + b: prefix ``prompt + head + cue``, suffix ``head + prompt + cue``; in chat mode
        after the instruction that names the answer words."""
        return self.strategy.texts(self.name, prompts, examples, fmt)

    # ------------------------------------------------------------------ sending

    def keep_books(self, ledger: Path, replies: Path, resume: bool) -> None:
        """Book every request in the write-ahead `ledger` (and keep replies in `replies` unless RemoteConfig.cache_dir
        is set), so a run killed at any instant and resumed neither forgets a request nor pays twice for an
        answer; on `resume` the spending counters start from the ledger's totals."""
        self.sender.keep_books(ledger, replies, resume)

    def get(self, path: str, parse: Callable[[dict[str, Any]], Any]) -> Any:
        """One GET (e.g. ``/models``), parsed."""
        return self.sender.get(path, parse)

    def send(self, requests: list[wire.Request], salt: str = "", retries: int | None = None) -> list[Any]:
        """Send all requests concurrently; their parsed items, flattened in order. `salt` keeps deliberate
        repeats apart in the cache; `retries` overrides the configured count (the probe sends some with none).
        A refusal of the mode's feature becomes a `CapabilityError` naming the mode to use instead."""
        try:
            return self.sender.send(requests, salt=salt, retries=retries)
        except Exception as err:
            better = self.strategy.explain(err)
            if better is err:
                raise
            raise better from err
