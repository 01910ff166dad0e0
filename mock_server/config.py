"""The mock server's two configs: what it serves (`ServerConfig`) and what goes wrong on purpose (`FaultConfig`).

A fault rule fires on every N-th request (`every`), with probability `prob` (seeded), or both, at most `limit`
times. On the command line a rule is ``KIND:every=N,prob=P,limit=M``, e.g. ``--fault 429:every=4``
``--fault drop:every=7,limit=1``; a JSON file with the same fields works too (``--faults-config``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any


def _f(default: Any, help: str) -> Any:  # noqa: A002 - the CLI reads `help`
    """A dataclass field with a one-line help, from which the command line is built."""
    return field(default=default, metadata={"help": help})


class FaultKind(str, Enum):
    """What an injected fault does to one request."""

    RATE_LIMIT = "429"  # 429 with Retry-After
    SERVER_ERROR = "500"
    UNAVAILABLE = "503"  # 503 with Retry-After
    MALFORMED = "malformed"  # 200 whose body is not JSON
    TRUNCATED = "truncated"  # 200 whose body stops half way, then the connection closes
    DROP = "drop"  # the connection closes without any reply


class EchoSupport(str, Enum):
    """How the server treats ``echo`` with logprobs, to imitate real servers."""

    FULL = "full"  # prompt tokens' log-probs, as OpenAI (davinci-002) and vLLM
    REJECT = "reject"  # 400, as gpt-3.5-turbo-instruct
    IGNORE = "ignore"  # log-probs of generated tokens only, as llama.cpp's server


@dataclass(frozen=True)
class FaultRule:
    """When one kind of fault fires."""

    kind: FaultKind
    every: int = 0  # every N-th request (counting all scored requests); 0 = off
    prob: float = 0.0  # probability per request, drawn from the seeded generator
    limit: int | None = None  # fire at most this many times

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FaultKind(self.kind))
        if self.every < 0:
            raise ValueError(f"FaultRule.every must be >= 0, got {self.every}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"FaultRule.prob must be in [0, 1], got {self.prob}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"FaultRule.limit must be >= 0, got {self.limit}")

    @classmethod
    def parse(cls, spec: str) -> "FaultRule":
        """``'429:every=4,limit=2'`` -> FaultRule(kind='429', every=4, limit=2)."""
        kind, _, rest = spec.partition(":")
        kwargs: dict[str, Any] = {}
        for part in filter(None, rest.split(",")):
            key, _, value = part.partition("=")
            if key not in ("every", "prob", "limit"):
                raise ValueError(f"fault option {key!r} in {spec!r} is not one of every, prob, limit")
            kwargs[key] = float(value) if key == "prob" else int(value)
        try:
            return cls(FaultKind(kind), **kwargs)
        except ValueError as err:
            raise ValueError(f"bad fault {spec!r}: {err}; kinds: {[k.value for k in FaultKind]}") from None


@dataclass(frozen=True)
class FaultConfig:
    """Injected faults and latency; same seed + same request order = same faults."""

    rules: tuple[FaultRule, ...] = _f((), "checked in order; the first that fires wins")
    seed: int = _f(0, "seed for `prob` rules and latency jitter")
    latency_s: float = _f(0.0, "seconds added to every API request")
    jitter_s: float = _f(0.0, "plus a uniform random [0, jitter_s) seconds")
    retry_after_s: float = _f(1.0, "Retry-After (seconds) sent with 429 and 503")

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(r if isinstance(r, FaultRule) else FaultRule(**r) for r in self.rules))
        for name in ("latency_s", "jitter_s", "retry_after_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"FaultConfig.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_json(cls, path: str | Path) -> "FaultConfig":
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown fault-config field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


_POSITIVE_LIMITS = ("max_body_bytes", "max_json_depth", "max_prompts", "max_messages", "max_prompt_chars",
                    "max_request_tokens",
                    "read_timeout_s")


@dataclass(frozen=True)
class ServerConfig:
    """What the mock serves and which API features it offers."""

    model: str = _f("tiny", "model to serve: 'tiny' (random, instant), 'smollm2' (embedded), a HF dir or .gguf")
    served_name: str | None = _f(None, "model name clients send; None: the --model value")
    host: str = _f("127.0.0.1", "address to bind")
    port: int = _f(8000, "port to bind; 0 picks a free one")
    api_key: str | None = _f(None, "require this Bearer key; None accepts any request")
    max_logprobs: int = _f(20, "most logprobs / top_logprobs a request may ask for")
    list_prompts: bool = _f(True, "accept a list of prompts in one /v1/completions request")
    echo: EchoSupport = _f(EchoSupport.FULL, "echo with logprobs: full (OpenAI, vLLM), reject, ignore (llama.cpp)")
    prompt_embeds: bool = _f(True, "accept vLLM's prompt_embeds field on /v1/completions")
    aliases: tuple[str, ...] = _f((), "more model names to answer to")
    refuse_lists: bool = _f(False, "answer HTTP 500 to a list of prompts (as some real servers do)")
    logprobs: bool = _f(True, "return log-probs; --no-logprobs answers text only, as hosted chat APIs that ignore "
                              "'logprobs' (the field is accepted, the reply has 'logprobs': null)")
    ignore_logit_bias: bool = _f(False, "accept logit_bias but do not apply it (as some real servers do)")
    wrong_echo: bool = _f(False, "echo each prompt token's log-prob from the wrong position (off by one)")
    # Limits: what one request may cost, so a hostile or buggy client cannot hold a core or a thread.
    max_body_bytes: int = _f(8 * 1024 * 1024, "largest request body; a larger Content-Length gets 413 unread")
    max_json_depth: int = _f(64, "deepest nesting of arrays and objects in a request body (400 beyond)")
    max_prompts: int = _f(256, "most prompts (prompt_embeds included) in one /v1/completions request")
    max_messages: int = _f(256, "most messages in one /v1/chat/completions request")
    max_prompt_chars: int = _f(100_000, "longest prompt (or chat messages together) in characters, "
                                        "refused before tokenizing")
    max_request_tokens: int = _f(16_384, "most tokens one request may cost: its prompt tokens plus prompts x n x "
                                         "max_tokens it may generate, refused (400) before any is generated")
    read_timeout_s: float = _f(10.0, "seconds a connection may wait on its client (each read, and a whole "
                                     "body); then 408 and the connection closes")

    def __post_init__(self) -> None:
        object.__setattr__(self, "echo", EchoSupport(self.echo))
        if self.max_logprobs < 0:
            raise ValueError(f"ServerConfig.max_logprobs must be >= 0, got {self.max_logprobs}")
        for name in _POSITIVE_LIMITS:
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerConfig.{name} must be > 0, got {getattr(self, name)}")

    @property
    def name(self) -> str:
        return self.served_name or self.model

    def serves(self, model: str) -> bool:
        return model == self.name or model in self.aliases
