"""The mock's request handling without sockets: routing, API-key check, faults, latency and counters.

`MockApp.handle(method, path, headers, body) -> Reply`; the HTTP layer (`server.py`) only moves bytes, and
carries out the two faults that need the socket (a dropped connection, a truncated body). The body limits
(size, JSON depth; `limits`) apply here too, so the in-process transport gets the same refusals.

Routes (with or without the ``/v1`` prefix): ``GET /models``, ``POST /completions``,
``POST /chat/completions``, ``POST /tokenize``; and, never faulted or key-checked, ``GET /stats``,
``POST /stats/reset``, ``GET /health``.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from . import api
from .config import FaultConfig, FaultKind, ServerConfig
from .faults import FaultInjector
from .limits import check_body_size, parse_json
from .scorer import Scorer

_Handler = Callable[[Scorer, ServerConfig, Mapping[str, Any]], dict]
_POST: dict[str, _Handler] = {
    "/completions": api.completions,
    "/chat/completions": api.chat_completions,
    "/tokenize": api.tokenize,
}


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    action: FaultKind | None = None  # DROP or TRUNCATED: the HTTP layer breaks the connection


def _json(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


def _error(err: api.ApiError) -> Reply:
    return _json(err.status, err.body(), err.headers)


class MockApp:
    """One model, one config, one fault schedule, shared by all connection threads."""

    def __init__(self, config: ServerConfig = ServerConfig(), faults: FaultConfig = FaultConfig(),
                 scorer: Scorer | None = None):
        self.config, self.faults = config, FaultInjector(faults)
        self.scorer = scorer or Scorer(config.model)
        self._lock = threading.Lock()
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.requests = 0
        self.by_path: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.tokens = Counter({"prompt_tokens": 0, "completion_tokens": 0})
        self.in_flight = 0
        self.max_in_flight = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self.requests, "by_path": dict(self.by_path), "by_status": dict(self.by_status),
                    "faults": dict(self.faults.fired), "prompt_tokens": self.tokens["prompt_tokens"],
                    "completion_tokens": self.tokens["completion_tokens"], "max_in_flight": self.max_in_flight,
                    "in_flight": self.in_flight}

    # ------------------------------------------------------------------ entry point

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        route = path.split("?", 1)[0].rstrip("/")
        route = route[3:] if route.startswith("/v1/") else route
        if route in ("/stats", "/stats/reset", "/health"):
            return self._admin(method, route)
        with self._lock:
            self.requests += 1
            self.by_path[route] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = self._api(method, route, headers, body)
        finally:
            with self._lock:
                self.in_flight -= 1
        with self._lock:
            dropped = reply.action is not None and reply.status != 499  # 499: the client left (nginx's code)
            self.by_status[reply.action.value if dropped else str(reply.status)] += 1  # type: ignore[union-attr]
        return reply

    def refused(self, err: api.ApiError) -> Reply:
        """The reply to a request the HTTP layer refused before reading its body, counted like any other."""
        with self._lock:
            self.requests += 1
            self.by_status[str(err.status)] += 1
        return _error(err)

    def _admin(self, method: str, route: str) -> Reply:
        if route == "/stats/reset" and method == "POST":
            with self._lock:
                self._reset_counters()
                self.faults.fired.clear()
            return _json(200, {"ok": True})
        if method != "GET":
            return _error(api.ApiError(405, f"{method} {route} is not allowed"))
        return _json(200, self.stats() if route == "/stats" else {"status": "ok", "model": self.config.name})

    def _api(self, method: str, route: str, headers: Mapping[str, str], body: bytes) -> Reply:
        denied = self._auth(headers)
        if denied is not None:
            return denied
        decision = self.faults.decide()
        if decision.delay_s:
            time.sleep(decision.delay_s)
        if decision.fault is not None and decision.fault is not FaultKind.TRUNCATED:
            return self._fault(decision.fault)
        reply = self._route(method, route, body)
        if decision.fault is FaultKind.TRUNCATED:
            reply.action = FaultKind.TRUNCATED
        return reply

    def _auth(self, headers: Mapping[str, str]) -> Reply | None:
        key = self.config.api_key
        if key is None:
            return None
        given = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        if not given.startswith("Bearer ") or not given[7:]:
            msg = "You didn't provide an API key. Provide it in an Authorization header (Bearer auth)."
        elif given[7:] != key:
            shown = given[7:]  # masked as OpenAI does: a client must not print even this
            msg = f"Incorrect API key provided: {shown[:3] + '***' + shown[-4:] if len(shown) >= 12 else '***'}."
        else:
            return None
        return _error(api.ApiError(401, msg, code="invalid_api_key"))

    def _fault(self, kind: FaultKind) -> Reply:
        retry = {"Retry-After": f"{self.faults.config.retry_after_s:g}"}
        if kind is FaultKind.RATE_LIMIT:
            return _error(api.ApiError(429, "Rate limit reached (mock fault injection).", type="requests",
                                       code="rate_limit_exceeded", headers=retry))
        if kind in (FaultKind.SERVER_ERROR, FaultKind.UNAVAILABLE):
            status = int(kind.value)
            return _error(api.ApiError(status, f"The server had an error ({status}, mock fault injection).",
                                       type="server_error", headers=retry if status == 503 else None))
        if kind is FaultKind.MALFORMED:
            return Reply(200, b'{"id": "cmpl-broken", "choices": [{"index": 0, "logprobs": ',
                         {"Content-Type": "application/json"})
        return Reply(200, b"", {}, FaultKind.DROP)

    def _route(self, method: str, route: str, body: bytes) -> Reply:
        try:
            if route == "/models" and method == "GET":
                return _json(200, api.models(self.config))
            handler = _POST.get(route)
            if handler is None or method != "POST":
                raise api.ApiError(404, f"Unknown endpoint {method} {route}", code="unknown_url")
            check_body_size(body, self.config.max_body_bytes)
            payload = parse_json(body, self.config.max_json_depth)
            if not isinstance(payload, dict):
                raise api.ApiError(400, "The request body must be a JSON object.")
            reply = handler(self.scorer, self.config, payload)
        except api.ApiError as err:
            return _error(err)
        except api.ClientGone:  # the connection is closed: no reply can reach it
            return Reply(499, b"", {}, FaultKind.DROP)
        except Exception as err:  # noqa: BLE001 - a bug in the mock answers 500, as a real server would
            return _error(api.ApiError(500, f"internal error: {type(err).__name__}: {err}", type="server_error"))
        usage = reply.get("usage") or {}
        with self._lock:
            self.tokens.update({k: int(usage.get(k, 0)) for k in ("prompt_tokens", "completion_tokens")})
        return _json(200, reply)
