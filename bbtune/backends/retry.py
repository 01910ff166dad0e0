"""Retry policy as small pure functions, and the `tenacity` loop built from them.

Retried: 408, 409, 429 and 5xx replies; no reply at all (refused, dropped, timed out); and errors marked
``transient`` (a body cut off or garbled in transit). Not retried: other 4xx (a wrong key, an unknown model,
an option the server lacks: asking again cannot help) and well-formed replies of the wrong shape.

Wait before retry n (n = 1, 2, ...): the server's ``Retry-After`` when it sends one (capped at
`MAX_RETRY_AFTER_S`), otherwise ``min(INITIAL_RETRY_DELAY_S * 2**(n-1), MAX_RETRY_DELAY_S)`` with up to 25%
taken off at random, so that a population's requests do not all come back at once.

    >>> backoff_s(1, rand=lambda: 0.0), backoff_s(3, rand=lambda: 0.0), backoff_s(10, rand=lambda: 0.0)
    (0.5, 2.0, 8.0)
"""
from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Callable, Mapping

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from bbtune.constants import INITIAL_RETRY_DELAY_S, MAX_RETRY_AFTER_S, MAX_RETRY_DELAY_S
from bbtune.errors import APIConnectionError, APIStatusError

RETRY_STATUSES = frozenset({408, 409, 429})
JITTER = 0.25


def should_retry(exc: BaseException) -> bool:
    """Whether asking again may succeed."""
    if isinstance(exc, APIStatusError):
        return exc.status_code in RETRY_STATUSES or exc.status_code >= 500
    return isinstance(exc, APIConnectionError) or bool(getattr(exc, "transient", False))


def retry_after_s(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asks us to wait (``retry-after-ms``, ``retry-after`` as seconds or HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lowered:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        value = lowered.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError, OverflowError):
        return None


def backoff_s(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff for retry number `attempt` (1-based), with jitter that only shortens it."""
    delay = min(INITIAL_RETRY_DELAY_S * 2 ** (attempt - 1), MAX_RETRY_DELAY_S)
    return delay * (1 - JITTER * rand())


def wait_s(exc: BaseException, attempt: int, rand: Callable[[], float] = random.random) -> float:
    """How long to wait after `exc` before retry number `attempt`."""
    asked = getattr(exc, "retry_after", None)
    if asked is not None:
        return min(float(asked), MAX_RETRY_AFTER_S)
    return backoff_s(attempt, rand)


def retrying(
    max_retries: int,
    sleep: Callable[[float], Awaitable[Any]],
    *,
    immediate: Callable[[BaseException], bool] = lambda exc: False,
    on_retry: Callable[[BaseException], None] = lambda exc: None,
) -> AsyncRetrying:
    """The tenacity loop: `max_retries` retries after the first try; no wait when `immediate(exc)` (another
    replica can take the request at once); the last error is re-raised as itself."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if exc is None or immediate(exc):
            return 0.0
        return wait_s(exc, state.attempt_number)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if error is not None:
            on_retry(error)

    return AsyncRetrying(
        stop=stop_after_attempt(max_retries + 1),
        retry=retry_if_exception(should_retry),
        wait=wait,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
