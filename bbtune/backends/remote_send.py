"""`Sender`: the HTTP side of `RemoteBackend`: one client over the replicas, the spending limits, the ledger and the
reply cache, on a private event loop, so a whole CMA-ES population goes out at once from synchronous code."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx

from bbtune.backends import wire
from bbtune.backends.accounting import Ledger, Limits, Prices, RemoteStats, SpendingLimiter, restore
from bbtune.backends.cache import ResponseCache
from bbtune.backends.http import ApiClient, KeyInfo
from bbtune.backends.loop import LoopThread
from bbtune.backends.replicas import ReplicaPool
from bbtune.constants import OPENAI_API_KEY_ENV
from bbtune.core import secrets


class Sender:
    """Sends requests for a `RemoteConfig` (typed loosely: remote.py imports this module), counting in `stats`.
    The client is made at the first request, so a backend that only prices or describes opens nothing."""

    def __init__(self, config: Any, stats: RemoteStats, transport: httpx.AsyncBaseTransport | None,
                 sleep: Callable[[float], Awaitable[Any]]):
        self.config, self.stats = config, stats
        self.transport, self.sleep = transport, sleep  # the network and the retry wait (tests replace both)
        self._loop = LoopThread()
        self._api: ApiClient | None = None
        self.ledger: Ledger | None = None  # the run folder's write-ahead ledger (keep_books)
        self._replies_dir = config.cache_dir

    def keep_books(self, ledger: Path, replies: Path, resume: bool) -> None:
        """See `RemoteBackend.keep_books`."""
        self.ledger = Ledger(ledger)
        if resume:
            restore(self.stats, self.ledger.spent())
        self._replies_dir = self.config.cache_dir or str(replies)
        if self._api is not None:  # a client made before (a probe by hand) gets the books too
            self._api.meter.ledger = self.ledger
            self._api.cache = self._api.cache or ResponseCache(self._replies_dir)

    def client(self) -> ApiClient:
        if self._api is None:
            cfg = self.config
            env = cfg.api_key_env if os.environ.get(cfg.api_key_env) else (
                OPENAI_API_KEY_ENV if os.environ.get(OPENAI_API_KEY_ENV) else cfg.api_key_env)
            stats = self.stats
            self._api = ApiClient(
                ReplicaPool(cfg.urls, cfg.limits),
                SpendingLimiter(Limits(cfg.max_requests or None, cfg.max_tokens or None, cfg.max_cost or None),
                                Prices(cfg.price_prompt_per_mtok, cfg.price_completion_per_mtok), stats, self.ledger),
                stats, model=cfg.model, key=api_key(env),
                headers={"User-Agent": "bbtune", **cfg.headers}, timeout_s=cfg.timeout_s,
                max_retries=cfg.max_retries, cache=ResponseCache(self._replies_dir) if self._replies_dir else None,
                transport=self.transport, sleep=self.sleep)
        return self._api

    def get(self, path: str, parse: Callable[[dict[str, Any]], Any]) -> Any:
        """One GET (e.g. ``/models``), parsed."""
        return self._loop.run(self.client().call(path, None, parse, method="GET"))

    def send(self, requests: list[wire.Request], salt: str = "", retries: int | None = None) -> list[Any]:
        """All requests concurrently; their parsed items, flattened in order; the first error cancels the rest."""
        api = self.client()

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

        return [item for part in self._loop.run(all_of()) for item in part]

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
        if self._api is not None:
            self._loop.run(self._api.aclose())
            self._api = None
        self._loop.close()


def api_key(env: str) -> KeyInfo:
    """The key in $`env`, checked before it goes into a header (a newline or non-ASCII character is refused in one
    line, not retried as a network fault) and hidden from every message and file."""
    value = os.environ.get(env) or None
    if value is not None:
        secrets.remember(value)
        secrets.check_key(value, f"the API key in ${env}")
    return KeyInfo(env, value)
