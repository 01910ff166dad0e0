"""Counting what a remote run costs, and refusing to cross the limits the user set.

Every request reserves its share (one request, an upper estimate of its tokens and their cost) *before* it
is sent, and settles to the server's reported usage when the reply comes. Limits are checked against
settled + reserved amounts, so however many requests are in flight a run never crosses a limit; the
request that would cross it raises `BudgetExceeded` instead of being sent.

What is billed: a reply's ``usage`` (or the estimate, if it has none); the estimate for a request that got
no readable reply (the server may have done the work); nothing for an error status (429, 5xx, 4xx).
Cache hits cost nothing and are not requests.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from ..errors import BudgetExceeded
from .base import CallStats


@dataclass
class RemoteStats(CallStats):
    """CallStats plus what the HTTP side did; JSON-serializable for the results folder (never holds a key)."""

    requests: int = 0  # HTTP requests sent, retries included, cache hits not
    retries: int = 0
    failovers: int = 0  # retries sent to another replica at once
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0  # estimated, from the configured prices
    labels_scored: int = 0  # label log-probs read from top-k lists (denominator of missing_rate)
    server_seconds: float = 0.0  # summed time requests spent waiting on a server
    missing_rate: float = 0.0  # labels_missing / labels_scored: share of label scores that are upper bounds
    errors: dict[str, int] = field(default_factory=dict)  # by error type, retried or not
    endpoints: dict[str, int] = field(default_factory=dict)  # requests per replica

    def count_labels(self, scored: int, missing: int) -> None:
        self.labels_scored += scored
        self.labels_missing += missing
        self.missing_rate = self.labels_missing / self.labels_scored if self.labels_scored else 0.0

    def as_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return asdict(self)

    def count_error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


@dataclass(frozen=True)
class Limits:
    """Hard limits for one backend's lifetime; None = no limit."""

    max_requests: int | None = None
    max_tokens: int | None = None  # prompt + completion
    max_cost: float | None = None


@dataclass(frozen=True)
class Prices:
    """Price per million tokens, as providers list them."""

    prompt_per_mtok: float = 0.0
    completion_per_mtok: float = 0.0

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.prompt_per_mtok + completion_tokens * self.completion_per_mtok) / 1e6


@dataclass(frozen=True)
class Reservation:
    prompt_tokens: int
    completion_tokens: int
    cost: float


class Meter:
    """Reserve before sending, settle after (see the module docstring)."""

    def __init__(self, limits: Limits, prices: Prices, stats: RemoteStats):
        self.limits, self.prices, self.stats = limits, prices, stats
        self._held_tokens = 0
        self._held_cost = 0.0

    def reserve(self, prompt_tokens: int, completion_tokens: int) -> Reservation:
        s, lim = self.stats, self.limits
        tokens = prompt_tokens + completion_tokens
        cost = self.prices.cost(prompt_tokens, completion_tokens)
        used_tokens = s.prompt_tokens + s.completion_tokens + self._held_tokens
        if lim.max_requests is not None and s.requests + 1 > lim.max_requests:
            raise BudgetExceeded(f"request limit reached: {s.requests} requests sent, max_requests="
                                 f"{lim.max_requests}; raise it or lower the tuning budget")
        if lim.max_tokens is not None and used_tokens + tokens > lim.max_tokens:
            raise BudgetExceeded(f"token limit: {used_tokens} tokens used or in flight + ~{tokens} for the next "
                                 f"request would exceed max_tokens={lim.max_tokens}")
        if lim.max_cost is not None and s.cost + self._held_cost + cost > lim.max_cost:
            raise BudgetExceeded(f"cost limit: ${s.cost + self._held_cost:.4f} spent or in flight + ~${cost:.4f} "
                                 f"would exceed max_cost=${lim.max_cost}")
        s.requests += 1
        self._held_tokens += tokens
        self._held_cost += cost
        return Reservation(prompt_tokens, completion_tokens, cost)

    def settle(self, held: Reservation, usage: Mapping[str, Any] | None, billed: bool) -> None:
        """Release `held` and book what the request cost: `usage` if the reply had it, else the estimate."""
        self._held_tokens -= held.prompt_tokens + held.completion_tokens
        self._held_cost -= held.cost
        if not billed:
            return
        prompt, completion = held.prompt_tokens, held.completion_tokens
        if isinstance(usage, Mapping):
            prompt = _count(usage.get("prompt_tokens"), prompt)
            completion = _count(usage.get("completion_tokens"), completion)
        self.stats.prompt_tokens += prompt
        self.stats.completion_tokens += completion
        self.stats.cost += self.prices.cost(prompt, completion)


def _count(value: Any, fallback: int) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else fallback
