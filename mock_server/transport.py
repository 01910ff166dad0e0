"""The mock without sockets: an ``httpx.MockTransport`` that hands requests to a `MockApp`.

Unit tests get the real endpoints, key check and fault schedule in-process; the two socket faults become
the errors httpx raises for them (``RemoteProtocolError``).

    >>> client = httpx.AsyncClient(transport=mock_transport(MockApp()))   # doctest: +SKIP
"""
from __future__ import annotations

import httpx

from .app import MockApp
from .config import FaultKind


def mock_transport(app: MockApp) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        reply = app.handle(request.method, request.url.raw_path.decode(), dict(request.headers), request.read())
        if reply.action is FaultKind.DROP:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        if reply.action is FaultKind.TRUNCATED:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body",
                                            request=request)
        return httpx.Response(reply.status, headers=reply.headers, content=reply.body)

    return httpx.MockTransport(handle)
