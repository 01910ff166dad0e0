"""How fast the mock server refuses hostile requests and lets go of a client that left.

The unit tests (tests/mock_server/test_limits.py) check *what* is refused and how much work was done, never how long it
took: a bound on time fails by chance on a loaded machine. The times live here, measured on a running server:

- each hostile request: seconds from sending it to its 4xx (a million prompts, a 7 MB prompt, a 10 MB
  Content-Length, 100,000-deep JSON, 256 prompts x n=128 x max_tokens=250);
- a stalled body: seconds until its 408 (the read timeout plus the reaction);
- a client that leaves a long generation: seconds from its close until the server has no request in flight.

    python benchmarks/mock_limits.py [--repeat 5] [--out benchmarks/results/mock_limits.json]
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from mock_server import MockServer, ServerConfig, shared_scorer

READ_TIMEOUT_S = 0.5


def _post(port: int, body: bytes, length: str | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(120)
        head = f"POST /v1/completions HTTP/1.1\r\nHost: b\r\nContent-Length: {length or len(body)}\r\n\r\n"
        sock.sendall(head.encode() + (b"" if length else body))
        return sock.recv(64)


def _json(**body: Any) -> bytes:
    return json.dumps({"model": "tiny", "max_tokens": 1, "temperature": 0, **body}).encode()


def _timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _left_generation(server: MockServer) -> float:
    """Start 128 x 250 tokens, leave once the server is busy; seconds until it has stopped."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    body = _json(prompt="a", n=128, max_tokens=250, temperature=1)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    while server.stats()["in_flight"] == 0:
        time.sleep(0.001)
    time.sleep(0.05)
    sock.close()
    started = time.perf_counter()
    while server.stats()["in_flight"]:
        time.sleep(0.001)
    return time.perf_counter() - started


def measure(repeat: int) -> dict[str, dict[str, float]]:
    config = ServerConfig(model="tiny", port=0, read_timeout_s=READ_TIMEOUT_S, max_request_tokens=10**6)
    bounded = ServerConfig(model="tiny", port=0)
    cases: dict[str, Callable[[int], Any]] = {
        "a million prompts": lambda port: _post(port, _json(prompt=["a"] * 1_000_000)),
        "a 7 MB prompt": lambda port: _post(port, _json(prompt="a " * 3_500_000)),
        "a 10 MB Content-Length": lambda port: _post(port, b"", length=str(10 * 1024 * 1024)),
        "100,000-deep JSON": lambda port: _post(port, b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "a stalled body (408)": lambda port: _post(port, b"{", length="100"),
    }
    out: dict[str, list[float]] = {name: [] for name in [*cases, "256 x n=128 x 250 tokens", "client left"]}
    with MockServer(config, scorer=shared_scorer("tiny")) as server, \
            MockServer(bounded, scorer=shared_scorer("tiny")) as small:
        for _ in range(repeat):
            for name, case in cases.items():
                out[name].append(_timed(lambda: case(server.port)))
            body = _json(prompt=["a"] * 256, n=128, max_tokens=250)
            out["256 x n=128 x 250 tokens"].append(_timed(lambda: _post(small.port, body)))
            out["client left"].append(_left_generation(server))
    return {name: {"median_s": statistics.median(v), "max_s": max(v)} for name, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    result = measure(args.repeat)
    for name, row in result.items():
        print(f"{name:28s} median {row['median_s'] * 1000:8.1f} ms   max {row['max_s'] * 1000:8.1f} ms")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
