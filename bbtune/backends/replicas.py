"""Spreading requests over replicas of one model (several vLLM or llama.cpp servers), each with its own
concurrency limit, and steering around a replica that fails.

A request takes a slot on the least-loaded healthy replica (load = in-flight / limit), waiting while all
are full. A replica that drops a connection, times out, or answers 429/5xx is *down* for a cool-down
(its Retry-After when it sent one): new requests go to the others, and a retry moves at once. When every
replica is down, requests go to them anyway (the retry policy's backoff spaces them out).
"""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from bbtune.constants import REPLICA_COOLDOWN_S


def display_url(url: str) -> str:
    """The URL without credentials (user:password@), safe for messages and stats."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass
class Replica:
    url: str  # base URL, ends before the endpoint path (e.g. http://host:8000/v1)
    limit: int
    in_flight: int = 0
    down_until: float = 0.0

    @property
    def name(self) -> str:
        return display_url(self.url)


class ReplicaPool:
    def __init__(self, urls: Sequence[str], limits: Sequence[int], *, cooldown_s: float = REPLICA_COOLDOWN_S,
                 clock: Callable[[], float] = time.monotonic):
        self.replicas = [Replica(u.rstrip("/"), n) for u, n in zip(urls, limits)]
        self.cooldown_s, self.clock = cooldown_s, clock
        self._changed: asyncio.Condition | None = None

    def healthy(self) -> list[Replica]:
        now = self.clock()
        return [r for r in self.replicas if r.down_until <= now]

    def mark_down(self, replica: Replica, seconds: float | None = None) -> None:
        replica.down_until = self.clock() + (self.cooldown_s if seconds is None else seconds)

    def can_fail_over(self) -> bool:
        """Whether a healthy replica is there to take a retry right away."""
        return len(self.replicas) > 1 and bool(self.healthy())

    def _pick(self) -> Replica | None:
        candidates = self.healthy() or self.replicas
        free = [r for r in candidates if r.in_flight < r.limit]
        return min(free, key=lambda r: r.in_flight / r.limit) if free else None

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Replica]:
        """Hold one in-flight slot on a replica for the duration of one request."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            while (replica := self._pick()) is None:
                await self._changed.wait()
            replica.in_flight += 1
        try:
            yield replica
        finally:
            async with self._changed:
                replica.in_flight -= 1
                self._changed.notify()
