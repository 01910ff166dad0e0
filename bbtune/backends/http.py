"""Talking to an OpenAI-compatible server: one request = cache lookup, then (replica slot, budget reservation,
send, typed error or JSON) under the retry policy, then the caller's parser, then the cache.

The API key lives only in the `httpx.AsyncClient`'s headers: it is redacted from every error message and
body, left out of cache keys, and never stored in stats. The transport is injectable
(``httpx.MockTransport`` in unit tests).
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import httpx

from bbtune.constants import CONNECT_TIMEOUT_S
from bbtune.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    ServerError,
)
from bbtune.core import secrets
from bbtune.backends.accounting import SpendingLimiter, RemoteStats, Reservation
from bbtune.backends.cache import ResponseCache, request_key
from bbtune.backends.replicas import Replica, ReplicaPool
from bbtune.backends.retry import retry_after_s, retrying

T = TypeVar("T")

# how servers say an input does not fit their context (OpenAI and vLLM "maximum context length", vLLM "too long to
# fit into the model", llama.cpp "exceeds the available context size" / "context window", its n_ctx)
CONTEXT_OVERFLOW = re.compile(r"context (length|window|size)|maximum context|too long to fit|\bn_ctx\b", re.I)
CONTEXT_FIX = ("the input does not fit the server's context: the server's limit, not one of bbtune's (bbtune asks for "
               "a single generated token, and RemoteConfig.max_tokens only caps what a run may spend). Shorten the longest "
               "example or the template, lower prompt_tokens, or serve the model with a longer context (vLLM "
               "--max-model-len, llama.cpp -c)")


class InvalidJSONError(MalformedResponseError):
    """A success status whose body is not JSON (cut off or garbled in transit); retried."""

    transient = True


@dataclass(frozen=True)
class KeyInfo:
    """Where the key came from, for messages; `value` is only handed to the HTTP client."""

    env: str
    value: str | None

    def redact(self, text: str) -> str:
        """`text` without the key, nor the masked tail servers echo back (OpenAI: 'sk-ab***wxyz')."""
        if self.value:
            text = text.replace(self.value, "***")
            text = text.replace(self.value[-4:], "****") if len(self.value) >= 12 else text
        return secrets.redact(text)


def status_error(response: httpx.Response, replica: str, path: str, model: str, key: KeyInfo) -> APIStatusError:
    """The typed error for an error reply, with a message that says what to do and never the key."""
    status = response.status_code
    try:
        body: Any = json.loads(key.redact(response.text))
    except ValueError:
        body = key.redact(response.text[:2000])
    err = body.get("error") if isinstance(body, dict) else None
    detail = str(err.get("message") if isinstance(err, dict) else err or body)[:500]
    where = f"{replica}{path}"
    cls: type[APIStatusError]
    if status in (401, 403):
        cls = AuthenticationError
        fix = (f"no API key was sent: set ${key.env} to this server's key" if not key.value
               else f"the key in ${key.env} was rejected: check it is a valid key for {replica}")
        if _url_credentials(response):  # Basic auth from user:password@ in the URL, not the key
            fix = ("the server refused the credentials written in the base URL (user:password@ in RemoteConfig.base_url, "
                   f"not shown): check them, or send an API key through ${key.env} instead")
        msg = f"{where}: HTTP {status} ({detail}); {fix}"
    elif status == 404:
        cls = NotFoundError
        code = str(err.get("code") or "") if isinstance(err, dict) else ""
        if "model" in code or "model" in detail.lower():
            msg = f"model {model!r} is not served at {replica} ({detail}); GET {replica}/models lists what it serves"
        else:
            msg = f"{where} does not exist (HTTP 404: {detail}); the server lacks this endpoint"
    else:
        cls = {400: BadRequestError, 422: BadRequestError, 429: RateLimitError}.get(
            status, ServerError if status >= 500 else APIStatusError)
        msg = f"{where}: HTTP {status} ({detail})"
        if cls is BadRequestError and CONTEXT_OVERFLOW.search(detail):
            msg += f"; {CONTEXT_FIX}"
    error = cls(msg, status_code=status, body=body)
    error.retry_after = retry_after_s(response.headers)  # type: ignore[attr-defined]
    error.missing_endpoint = status == 404 and "lacks this endpoint" in msg  # type: ignore[attr-defined]
    return error


def _url_credentials(response: httpx.Response) -> bool:
    """Whether the request carried user:password@ in its URL (httpx sends them as Basic auth)."""
    try:
        return bool(response.request.url.userinfo)
    except RuntimeError:  # a response built without a request
        return False


class ApiClient:
    """Async requests with replicas, retries, budget and cache; `close()` from the loop that used it."""

    def __init__(
        self,
        pool: ReplicaPool,
        meter: SpendingLimiter,
        stats: RemoteStats,
        *,
        model: str,
        key: KeyInfo,
        headers: Mapping[str, str],
        timeout_s: float,
        max_retries: int,
        cache: ResponseCache | None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ):
        self.pool, self.meter, self.stats = pool, meter, stats
        self.model, self.key, self.cache = model, key, cache
        self.headers = dict(headers)  # without the key: this copy feeds cache keys
        self.timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
        self.max_retries, self.sleep, self.transport = max_retries, sleep, transport
        self.namespace = ",".join(sorted(r.name for r in pool.replicas))
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            auth = {"Authorization": f"Bearer {self.key.value}"} if self.key.value else {}
            limit = sum(r.limit for r in self.pool.replicas)
            self._client = httpx.AsyncClient(
                headers={**self.headers, **auth}, timeout=self.timeout, transport=self.transport,
                limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def call(self, path: str, body: Mapping[str, Any] | None, parse: Callable[[dict[str, Any]], T], *,
                   estimate: tuple[int, int] = (0, 0), salt: str = "", method: str = "POST",
                   retries: int | None = None) -> T:
        """One request, parsed. `estimate` (prompt, completion tokens) is reserved against the limits; `salt`
        keeps deliberate repeats apart in the cache; `retries` overrides `max_retries` for this request."""
        key = request_key(self.namespace, f"{method} {path}", body or {}, self.headers, salt) if self.cache is not None else None
        if key is not None and (hit := self.cache.get(key)) is not None:  # type: ignore[union-attr]
            result = parse(hit)
            self.stats.cache_hits += 1
            return result
        reply: dict[str, Any] | None = None
        tries = self.max_retries if retries is None else retries
        async for attempt in retrying(tries, self.sleep, immediate=lambda exc: self.pool.can_fail_over(),
                                      on_retry=self._count_retry):
            with attempt:
                reply = await self._send(method, path, body, estimate)
        assert reply is not None
        result = parse(reply)
        if key is not None:
            self.cache.put(key, reply)  # type: ignore[union-attr]
        return result

    def _count_retry(self, exc: BaseException) -> None:
        self.stats.retries += 1
        self.stats.failovers += int(self.pool.can_fail_over())

    async def _send(self, method: str, path: str, body: Mapping[str, Any] | None,
                    estimate: tuple[int, int]) -> dict[str, Any]:
        async with self.pool.slot() as replica:
            held = self.meter.reserve(*estimate, endpoint=replica.name)
            started = time.perf_counter()
            try:
                response = await self._http().request(method, replica.url + path, json=body)
            except httpx.TransportError as err:
                self.meter.settle(held, None, billed=not isinstance(err, httpx.ConnectError))
                raise self._failed(replica, self._no_reply(err, replica, path)) from err
            except BaseException:  # cancelled (a sibling request failed): the server may have done the work
                self.meter.settle(held, None, billed=True)
                raise
            finally:
                self.stats.server_seconds += time.perf_counter() - started
            return self._read(response, held, replica, path)

    def _read(self, response: httpx.Response, held: Reservation, replica: Replica, path: str) -> dict[str, Any]:
        """The reply's JSON object, or the typed error; settles the reservation either way."""
        if response.status_code >= 400:
            self.meter.settle(held, None, billed=False)  # providers do not bill refused requests
            error = status_error(response, replica.name, path, self.model, self.key)
            if error.status_code == 429 or error.status_code >= 500:
                self.pool.mark_down(replica, getattr(error, "retry_after", None))
            raise self._counted(error)
        try:
            reply = response.json()
        except ValueError as err:
            self.meter.settle(held, None, billed=True)
            raise self._counted(InvalidJSONError(f"{replica.name}{path} answered {response.status_code} with a "
                                                 f"body that is not JSON: {response.text[:80]!r}")) from err
        if not isinstance(reply, dict):
            self.meter.settle(held, None, billed=True)
            raise self._counted(MalformedResponseError(f"{replica.name}{path} answered with JSON that is not an "
                                                       f"object: {str(reply)[:80]}"))
        self.meter.settle(held, reply.get("usage"), billed=True)
        return reply

    def _no_reply(self, err: httpx.TransportError, replica: Replica, path: str) -> APIConnectionError:
        what = f"{replica.name}{path}: {type(err).__name__}: {self.key.redact(str(err)) or 'no reply'}"
        if isinstance(err, httpx.TimeoutException):
            return APITimeoutError(f"{what} (timed out after {self.timeout.read}s; raise timeout_s for slow servers)")
        return APIConnectionError(f"{what} (is the server running at {replica.name}?)")

    def _failed(self, replica: Replica, error: BaseException) -> BaseException:
        self.pool.mark_down(replica)
        return self._counted(error)

    def _counted(self, error: BaseException) -> BaseException:
        self.stats.count_error(error)
        return error
