"""The mock server: OpenAI-shaped endpoints, key check, seeded faults, and the socket-level faults."""
from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
import torch

from bbtune.backends.wire import encode_embeds
from mock_server import FaultConfig, FaultKind, FaultRule, MockApp, MockServer, ServerConfig, shared_scorer
from mock_server.__main__ import build_parser, configs
from mock_server.faults import FaultInjector



def app(**server: Any) -> MockApp:
    faults = server.pop("faults", FaultConfig())
    return MockApp(ServerConfig(**{"model": "tiny", **server}), faults, scorer=shared_scorer("tiny"))


def post(mock: MockApp, route: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    reply = mock.handle("POST", route, headers or {}, json.dumps(body).encode())
    return reply.status, json.loads(reply.body) if reply.body else None


def completion(mock: MockApp, **body: Any) -> tuple[int, Any]:
    return post(mock, "/v1/completions", {"model": "tiny", "temperature": 0, **body})


# ---------------------------------------------------------------------- endpoints


def test_completions_greedy_text_is_the_top_token_and_usage_is_counted() -> None:
    status, reply = completion(app(), prompt=["the film was", "I love it"], max_tokens=2, logprobs=3)
    assert status == 200 and [c["index"] for c in reply["choices"]] == [0, 1]
    for choice in reply["choices"]:
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == 2 and choice["text"] == "".join(lp["tokens"])
        for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
            assert value == max(top.values()) == top[token]  # temperature 0: the argmax is the completion
            assert list(top.values()) == sorted(top.values(), reverse=True)
    usage = reply["usage"]
    assert usage["completion_tokens"] == 4 and usage["total_tokens"] == usage["prompt_tokens"] + 4


def test_echo_returns_every_prompt_token_with_offsets() -> None:
    text = "the film was great"
    status, reply = completion(app(), prompt=text, max_tokens=1, logprobs=1, echo=True)
    lp = reply["choices"][0]["logprobs"]
    n = len(shared_scorer("tiny").encode(text))
    assert status == 200 and len(lp["tokens"]) == n + 1 and lp["token_logprobs"][0] is None
    assert "".join(lp["tokens"][:n]) == text and lp["text_offset"][n] == len(text)
    assert reply["choices"][0]["text"].startswith(text)
    _, ignored = completion(app(echo="ignore"), prompt=text, max_tokens=1, logprobs=1, echo=True)
    assert len(ignored["choices"][0]["logprobs"]["tokens"]) == 1  # llama.cpp-style: generated token only
    status, rejected = completion(app(echo="reject"), prompt=text, max_tokens=1, logprobs=1, echo=True)
    assert status == 400 and rejected["error"]["param"] == "echo"


def test_logit_bias_moves_the_argmax() -> None:
    _, plain = completion(app(), prompt="the film was", max_tokens=1, logprobs=1)
    token = shared_scorer("tiny").tokenizer.encode(" great")[0]
    _, biased = completion(app(), prompt="the film was", max_tokens=1, logprobs=1, logit_bias={str(token): 100})
    assert plain["choices"][0]["text"] != " great" and biased["choices"][0]["text"] == " great"


def test_prompt_embeds_give_the_same_numbers_as_the_text() -> None:
    scorer = shared_scorer("tiny")
    ids = scorer.encode("the film was")
    _, as_text = completion(app(), prompt="the film was", max_tokens=1, logprobs=5)
    _, as_embeds = completion(app(), prompt_embeds=[encode_embeds(scorer.embed(ids))], max_tokens=1, logprobs=5)
    a, b = (r["choices"][0]["logprobs"]["top_logprobs"][0] for r in (as_text, as_embeds))
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)
    status, err = completion(app(), prompt_embeds=encode_embeds(torch.zeros(3, 7)), max_tokens=1)
    assert status == 400 and "hidden_size" in err["error"]["message"]
    status, err = completion(app(prompt_embeds=False), prompt_embeds=encode_embeds(scorer.embed(ids)), max_tokens=1)
    assert status == 400 and "--enable-prompt-embeds" in err["error"]["message"]


def test_chat_top_logprobs_need_logprobs_true() -> None:
    mock = app()
    body = {"model": "tiny", "messages": [{"role": "user", "content": "I love it"}], "max_tokens": 1, "temperature": 0}
    status, reply = post(mock, "/v1/chat/completions", {**body, "logprobs": True, "top_logprobs": 4})
    content = reply["choices"][0]["logprobs"]["content"][0]
    assert status == 200 and len(content["top_logprobs"]) == 4
    assert content["token"] == content["top_logprobs"][0]["token"] == reply["choices"][0]["message"]["content"]
    status, reply = post(mock, "/v1/chat/completions", {**body, "top_logprobs": 4})
    assert status == 400 and "logprobs" in reply["error"]["message"]


@pytest.mark.parametrize("body, status, param", [
    ({"model": "gpt-x", "prompt": "a"}, 404, "model"),
    ({"model": "tiny", "prompt": "a", "logprobs": 21}, 400, "logprobs"),
    ({"model": "tiny", "prompt": ["a", "b"]}, 400, "prompt"),  # with list_prompts=False
    ({"model": "tiny", "prompt": "a", "n": 0}, 400, "n"),
    ({"model": "tiny", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "tiny"}, 400, "prompt"),
    ({"model": "tiny", "prompt": "a", "logit_bias": {"5": 500}}, 400, "logit_bias"),
])
def test_bad_requests_get_openai_shaped_errors(body: dict, status: int, param: str) -> None:
    got, reply = post(app(list_prompts=False), "/v1/completions", body)
    assert got == status and reply["error"]["param"] == param and reply["error"]["message"]


def test_models_tokenize_stats_and_unknown_routes() -> None:
    mock = app(aliases=("alias",))
    reply = mock.handle("GET", "/v1/models", {}, b"")
    assert [m["id"] for m in json.loads(reply.body)["data"]] == ["tiny", "alias"]
    _, vllm = post(mock, "/tokenize", {"model": "tiny", "prompt": "the film"})
    _, llama = post(mock, "/tokenize", {"content": "the film"})
    assert vllm["tokens"] == llama["tokens"] == shared_scorer("tiny").encode("the film") and vllm["count"] > 0
    assert mock.handle("POST", "/v1/embeddings", {}, b"{}").status == 404
    assert mock.handle("POST", "/v1/completions", {}, b"{not json").status == 400
    stats = json.loads(mock.handle("GET", "/stats", {}, b"").body)
    assert stats["requests"] == 5 and stats["by_path"]["/tokenize"] == 2 and stats["by_status"]["404"] == 1
    mock.handle("POST", "/stats/reset", {}, b"")
    assert json.loads(mock.handle("GET", "/stats", {}, b"").body)["requests"] == 0


def test_the_key_check_answers_401_without_echoing_the_key() -> None:
    mock = app(api_key="sk-right-key-000")
    status, reply = post(mock, "/v1/completions", {"model": "tiny", "prompt": "a"})
    assert status == 401 and reply["error"]["code"] == "invalid_api_key" and "didn't provide" in reply["error"]["message"]
    status, reply = post(mock, "/v1/completions", {"model": "tiny", "prompt": "a"},
                         {"Authorization": "Bearer sk-wrong-key-123456"})
    assert status == 401 and "sk-wrong-key-123456" not in reply["error"]["message"]
    status, _ = post(mock, "/v1/completions", {"model": "tiny", "prompt": "a", "max_tokens": 1},
                     {"authorization": "Bearer sk-right-key-000"})
    assert status == 200


# ---------------------------------------------------------------------- faults


def test_fault_rules_parse_from_flags_and_json(tmp_path) -> None:
    assert FaultRule.parse("429:every=4,limit=2") == FaultRule(FaultKind.RATE_LIMIT, every=4, limit=2)
    assert FaultRule.parse("drop:prob=0.5") == FaultRule("drop", prob=0.5)
    for bad in ("418:every=2", "500:often=1", "500:prob=2"):
        with pytest.raises(ValueError):
            FaultRule.parse(bad)
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"rules": [{"kind": "503", "every": 3}], "latency_s": 0.01, "seed": 7}))
    assert FaultConfig.from_json(path) == FaultConfig((FaultRule("503", every=3),), seed=7, latency_s=0.01)
    path.write_text(json.dumps({"latency": 1}))
    with pytest.raises(ValueError, match="unknown"):
        FaultConfig.from_json(path)


def _decisions(config: FaultConfig, n: int = 40) -> list[FaultKind | None]:
    injector = FaultInjector(config)
    return [injector.decide().fault for _ in range(n)]


def test_faults_follow_every_limit_and_a_seeded_probability() -> None:
    config = FaultConfig(rules=(FaultRule("drop", every=3, limit=1), FaultRule("429", every=2),
                                FaultRule("500", prob=0.3)), seed=11)
    a = _decisions(config)
    assert a == _decisions(config)  # same seed, same order: same faults
    assert a[2] is FaultKind.DROP and a.count(FaultKind.DROP) == 1  # 3rd request, then never again (limit=1)
    assert all(a[i] is FaultKind.RATE_LIMIT for i in range(1, 40, 2))
    assert 0 < a.count(FaultKind.SERVER_ERROR) < 20
    assert _decisions(FaultConfig(config.rules, seed=12)) != a


def test_injected_status_faults_carry_retry_after() -> None:
    mock = app(faults=FaultConfig(rules=(FaultRule("429", every=1, limit=1), FaultRule("503", every=1, limit=1)),
                                  retry_after_s=2))
    first = mock.handle("POST", "/v1/completions", {}, b"{}")
    second = mock.handle("POST", "/v1/completions", {}, b"{}")
    assert (first.status, first.headers["Retry-After"]) == (429, "2")
    assert (second.status, second.headers["Retry-After"]) == (503, "2")
    assert json.loads(first.body)["error"]["code"] == "rate_limit_exceeded"


@pytest.fixture(scope="module")
def faulty_server():
    rules = (FaultRule("drop", every=2, limit=1), FaultRule("truncated", every=3, limit=1),
             FaultRule("malformed", every=4, limit=1))
    with MockServer(ServerConfig(model="tiny", port=0), FaultConfig(rules=rules),
                    scorer=shared_scorer("tiny")) as server:
        yield server


def test_socket_faults_break_the_connection_as_promised(faulty_server: MockServer) -> None:
    body = {"model": "tiny", "prompt": "the film", "max_tokens": 1, "temperature": 0}
    outcomes = []
    with httpx.Client(base_url=faulty_server.url, timeout=10) as client:
        for _ in range(5):
            try:
                reply = client.post("/completions", json=body)
                try:
                    reply.json()
                    outcomes.append("ok")
                except ValueError:
                    outcomes.append("bad-json")
            except httpx.RemoteProtocolError as err:
                outcomes.append("cut" if "body" in str(err) else "dropped")
    assert outcomes == ["ok", "dropped", "cut", "bad-json", "ok"]
    assert faulty_server.stats()["faults"] == {"drop": 1, "truncated": 1, "malformed": 1}


def test_requests_run_concurrently() -> None:
    """Four requests meet at a barrier inside the server: served one at a time, they could not (no clock involved;
    the added latency itself is measured by benchmarks/mock_limits.py)."""
    with MockServer(ServerConfig(model="tiny", port=0), scorer=shared_scorer("tiny")) as server:
        import concurrent.futures as cf

        meet, route = threading.Barrier(4, timeout=120), server.app._route

        def together(*args):
            meet.wait()
            return route(*args)

        server.app._route = together  # type: ignore[method-assign]
        with cf.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: httpx.get(server.url + "/models", timeout=180).status_code, range(4)))
        assert codes == [200] * 4 and server.stats()["max_in_flight"] == 4


def test_a_stopped_server_cuts_its_open_connections() -> None:
    server = MockServer(ServerConfig(model="tiny", port=0), scorer=shared_scorer("tiny")).start()
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert client.get("/models").status_code == 200  # the connection is now kept alive
        server.stop()
        with pytest.raises(httpx.TransportError):
            client.get("/models")


def test_the_command_line_builds_both_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOCK_KEY", "k-123")
    args = build_parser().parse_args(["--model", "smollm2", "--port", "0", "--api-key-env", "MOCK_KEY", "--no-list-prompts",
                                      "--echo", "ignore", "--fault", "429:every=5", "--fault", "drop:every=7,limit=1",
                                      "--latency-s", "0.05", "--seed", "3", "--max-logprobs", "5"])
    server, faults = configs(args)
    assert server == ServerConfig(model="smollm2", port=0, api_key="k-123", list_prompts=False, echo="ignore",
                                  max_logprobs=5)
    assert faults == FaultConfig((FaultRule("429", every=5), FaultRule("drop", every=7, limit=1)), seed=3, latency_s=0.05)
