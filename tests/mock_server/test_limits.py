"""The mock server bounds what one request may cost: hostile input gets a 4xx before the work, never
a 5xx, a busy core or a held thread. Socket cases run against the real threaded server; the fuzz test against
`MockApp.handle` in-process. No test here bounds a wall-clock time (a loaded machine would fail it by chance): the
reaction times are measured by `benchmarks/mock_limits.py`; here, what was refused and how much work was done."""
from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
from typing import Any

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from bbtune.backends.wire import encode_embeds
from mock_server import MockApp, MockServer, ServerConfig, shared_scorer
from mock_server.scorer import Scorer
from mock_server.__main__ import build_parser, configs
from mock_server.limits import content_length, json_depth


READ_TIMEOUT_S = 0.5
VOCAB, HIDDEN = shared_scorer("tiny").vocab_size, shared_scorer("tiny").hidden_size


@pytest.fixture(scope="module")
def server():
    with MockServer(ServerConfig(model="tiny", port=0, read_timeout_s=READ_TIMEOUT_S),
                    scorer=shared_scorer("tiny")) as srv:
        yield srv


def send(port: int, body: bytes = b"", headers: dict[str, str] | None = None, path: str = "/v1/completions",
         length: str | None = "auto") -> tuple[int, dict[str, Any]]:
    """One raw POST (Content-Length as given: "auto", any string, or None for none); (status, JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        if length is not None:
            conn.putheader("Content-Length", str(len(body)) if length == "auto" else length)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders(body or None)
        reply = conn.getresponse()
        data = reply.read()
        return reply.status, json.loads(data)
    finally:
        conn.close()


def post_json(port: int, **body: Any) -> tuple[int, dict[str, Any]]:
    return send(port, json.dumps({"model": "tiny", "max_tokens": 1, "temperature": 0, **body}).encode())


def assert_refused(result: tuple[int, dict[str, Any]], status: int, *words: str) -> None:
    got, reply = result
    assert got == status, reply
    message = reply["error"]["message"]
    assert all(w in message for w in words), message


def wait_until(done: Any, guard_s: float = 120.0) -> bool:
    """Poll `done()`; the guard only keeps a broken server from hanging the suite (no test asserts a time)."""
    deadline = time.monotonic() + guard_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(done())


# ---------------------------------------------------------------------- size limits, over a socket


def test_a_million_prompts_are_refused_before_any_is_read(server: MockServer) -> None:
    assert_refused(post_json(server.port, prompt=["a"] * 1_000_000), 400, "1000000 prompts", "256")
    assert_refused(post_json(server.port, prompt=[[1]] * 257), 400, "257 prompts", "--max-prompts")


def test_a_prompt_too_long_is_refused_before_it_is_tokenized(server: MockServer) -> None:
    # 7 MB fits the body limit; tokenizing it would take ~7 s
    assert_refused(post_json(server.port, prompt="a " * 3_500_000), 400, "7000000 characters", "--max-prompt-chars")
    assert_refused(post_json(server.port, prompt=[5] * 2_000_000), 400, "maximum context length")
    assert_refused(send(server.port, json.dumps({"prompt": "a " * 100_000}).encode(), path="/tokenize"), 400,
                   "--max-prompt-chars")
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "a"}] * 300}
    assert_refused(send(server.port, json.dumps(chat).encode(), path="/v1/chat/completions"), 400, "--max-messages")


def test_a_body_over_the_limit_gets_413_before_it_is_read(server: MockServer) -> None:
    # no body follows: had the server tried to read it, the answer would be a 408 after the read timeout
    assert_refused(send(server.port, length=str(10 * 1024 * 1024)), 413, "--max-body-bytes")
    assert_refused(send(server.port, length="9" * 40), 413, "--max-body-bytes")


@pytest.mark.parametrize("length, status, word", [
    ("abc", 400, "non-negative integer"),
    ("-5", 400, "non-negative integer"),
    ("+5", 400, "non-negative integer"),
    ("1_0", 400, "non-negative integer"),
    (None, 411, "Content-Length"),
])
def test_a_bad_or_missing_content_length_gets_a_json_error(server: MockServer, length: str | None, status: int,
                                                           word: str) -> None:
    assert_refused(send(server.port, b"{}", length=length), status, word)


def test_conflicting_content_lengths_and_chunked_bodies_are_refused(server: MockServer) -> None:
    assert_refused(send(server.port, b"{}", headers={"Content-Length": "3"}), 400, "Conflicting")
    assert_refused(send(server.port, length=None, headers={"Transfer-Encoding": "chunked"}), 411, "Transfer-Encoding")


def _handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_a_stalled_body_gets_408_and_its_thread_ends(server: MockServer) -> None:
    baseline = _handler_threads()
    stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]  # never send a byte
    for sock in stalled:  # 100 bytes promised, 1 sent
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
    for sock in stalled + silent:
        sock.settimeout(120)
    replies = [_read_all(sock) for sock in stalled]
    assert all(r.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in r for r in replies), replies[0][:200]
    assert all(_read_all(sock) == b"" for sock in silent)  # closed without a word
    for sock in stalled + silent:
        sock.close()
    assert wait_until(lambda: _handler_threads() <= baseline)


def test_a_trickled_body_cannot_reset_the_timeout(server: MockServer) -> None:
    """One byte every 0.2 s keeps each read under the timeout; the whole body still has to come within it. Had
    each read reset the timeout, all 100 bytes would arrive and the answer would be about the body (400)."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(120)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        try:
            for _ in range(100):
                sock.sendall(b" ")
                time.sleep(0.2)
        except OSError:  # the server closed: the timeout held
            pass
        assert _read_all(sock).startswith(b"HTTP/1.1 408")


# ---------------------------------------------------------------------- total work


@pytest.mark.parametrize("route, body, words", [
    ("/v1/completions", {"prompt": ["a"] * 256, "n": 128, "max_tokens": 250}, ["256 prompt(s) x n=128"]),
    ("/v1/completions", {"prompt": "a", "n": 128, "max_tokens": 250}, ["1 prompt(s) x n=128 x max_tokens=250"]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "n": 128, "max_tokens": 250},
     ["n=128 x max_tokens=250"]),
])
def test_a_requests_total_work_is_bounded_before_any_token_is_generated(route: str, body: dict[str, Any],
                                                                       words: list[str]) -> None:
    app = _app()
    status, reply = _post(app, route, {"model": "tiny", "temperature": 0, **body})
    assert status == 400 and reply["error"]["param"] == "max_tokens", reply
    assert all(w in reply["error"]["message"] for w in [*words, "--max-request-tokens"]), reply
    assert app.stats()["completion_tokens"] == 0


def test_the_total_work_bound_is_a_config_field_and_a_flag() -> None:
    config, _ = configs(build_parser().parse_args(["--max-request-tokens", "100"]))
    assert config.max_request_tokens == 100
    status, reply = _post(_app(max_request_tokens=100), "/v1/completions",
                          {"model": "tiny", "prompt": "a", "n": 10, "max_tokens": 10, "temperature": 0})
    assert status == 400 and "max_request_tokens of 100" in reply["error"]["message"]
    assert _post(_app(max_request_tokens=100), "/v1/completions",
                 {"model": "tiny", "prompt": "a", "n": 9, "max_tokens": 10, "temperature": 0})[0] == 200
    with pytest.raises(ValueError, match="max_request_tokens"):
        ServerConfig(max_request_tokens=0)


class _CountingScorer(Scorer):
    """The tiny model, counting forwards: how much work the server did, with no clock involved."""

    def __init__(self) -> None:
        tiny = shared_scorer("tiny")
        super().__init__(loaded=(tiny.model, tiny.tokenizer))
        self.forwards = 0

    def logprobs(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.forwards += 1
        return super().logprobs(*args, **kwargs)


def test_generation_stops_when_the_client_goes_away() -> None:
    """A request for 128 x 250 tokens; the client leaves after a few: the server stops (a handful more forwards,
    not the 32,000 left) and counts the request as 499."""
    scorer = _CountingScorer()
    with MockServer(ServerConfig(model="tiny", port=0, max_request_tokens=10**6), scorer=scorer) as srv:
        body = json.dumps({"model": "tiny", "prompt": "a", "n": 128, "max_tokens": 250, "temperature": 1}).encode()
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert wait_until(lambda: scorer.forwards >= 5)
        sock.close()
        assert wait_until(lambda: srv.stats()["in_flight"] == 0)
        assert scorer.forwards < 1000  # of 32,000
        assert srv.stats()["by_status"] == {"499": 1}


# ---------------------------------------------------------------------- JSON and parameters, over a socket


def test_deep_json_is_refused_without_a_recursion_error(server: MockServer) -> None:
    deep = b'{"model": "tiny", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_refused(send(server.port, deep), 400, "100001 levels", "--max-json-depth")
    at_limit = {"model": "tiny", "prompt": "a", "max_tokens": 1, "user": json.loads("[" * 63 + "]" * 63)}
    assert send(server.port, json.dumps(at_limit).encode())[0] == 200  # 64 levels: the default limit
    over = {**at_limit, "user": [at_limit["user"]]}
    assert_refused(send(server.port, json.dumps(over).encode()), 400, "65 levels")


@pytest.mark.parametrize("seed", [1e23, -1, 2**63, "7", 1.5, True])
def test_a_seed_outside_int64_gets_400(server: MockServer, seed: Any) -> None:
    result = post_json(server.port, prompt="a", seed=seed, temperature=1)
    assert_refused(result, 400, "'seed'")
    assert result[1]["error"]["param"] == "seed"


def test_a_seed_in_range_samples_reproducibly(server: MockServer) -> None:
    first, second = (post_json(server.port, prompt="a", seed=2**63 - 1, temperature=1, max_tokens=4) for _ in "ab")
    assert first[0] == 200 and first[1]["choices"][0]["text"] == second[1]["choices"][0]["text"]


@pytest.mark.parametrize("key, value, word", [
    ("-5", 10, "'-5'"),
    (str(VOCAB), 10, f"'{VOCAB}'"),
    ("abc", 10, "'abc'"),
    ("1" * 5000, 10, "is not a token id"),
    ("5", True, "token 5"),
    ("5", "10", "token 5"),
    ("5", 101, "token 5"),
])
def test_a_logit_bias_outside_the_vocabulary_or_range_gets_400(server: MockServer, key: str, value: Any,
                                                               word: str) -> None:
    result = post_json(server.port, prompt="a", logit_bias={key: value})
    assert_refused(result, 400, word)
    assert result[1]["error"]["param"] == "logit_bias"


# ---------------------------------------------------------------------- parameters, in-process


def _app(**config: Any) -> MockApp:
    return MockApp(ServerConfig(**{"model": "tiny", **config}), scorer=shared_scorer("tiny"))


def _post(app: MockApp, route: str, body: Any) -> tuple[int, dict[str, Any]]:
    reply = app.handle("POST", route, {}, json.dumps(body).encode())
    return reply.status, json.loads(reply.body)


@pytest.mark.parametrize("route, extra, param", [
    ("/v1/completions", {"n": 129}, "n"),
    ("/v1/completions", {"stop": ""}, "stop"),
    ("/v1/chat/completions", {"stop": [1]}, "stop"),
    ("/v1/completions", {"n": "1"}, "n"),
    ("/v1/completions", {"max_tokens": 1.5}, "max_tokens"),
    ("/v1/completions", {"max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"max_tokens": True}, "max_tokens"),
    ("/v1/completions", {"logprobs": -1}, "logprobs"),
    ("/v1/completions", {"logprobs": True}, "logprobs"),
    ("/v1/completions", {"temperature": float("nan")}, "temperature"),
    ("/v1/completions", {"temperature": float("inf")}, "temperature"),
    ("/v1/completions", {"temperature": True}, "temperature"),
    ("/v1/completions", {"echo": "no"}, "echo"),
    ("/v1/completions", {"stream": "no"}, "stream"),
    ("/v1/completions", {"prompt": [[]]}, "prompt"),
    ("/v1/completions", {"prompt": [[1, True]]}, "prompt"),
    ("/v1/completions", {"prompt": [[VOCAB]]}, "prompt"),
    ("/v1/completions", {"prompt": None, "temperature": 1,  # NaN log-probs: sampling would raise
                         "prompt_embeds": encode_embeds(torch.full((2, HIDDEN), math.nan))}, "prompt_embeds"),
    ("/v1/chat/completions", {"logprobs": "yes"}, "logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"max_completion_tokens": 0}, "max_completion_tokens"),
    ("/tokenize", {"add_special_tokens": "no"}, "add_special_tokens"),
])
def test_bad_parameters_get_400_naming_them(route: str, extra: dict[str, Any], param: str) -> None:
    base = {"model": "tiny", "max_tokens": 1, "temperature": 0,
            **({"messages": [{"role": "user", "content": "a"}]} if "chat" in route else {"prompt": "a"})}
    status, reply = _post(_app(), route, {**base, **extra})
    assert status == 400 and reply["error"]["param"] == param, reply


def test_a_tiny_temperature_samples_the_argmax_instead_of_failing() -> None:
    app, body = _app(), {"model": "tiny", "prompt": "the film was", "max_tokens": 3, "seed": 1}
    _, greedy = _post(app, "/v1/completions", {**body, "temperature": 0})
    for temperature in (1e-300, 5e-324):  # 0 in float32: softmax(row / T) would be 0/0
        status, reply = _post(app, "/v1/completions", {**body, "temperature": temperature})
        assert status == 200 and reply["choices"][0]["text"] == greedy["choices"][0]["text"]


def test_the_in_process_app_applies_the_body_limit_too() -> None:
    reply = _app(max_body_bytes=100).handle("POST", "/v1/completions", {}, b" " * 101)
    assert reply.status == 413 and "--max-body-bytes" in json.loads(reply.body)["error"]["message"]


# ---------------------------------------------------------------------- the limits' config and parsers


def test_the_limits_are_flags_and_must_be_positive() -> None:
    args = build_parser().parse_args(["--max-body-bytes", "1000", "--max-json-depth", "8", "--max-prompts", "4",
                                      "--max-messages", "3", "--max-prompt-chars", "50", "--read-timeout-s", "0.25"])
    config, _ = configs(args)
    assert (config.max_body_bytes, config.max_json_depth, config.max_prompts, config.max_messages,
            config.max_prompt_chars, config.read_timeout_s) == (1000, 8, 4, 3, 50, 0.25)
    with pytest.raises(ValueError, match="max_prompts"):
        ServerConfig(max_prompts=0)
    with pytest.raises(ValueError, match="read_timeout_s"):
        ServerConfig(read_timeout_s=0)


@pytest.mark.parametrize("values, expected", [([], 0), (["0"], 0), (["12"], 12), ([" 12 "], 12), (["12", "12"], 12)])
def test_content_length_reads_what_a_get_may_send(values: list[str], expected: int) -> None:
    assert content_length("GET", values, None, 100) == expected


_JSON_TEXT = st.text(alphabet='[]{}"\\ab\u00e9', max_size=6)  # strings full of what the depth scan must skip
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | _JSON_TEXT,
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_JSON_TEXT, kids, max_size=3),
                     max_leaves=20)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@given(_JSON, st.booleans())
def test_json_depth_matches_the_parsed_depth(value: Any, ascii_only: bool) -> None:
    assert json_depth(json.dumps(value, ensure_ascii=ascii_only).encode()) == _depth(value)


# ---------------------------------------------------------------------- fuzz: never a 5xx, never an exception

def _mostly(common: st.SearchStrategy, rare: st.SearchStrategy, one_in: int = 8) -> st.SearchStrategy:
    """`common`, but `rare` one time in `one_in` (`a | b` would draw each half the time)."""
    return st.sampled_from([True] * (one_in - 1) + [False]).flatmap(lambda pick: common if pick else rare)


_KEYS = ("model", "prompt", "prompt_embeds", "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs",
         "echo", "temperature", "seed", "logit_bias", "n", "stop", "stream", "messages", "role", "content", "text",
         "add_special_tokens")
# small numbers and extremes, not the middle: max_tokens=200 is valid and costs 200 forward passes
_NUMBERS = (st.integers(-3, 3) | st.integers(min_value=2**62) | st.integers(max_value=-2**62)
            | st.floats(allow_nan=True, allow_infinity=True))
_SCALARS = (st.none() | st.booleans() | _NUMBERS | st.text(max_size=8)
            | st.sampled_from(["tiny", "-1", "5", "1e400", "user", "system", ""]))
_VALUES = st.recursive(_SCALARS, lambda kids: st.lists(kids, max_size=4)
                       | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=4), kids, max_size=4),
                       max_leaves=16)
_IDS = st.integers(-2, VOCAB + 2) | _NUMBERS
_PROMPTS = (st.text(max_size=20) | st.lists(st.text(max_size=10), max_size=6) | st.lists(_IDS, max_size=6)
            | st.lists(st.lists(_IDS, max_size=4), max_size=5) | _VALUES)
_EMBEDS = st.builds(lambda rows, hidden, fill: encode_embeds(torch.full((rows, hidden), fill)), st.integers(0, 3),
                    _mostly(st.just(HIDDEN), st.just(7), 4), st.sampled_from([0.1, math.nan, math.inf]))
_CONTENT = (st.text(max_size=20) | _SCALARS
            | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _SCALARS}), max_size=3))
_MESSAGES = (st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]) | _SCALARS,
                                             "content": _CONTENT}), max_size=6) | _VALUES)
_OPTIONAL = {  # each present or not; a valid value 7 times in 8, else a hostile one
    "max_tokens": _mostly(st.integers(0, 3), _SCALARS),
    "max_completion_tokens": _mostly(st.integers(1, 3), _SCALARS),
    "temperature": _mostly(st.sampled_from([0, 1, 2, 1e-300, 5e-324]) | st.floats(0, 2), _SCALARS),
    "seed": _mostly(st.integers(0, 2**63 - 1), _SCALARS),
    "logit_bias": _mostly(st.dictionaries(st.integers(0, VOCAB - 1).map(str), st.floats(-100, 100), max_size=3),
                          st.dictionaries(st.integers(-3, VOCAB + 3).map(str) | st.text(max_size=4),
                                          st.floats(-100, 100) | _SCALARS, max_size=3) | _VALUES),
    "logprobs": _mostly(st.integers(0, 5) | st.booleans(), _SCALARS),
    "top_logprobs": _mostly(st.integers(0, 5), _SCALARS),
    "echo": _mostly(st.booleans(), _SCALARS), "stream": _mostly(st.just(False), _SCALARS),
    "n": _mostly(st.integers(1, 2), _SCALARS), "stop": _mostly(st.sampled_from(["\n", [".", " a"]]), _SCALARS),
    "add_special_tokens": _mostly(st.booleans(), _SCALARS),
}
_MODEL = _mostly(st.just("tiny"), st.just("gpt-x") | _VALUES)
_EMBEDS_FIELDS = {"model": _MODEL, "prompt_embeds": _EMBEDS | st.lists(_EMBEDS, max_size=3) | _VALUES}
_COMPLETION = (st.fixed_dictionaries({"model": _MODEL, "prompt": _PROMPTS}, optional=_OPTIONAL)
               | st.fixed_dictionaries(_EMBEDS_FIELDS, optional={**_OPTIONAL, "prompt": _PROMPTS}))
_CHAT = st.fixed_dictionaries({"model": _MODEL, "messages": _MESSAGES}, optional=_OPTIONAL)
_TOKENIZE = st.fixed_dictionaries({"prompt": _PROMPTS}, optional={"model": _MODEL, "content": _PROMPTS,
                                                                   "add_special_tokens": _OPTIONAL["echo"]})
_JSON_BODY = st.builds(lambda d: json.dumps(d).encode(), _COMPLETION | _CHAT | _TOKENIZE
                       | st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=8))
_GARBAGE = (st.binary(max_size=64)
            | st.sampled_from([1, 8, 9, 63, 64, 65, 999, 1001, 5000, 100_000]).map(
                lambda n: b'{"model": "tiny", "prompt": ' + b"[" * n + b"]" * n + b"}")
            | st.tuples(_JSON_BODY, st.integers(1, 40)).map(lambda t: t[0][: -t[1]]))
_CALLS = _mostly(  # mostly a body that fits its route, so the fuzz gets past routing into the parameters
    st.tuples(st.just("/v1/completions"), _COMPLETION) | st.tuples(st.just("/v1/chat/completions"), _CHAT)
    | st.tuples(st.sampled_from(["/tokenize", "/v1/tokenize"]), _TOKENIZE),
    st.tuples(st.sampled_from(["/v1/completions", "/v1/chat/completions", "/tokenize", "/v1/models", "/stats",
                               "/stats/reset", "/health", "/v1/embeddings", "/v1/completions?x=1", "/v1/"])
              | st.text(), _JSON_BODY | _GARBAGE), one_in=3)
_METHODS = _mostly(st.just("POST"), st.sampled_from(["GET", "PUT", "post"]) | st.text(max_size=6))
_HEADERS = st.dictionaries(st.sampled_from(["Content-Type", "Content-Length", "X-Other"]) | st.text(max_size=8),
                           st.text(max_size=12), max_size=3)
_AUTH = _mostly(st.just({"Authorization": "Bearer k"}),
                st.sampled_from([{"authorization": "Bearer "}, {"Authorization": "k"}, {}]))
_FUZZ_APPS = (_app(max_prompts=4, max_messages=4, max_prompt_chars=200),
              _app(api_key="k", echo="reject", list_prompts=False, max_json_depth=8))


@given(st.sampled_from(_FUZZ_APPS), _METHODS, _CALLS, _HEADERS, _AUTH)
def test_fuzzed_requests_never_get_a_5xx(app: MockApp, method: str, call: tuple[str, Any], headers: dict[str, str],
                                         auth: dict[str, str]) -> None:
    route, body = call
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = app.handle(method, route, {**headers, **auth}, body)
    event(f"status {reply.status}")  # --hypothesis-show-statistics: how many get past the checks
    assert reply.status < 500, reply.body[:300]
    if reply.status >= 400:
        assert json.loads(reply.body)["error"]["message"]


def test_a_client_that_hangs_up_prints_no_traceback(capfd):
    """A reset connection is routine: the server says nothing on stderr (it once printed a socketserver traceback
    into the output of a CLI run that had already ended with a clear one-line error)."""
    import socket
    import struct
    import time

    from mock_server import MockServer, ServerConfig, shared_scorer

    with MockServer(ServerConfig(model="tiny", port=0), scorer=shared_scorer("tiny")) as server:
        for _ in range(3):  # a keep-alive connection reset while the server waits for its next request line
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            sock.close()
        time.sleep(0.5)
    assert "Traceback" not in capfd.readouterr().err
