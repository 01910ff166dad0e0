"""Counting what a remote run costs, and refusing to cross the limits the user set.

Every request reserves its share (one request, an upper estimate of its tokens and their cost) *before* it
is sent, and settles to the server's reported usage when the reply comes. Limits are checked against
settled + reserved amounts, so however many requests are in flight a run never crosses a limit; the
request that would cross it raises `BudgetExceeded` instead of being sent.

What is billed: a reply's ``usage`` (or the estimate, if it has none); the estimate for a request that got
no readable reply (the server may have done the work); nothing for an error status (429, 5xx, 4xx).
Cache hits cost nothing and are not requests.

With a `Ledger` (a run folder's ``ledger.jsonl``) every reservation is also written and fsynced *before* the
request goes out, and every settlement after; a run killed at any instant therefore knows everything it
ever sent. A request booked but never settled (in flight at the kill) counts as spent at its estimate.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Mapping

from bbtune.errors import BudgetExceeded
from bbtune.backends.base import CallStats


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
    server_seconds: float = 0.0  # summed time requests spent waiting on a server
    errors: dict[str, int] = field(default_factory=dict)  # by error type, retried or not
    endpoints: dict[str, int] = field(default_factory=dict)  # requests per replica

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
    entry: int = -1  # its number in the ledger (-1: no ledger)


@dataclass(frozen=True)
class Spent:
    """What a ledger says was spent: settled amounts, plus estimates for requests never settled."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    unsettled: int = 0  # booked, no reply recorded: in flight when the process died
    endpoints: dict[str, int] = field(default_factory=dict)  # requests per replica (UNRECORDED: a ledger line without one)


UNRECORDED = "unrecorded"  # the endpoint of a ledger line written without one (older ledgers)


class Ledger:
    """Write-ahead record of paid requests, one JSON line per event (see the module docstring).

    ``{"n": 3, "book": [prompt, completion], "cost": c, "to": replica}`` is fsynced before request 3 is sent;
    ``{"n": 3, "paid": [prompt, completion], "cost": c}`` (or ``"paid": null`` when not billed) follows its
    reply. A torn last line (killed mid-write) is skipped: a booking that never reached the disk was never sent.

        >>> ledger = Ledger(tmp_path / "ledger.jsonl")                     # doctest: +SKIP
        >>> n = ledger.book(120, 1, 0.0); ledger.spent().unsettled          # doctest: +SKIP
        1
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries = self.spent().requests
        self._file: IO[str] = self.path.open("a", encoding="utf-8")

    def spent(self) -> Spent:
        booked: dict[int, tuple[int, int, float]] = {}
        paid: dict[int, tuple[int, int, float]] = {}
        to: dict[int, str] = {}
        for line in _lines(self.path):
            target = booked if "book" in line else paid
            amounts = line.get("book", line.get("paid")) or (0, 0)
            target[int(line["n"])] = (int(amounts[0]), int(amounts[1]), float(line.get("cost", 0.0)))
            if "book" in line:
                to[int(line["n"])] = str(line.get("to") or UNRECORDED)
        totals = [paid.get(n, held) for n, held in booked.items()]
        return Spent(len(booked), sum(t[0] for t in totals), sum(t[1] for t in totals), sum(t[2] for t in totals),
                     sum(n not in paid for n in booked), dict(Counter(to.values())))

    def book(self, prompt_tokens: int, completion_tokens: int, cost: float, endpoint: str | None = None) -> int:
        n = self._entries
        self._entries += 1
        record: dict[str, Any] = {"n": n, "book": [prompt_tokens, completion_tokens], "cost": cost}
        if endpoint is not None:
            record["to"] = endpoint
        self._write(record, durable=True)
        return n

    def settle(self, entry: int, prompt_tokens: int, completion_tokens: int, cost: float, billed: bool) -> None:
        # not fsynced: a lost settlement only makes a resumed run count the (larger) estimate
        self._write({"n": entry, "paid": [prompt_tokens, completion_tokens] if billed else None,
                     "cost": cost if billed else 0.0}, durable=False)

    def _write(self, record: dict[str, Any], durable: bool) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        if durable:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _lines(path: Path) -> list[dict[str, Any]]:
    """The ledger's readable records; a torn line (the process died mid-write) is skipped."""
    if not path.exists():
        return []
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict) and "n" in record:
            out.append(record)
    return out


class SpendingLimiter:
    """Reserve before sending, settle after (see the module docstring)."""

    def __init__(self, limits: Limits, prices: Prices, stats: RemoteStats, ledger: Ledger | None = None):
        self.limits, self.prices, self.stats, self.ledger = limits, prices, stats, ledger
        self._held_tokens = 0
        self._held_cost = 0.0

    def reserve(self, prompt_tokens: int, completion_tokens: int, endpoint: str | None = None) -> Reservation:
        """Hold one request's share, or raise `BudgetExceeded`; `endpoint` (the replica it goes to) is counted in
        ``stats.endpoints`` and the ledger alike, so the two agree after a resume."""
        s, lim = self.stats, self.limits
        tokens = prompt_tokens + completion_tokens
        cost = self.prices.cost(prompt_tokens, completion_tokens)
        used_tokens = s.prompt_tokens + s.completion_tokens + self._held_tokens
        if lim.max_requests is not None and s.requests + 1 > lim.max_requests:
            raise BudgetExceeded(f"request limit reached: {s.requests} requests sent, RemoteConfig.max_requests "
                                 f"{lim.max_requests}; raise it (with resume=True to continue) or lower budget_calls")
        if lim.max_tokens is not None and used_tokens + tokens > lim.max_tokens:
            raise BudgetExceeded(f"token limit: {used_tokens} tokens used or in flight + ~{tokens} for the next "
                                 f"request would exceed RemoteConfig.max_tokens {lim.max_tokens}")
        if lim.max_cost is not None and s.cost + self._held_cost + cost > lim.max_cost:
            raise BudgetExceeded(f"cost limit: ${s.cost + self._held_cost:.4f} spent or in flight + ~${cost:.4f} "
                                 f"would exceed RemoteConfig.max_cost {lim.max_cost}")
        entry = self.ledger.book(prompt_tokens, completion_tokens, cost, endpoint) if self.ledger is not None else -1
        s.requests += 1
        if endpoint is not None:
            s.endpoints[endpoint] = s.endpoints.get(endpoint, 0) + 1
        self._held_tokens += tokens
        self._held_cost += cost
        return Reservation(prompt_tokens, completion_tokens, cost, entry)

    def settle(self, held: Reservation, usage: Mapping[str, Any] | None, billed: bool) -> None:
        """Release `held` and book what the request cost: `usage` if the reply had it, else the estimate."""
        self._held_tokens -= held.prompt_tokens + held.completion_tokens
        self._held_cost -= held.cost
        prompt, completion = held.prompt_tokens, held.completion_tokens
        if isinstance(usage, Mapping):
            prompt = _count(usage.get("prompt_tokens"), prompt)
            completion = _count(usage.get("completion_tokens"), completion)
        cost = self.prices.cost(prompt, completion)
        if self.ledger is not None and held.entry >= 0:
            self.ledger.settle(held.entry, prompt, completion, cost, billed)
        if not billed:
            return
        self.stats.prompt_tokens += prompt
        self.stats.completion_tokens += completion
        self.stats.cost += cost


def restore(stats: RemoteStats, spent: Spent) -> None:
    """Set the spending counters to a ledger's totals (a resumed run continues from what was really sent); the
    requests per endpoint too, so they still add up to `requests`."""
    stats.requests, stats.prompt_tokens = spent.requests, spent.prompt_tokens
    stats.endpoints = dict(spent.endpoints)
    stats.completion_tokens, stats.cost = spent.completion_tokens, spent.cost


def _count(value: Any, fallback: int) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else fallback
