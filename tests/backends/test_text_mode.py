"""Text answers (`Backend.generate`) and ``--remote-mode text``: servers that return no log-probs. Against the
mock's endpoints in-process (httpx.MockTransport), with ``logprobs=False`` (``--no-logprobs``), and end to end
through the CLI and a mock server in a thread."""
from __future__ import annotations

import csv
import json
from typing import Any, Callable

import httpx
import numpy as np
import pytest
import torch

from bbtune.app.cli import main
from bbtune.backends.accounting import Ledger
from bbtune.backends.local import LocalBackend
from bbtune.backends.remote import RemoteBackend, RemoteConfig
from bbtune.core.prompts import SoftPrompt
from bbtune.errors import BudgetExceeded, CapabilityError, ConfigError
from bbtune.runs.tuner import TuneConfig, run_tuner
from bbtune.tasks import Task
from mock_server import FaultConfig, MockServer, ServerConfig, mock_transport, shared_scorer
from mock_server.scorer import Scorer

from tests.backends.test_remote_backend import EXAMPLES, FMT, URL, make_app, prompts, Sleeps

TEXT_ONLY = {"logprobs": False}


def text_backend(transport: httpx.AsyncBaseTransport, **config: Any) -> RemoteBackend:
    cfg = RemoteConfig(**{"base_url": URL, "model": "tiny", "local_model": "tiny", "mode": "text", **config})
    return RemoteBackend(cfg, transport=transport, sleep=Sleeps())


def rewriting(app: Any, rewrite: Callable[[dict, dict], None]) -> httpx.MockTransport:
    """The mock, with each reply's JSON changed by `rewrite(request body, reply)` (a server's quirk)."""
    inner = mock_transport(app)

    def handle(request: httpx.Request) -> httpx.Response:
        reply = inner.handle_request(request)
        body = json.loads(reply.read())
        if reply.status_code == 200:
            rewrite(json.loads(request.content or b"{}"), body)
        return httpx.Response(reply.status_code, json=body)

    return httpx.MockTransport(handle)


def answering(text: str) -> Callable[[dict, dict], None]:
    def rewrite(request: dict, reply: dict) -> None:
        for choice in reply.get("choices", []):  # not /models
            if "message" in choice:
                choice["message"]["content"] = text
            else:
                choice["text"] = text
    return rewrite


# ---------------------------------------------------------------------- generate


@pytest.fixture(scope="module")
def local() -> LocalBackend:
    return LocalBackend("tiny")


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_greedy_answers_over_the_wire_are_the_local_models(endpoint: str, local: LocalBackend) -> None:
    mine = local.generate(prompts(), EXAMPLES, FMT, max_tokens=4)
    assert [len(row) for row in mine] == [len(EXAMPLES)] * len(prompts()) and all(len(a) == 1 for r in mine for a in r)
    with text_backend(mock_transport(make_app(**TEXT_ONLY)), answer_endpoint=endpoint, chat_instruction="") as backend:
        over_wire = backend.generate(prompts(), EXAMPLES, FMT, max_tokens=4)
    if endpoint == "completions":
        assert over_wire == mine
    else:  # the tiny tokenizer has no chat template: the mock joins the messages, the same text
        assert over_wire == mine


def test_n_sampled_answers_differ_and_repeat_with_the_same_request(local: LocalBackend) -> None:
    app = make_app(**TEXT_ONLY)
    with text_backend(mock_transport(app), answer_endpoint="completions") as backend:
        first = backend.generate(prompts()[:1], EXAMPLES[:1], FMT, max_tokens=6, n=3, temperature=1.0)[0][0]
        again = backend.generate(prompts()[:1], EXAMPLES[:1], FMT, max_tokens=6, n=3, temperature=1.0)[0][0]
        assert backend.stats.requests == 2  # n in one request
    assert len(set(first)) == 3 and first == again
    sampled = local.generate(prompts()[:1], EXAMPLES[:1], FMT, max_tokens=6, n=3, temperature=1.0)[0][0]
    assert len(set(sampled)) == 3


def test_answers_are_cut_at_the_stop_string_even_when_the_server_ignores_stop() -> None:
    transport = rewriting(make_app(**TEXT_ONLY), answering("great\nand then terrible"))
    with text_backend(transport, answer_endpoint="completions") as backend:
        assert backend.generate(prompts()[:1], EXAMPLES[:1], FMT)[0][0] == ["great"]


def test_soft_prompts_generate_locally_and_are_refused_clearly_in_text_mode(local: LocalBackend, tiny_task: Task) -> None:
    soft = SoftPrompt(local.prompt_embeds(prompts()[:1])[0].detach())
    assert len(local.generate([soft], EXAMPLES, FMT, max_tokens=2)[0]) == len(EXAMPLES)
    with text_backend(mock_transport(make_app(**TEXT_ONLY))) as backend:
        assert not backend.capabilities.soft and not backend.capabilities.logprobs and backend.capabilities.generate
        with pytest.raises(CapabilityError, match="soft prompt is not text.*mode=hard"):
            backend.generate([soft], EXAMPLES, FMT)
        with pytest.raises(CapabilityError, match="answers text only.*mode=hard"):
            run_tuner(tiny_task, backend, TuneConfig(mode="soft", budget_calls=4, popsize=3), progress=False)


@pytest.mark.parametrize("config, message", [
    ({"answer_samples": 3}, "answer_temperature must be > 0 when answer_samples > 1"),
    ({"answer_endpoint": "responses"}, "answer_endpoint must be 'chat' or 'completions'"),
    ({"answer_smoothing": 0}, "answer_smoothing must be > 0"),
    ({"answer_synonyms": ("pos:good",)}, "LABEL=word"),
])
def test_text_mode_settings_are_checked_by_name(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RemoteConfig(mode="text", **config)


# ---------------------------------------------------------------------- the probe


@pytest.mark.parametrize("mode", ["top_logprobs", "chat", "echo"])
def test_the_probe_names_text_mode_on_a_server_without_logprobs(mode: str) -> None:
    cfg = RemoteConfig(base_url=URL, model="tiny", local_model="tiny", mode=mode, top_k=20)
    with RemoteBackend(cfg, transport=mock_transport(make_app(**TEXT_ONLY))) as backend, \
            pytest.raises(CapabilityError, match="no log-probs at all.*RemoteConfig.mode=text"):
        backend.score(prompts(), EXAMPLES, FMT)


def test_the_probe_names_text_mode_when_the_server_refuses_logprobs() -> None:
    inner = mock_transport(make_app())

    def handle(request: httpx.Request) -> httpx.Response:
        if "logprobs" in json.loads(request.content or b"{}"):
            return httpx.Response(400, json={"error": {"message": "logprobs is not supported with this model"}})
        return inner.handle_request(request)

    cfg = RemoteConfig(base_url=URL, model="tiny", local_model="tiny", mode="chat", top_k=20)
    with RemoteBackend(cfg, transport=httpx.MockTransport(handle)) as backend, \
            pytest.raises(CapabilityError, match="RemoteConfig.mode=text"):
        backend.score(prompts(), EXAMPLES, FMT)
    with text_backend(httpx.MockTransport(handle), answer_synonyms=("pos=was",)) as backend:
        assert backend.score(prompts(), EXAMPLES, FMT).shape == (3, 3, 2)  # text mode asks no logprobs


def test_the_text_probe_checks_answers_repeat_and_lists_and_n() -> None:
    with text_backend(mock_transport(make_app(**TEXT_ONLY)), answer_endpoint="completions", answer_samples=2,
                      answer_temperature=1.0, answer_synonyms=("pos=was",), max_unparsed=1.0) as backend:
        backend.score(prompts(), EXAMPLES, FMT)
        report = backend.probe_report()
    assert report is not None and report.mode == "text"
    for check in ("answers text", "temperature 0 answers repeat", "lists match single prompts",
                  "n answers in one request"):
        assert check in report.checks
    assert report.answers_per_request == 2 and report.sample_unparsed_rate is not None


def test_a_server_that_samples_at_temperature_0_gets_a_note_not_a_refusal() -> None:
    calls = iter(range(10**6))
    transport = rewriting(make_app(**TEXT_ONLY), lambda req, rep: answering(f"great {next(calls)}")(req, rep))
    with text_backend(transport) as backend:
        backend.score(prompts(), EXAMPLES, FMT)
        report = backend.probe_report()
    assert report is not None and "temperature 0 answers repeat" not in report.checks
    assert any("different answers" in note and "RemoteConfig.answer_samples" in note for note in report.notes)


def test_a_server_refusing_n_gets_one_request_per_answer_with_distinct_seeds() -> None:
    inner = mock_transport(make_app(**TEXT_ONLY))

    def handle(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content or b"{}").get("n", 1) > 1:
            return httpx.Response(400, json={"error": {"message": "n must be 1"}})
        return inner.handle_request(request)

    with text_backend(httpx.MockTransport(handle), answer_samples=3, answer_temperature=1.0,
                      answer_synonyms=("pos=was",), max_unparsed=1.0) as backend:
        backend.check()
        assert backend.answers_per_request_ == 1 and any("n answers in one request" in n for n in backend.probe_.notes)
        before = backend.stats.requests
        answers = backend.generate(prompts()[:1], EXAMPLES[:1], FMT, n=3, temperature=1.0)[0][0]
        assert backend.stats.requests - before == 3 and len(set(answers)) == 3


# ---------------------------------------------------------------------- scores, budgets, garbage


def test_text_scores_follow_the_answers() -> None:
    transport = rewriting(make_app(**TEXT_ONLY), answering("Great!"))
    with text_backend(transport) as backend:
        scores = backend.score(prompts(), EXAMPLES, FMT)
    a = RemoteConfig.answer_smoothing
    np.testing.assert_allclose(np.exp(scores), np.broadcast_to([a / (1 + 2 * a), (1 + a) / (1 + 2 * a)], scores.shape))
    assert backend.stats.answers == scores.shape[0] * scores.shape[1] and backend.stats.answers_unparsed == 0


def test_a_server_answering_garbage_gives_unparsed_counts_not_a_crash() -> None:
    transport = rewriting(make_app(**TEXT_ONLY), answering("\u2603 lorem ipsum {}"))
    with text_backend(transport) as backend, pytest.raises(CapabilityError, match="name no label.*lorem ipsum"
                                                                                  ".*RemoteConfig.answer_synonyms"):
        backend.score(prompts(), EXAMPLES, FMT)  # the probe refuses a run that could learn nothing
    with text_backend(transport, max_unparsed=1.0) as backend:
        scores = backend.score(prompts(), EXAMPLES, FMT)
        stats = backend.stats
    assert np.isnan(scores).all() and stats.answers == stats.answers_unparsed == 9 and stats.unparsed_rate == 1.0
    assert stats.labels_missing == scores.size  # reported like missing labels too


def test_text_requests_count_against_the_budget_and_are_booked(tmp_path) -> None:
    app = make_app(**TEXT_ONLY)
    with text_backend(mock_transport(app), answer_endpoint="chat", answer_samples=2, answer_temperature=1.0,
                      answer_synonyms=("pos=was",), max_unparsed=1.0, probe=False, max_requests=8) as backend:
        backend.keep_books(tmp_path / "ledger.jsonl", tmp_path / "replies", resume=False)
        backend.score(prompts()[:1], EXAMPLES, FMT)  # chat: one request per input, n=2 in it
        assert backend.stats.requests == len(EXAMPLES) == app.stats()["requests"]
        assert backend.stats.completion_tokens > 0
        with pytest.raises(BudgetExceeded, match="RemoteConfig.max_requests 8"):
            backend.score(prompts(), EXAMPLES, FMT)  # 6 more requests (3 answers come from the run's replies)
        assert backend.stats.requests == 8
    assert Ledger(tmp_path / "ledger.jsonl").spent().requests == backend.stats.requests


# ---------------------------------------------------------------------- end to end: the CLI


class PromptSensitive(Scorer):
    """The tiny model, whose greedy answer follows its input, so a prompt changes it: ' positive' when most of the
    input's tokens have even ids, else ' negative' (the random tiny model says '::::' whatever it reads)."""

    def __init__(self) -> None:
        tiny = shared_scorer("tiny")
        super().__init__(loaded=(tiny.model, tiny.tokenizer))
        self.words = [self.tokenizer.encode(w, add_special_tokens=False)[0] for w in (" negative", " positive")]

    def logprobs(self, embeds: torch.Tensor, bias: dict[int, float] | None = None,
                 every_position: bool = True) -> torch.Tensor:
        out = super().logprobs(embeds, bias, every_position).clone()
        table = self.model.get_input_embeddings().weight.float()
        ids = torch.cdist(embeds.float(), table).argmin(dim=1)
        even = float((ids % 2 == 0).float().mean())
        out[-1, self.words[int(even > 0.5)]] += 100.0  # then renormalised
        out[-1] = torch.log_softmax(out[-1], dim=-1)
        return out


def text_run(url: str, run_dir, *extra: str) -> list[str]:
    return ["tune", "--data", "demo", "--k", "4", "--test-limit", "16", "--model", "tiny", "--prompt-tokens", "3",
            "--intrinsic-dim", "20", "--popsize", "4", "--budget-calls", "12", "--mode", "hard", "--no-progress",
            "--backend", "remote", "--remote-base-url", url, "--remote-model", "tiny", "--remote-local-model", "tiny",
            "--remote-mode", "text", "--remote-answer-endpoint", "completions", "--remote-answer-tokens", "2",
            "--run-dir", str(run_dir), *extra]


def text_server() -> MockServer:
    return MockServer(ServerConfig(model="tiny", port=0, logprobs=False), FaultConfig(), scorer=PromptSensitive())


def test_text_mode_tunes_a_hard_prompt_end_to_end_through_a_text_only_server(tmp_path) -> None:
    run_dir = tmp_path / "run"
    with text_server() as server:
        code = main(text_run(server.url, run_dir))
        served = server.stats()
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stats = metrics["backend_stats"]
    assert metrics["probe"]["mode"] == "text" and "answers text" in metrics["probe"]["checks"]
    assert stats["answers"] > 0 and stats["answers_unparsed"] == 0 and stats["completion_tokens"] > 0
    assert stats["requests"] == served["requests"] == Ledger(run_dir / "ledger.jsonl").spent().requests
    losses = {row["train_loss"] for row in csv.DictReader((run_dir / "curve.csv").open())}
    assert len(losses) > 1  # the answers, hence the loss, moved with the prompt
    assert metrics["calls"] == 12 and (run_dir / "hard_prompt.json").exists()


def test_a_text_mode_run_stopped_by_its_request_limit_resumes_to_the_same_result(tmp_path) -> None:
    with text_server() as server:
        assert main(text_run(server.url, tmp_path / "whole")) == 0
        assert main(text_run(server.url, tmp_path / "run", "--remote-max-requests", "12")) == 3
        assert main(["tune", "--resume", str(tmp_path / "run"), "--no-progress", "--remote-max-requests", "1000"]) == 0
    whole, resumed = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "run"))
    assert resumed["test_acc"] == whole["test_acc"] and resumed["calls"] == whole["calls"]
    assert resumed["backend_stats"]["requests"] == Ledger(tmp_path / "run" / "ledger.jsonl").spent().requests > 12


def test_the_mock_answers_text_only_with_no_logprobs() -> None:
    from mock_server.__main__ import build_parser

    args = build_parser().parse_args(["--no-logprobs"])
    app = make_app(logprobs=args.logprobs)
    for route, body in (("/v1/completions", {"prompt": "a film", "logprobs": 5}),
                        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a film"}],
                                                  "logprobs": True, "top_logprobs": 5})):
        reply = json.loads(app.handle("POST", route, {}, json.dumps({"model": "tiny", "max_tokens": 2, **body}).encode()).body)
        choice = reply["choices"][0]
        assert choice["logprobs"] is None and isinstance(choice.get("text", choice.get("message", {}).get("content")), str)

