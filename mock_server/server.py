"""The HTTP layer: a threaded stdlib server (HTTP/1.1 keep-alive) around `MockApp`, startable in a thread.

Stdlib rather than an ASGI server because two faults need the raw socket: closing a connection without a
reply, and closing it half way through a body. A thread per connection keeps added latency concurrent.

The request line and headers are bounded by the stdlib (64 KiB a line, 100 headers); the body here: a
Content-Length that is missing (411), not a number (400) or over ``max_body_bytes`` (413) is refused before
the body is read, and a body that has not arrived within ``read_timeout_s`` gets 408; either way the
connection closes, and so does one idle that long, so a stalled client cannot keep its thread.

    >>> with MockServer(ServerConfig(model="tiny", port=0)) as server:   # doctest: +SKIP
    ...     print(server.url)                                              # http://127.0.0.1:PORT/v1
"""
from __future__ import annotations

import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from .api import CLIENT_GONE, ApiError
from .app import MockApp, Reply
from .config import FaultConfig, FaultKind, ServerConfig
from .limits import content_length
from .scorer import Scorer

_READ_CHUNK = 1 << 16  # bytes per read of a request body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would hold the body ~40 ms
    server: "_HTTPServer"

    def setup(self) -> None:
        # StreamRequestHandler applies `timeout` to the socket: an idle or stalled client ends its thread.
        self.timeout = self.server.app.config.read_timeout_s
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.verbose:
            super().log_message(format, *args)

    def _serve(self) -> None:
        app = self.server.app
        try:
            length = content_length(self.command, self.headers.get_all("Content-Length") or [],
                                    self.headers.get("Transfer-Encoding"), app.config.max_body_bytes)
            body = self._read_body(length)
        except ApiError as err:  # the body (if any) is still unread: this connection cannot carry another request
            self._send(app.refused(err), close=True)
            return
        except TimeoutError:
            self._send(app.refused(ApiError(408, f"The request body did not arrive within "
                                                 f"{app.config.read_timeout_s:g} s (--read-timeout-s).",
                                            code="request_timeout")), close=True)
            return
        except ConnectionError:  # the client left mid-body: nobody to answer
            self.close_connection = True
            return
        watch = CLIENT_GONE.set(self._client_gone)
        try:
            reply = app.handle(self.command, self.path, dict(self.headers.items()), body)
        finally:
            CLIENT_GONE.reset(watch)
        if reply.action is FaultKind.DROP:
            self._drop()
            return
        self._send(reply)

    def _client_gone(self) -> bool:
        """True once the client has closed its end (readable, yet nothing to read); a pipelined next request
        is data, not a close. Asked between generated tokens, so a request nobody waits for stops."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    def _read_body(self, length: int) -> bytes:
        """`length` bytes within one read timeout in all, not per read: a client trickling a byte at a time
        would otherwise hold the thread for as long as it likes (slowloris)."""
        timeout = self.server.app.config.read_timeout_s
        deadline, chunks, left = time.monotonic() + timeout, [], length
        try:
            while left:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("request body")
                self.connection.settimeout(remaining)
                chunk = self.rfile.read1(min(left, _READ_CHUNK))
                if not chunk:
                    raise ConnectionError("the client closed the connection mid-body")
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            self.connection.settimeout(timeout)
        return b"".join(chunks)

    def _send(self, reply: Reply, close: bool = False) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        if close:
            self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        if reply.action is FaultKind.TRUNCATED:
            self.wfile.write(reply.body[: len(reply.body) // 2])
            self.wfile.flush()
            self._drop()
            return
        self.wfile.write(reply.body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    do_GET = do_POST = _serve


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: MockApp, verbose: bool):
        self.app, self.verbose = app, verbose
        self.connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (reset, broken pipe) is routine for a server, not a traceback on stderr; other
        errors are still reported."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Cut open keep-alive connections too, so a stopped server looks dead to its clients."""
        with self._conn_lock:
            open_now = list(self.connections)
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class MockServer:
    """An OpenAI-compatible server over a local model, with fault injection.

    `start()` binds (port 0 picks a free one) and serves in a daemon thread; `stop()` shuts it down. Also a
    context manager. `url` is the base URL a client wants (ends in ``/v1``).
    """

    def __init__(self, config: ServerConfig = ServerConfig(), faults: FaultConfig = FaultConfig(), *,
                 scorer: Scorer | None = None, verbose: bool = False):
        self.config = config
        self.app = MockApp(config, faults, scorer)
        self.verbose = verbose
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the mock server is not started; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}/v1"

    def openai_client(self, **options: Any) -> Any:
        """The official `openai` client pointed at this server, with its key (or a placeholder where the server
        asks none): what a demo or a test of "works with the openai package" needs. `options` go to
        ``openai.OpenAI`` (max_retries, timeout, ...). The client makes its own HTTP client: openai 3.x is built
        on httpx2, so bbtune's httpx objects are never handed to it."""
        import openai  # here, not at import: the server itself never needs it

        return openai.OpenAI(api_key=self.config.api_key or "sk-mock-no-key", base_url=self.url, **options)

    def stats(self) -> dict[str, Any]:
        return self.app.stats()

    def start(self) -> "MockServer":
        self._httpd = _HTTPServer((self.config.host, self.config.port), self.app, self.verbose)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"mock-server:{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self, announce: Callable[[str], None] = lambda url: None) -> None:
        """Serve in the calling thread (the command line) until interrupted; `announce` gets the bound URL."""
        self._httpd = _HTTPServer((self.config.host, self.config.port), self.app, self.verbose)
        announce(self.url)
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> "MockServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
