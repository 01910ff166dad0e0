"""--dry-run: the estimate is at least what a run through the mock server really spends, and close to it."""
from __future__ import annotations

from dataclasses import replace

import pytest

from bbtune.backends.factory import LocalConfig
from bbtune.backends.remote import RemoteConfig
from bbtune.app.cli import main
from bbtune.app.dryrun import PROBE_REQUESTS, dry_run_tune
from bbtune.runs.tuner import TuneConfig, run_tuner
from mock_server import MockServer, ServerConfig, shared_scorer

# readout off: the readout stage's top-k requests are priced as a bound (a second, biased request per row where a
# label might be missing), which a run whose labels all make the list does not send; these tests hold the search
HARD = TuneConfig(mode="hard", budget_calls=18, popsize=6, prompt_tokens=3, intrinsic_dim=20, eval_every=12, seed=5,
                  readout="off")


@pytest.fixture(scope="module")
def server():
    server = MockServer(ServerConfig(model="tiny", port=0, max_logprobs=400), scorer=shared_scorer("tiny")).start()
    yield server
    server.stop()


def _config(server: MockServer, **kw) -> RemoteConfig:
    return RemoteConfig(base_url=server.url, model="tiny", local_model="tiny", top_k=400, price_prompt_per_mtok=2.0,
                        price_completion_per_mtok=8.0, **kw)


MULTI = {"negative": " very bad", "positive": " very great"}  # several tokens each: chained or echoed


@pytest.mark.parametrize("mode,probe,words", [("top_logprobs", False, None), ("top_logprobs", True, None),
                                              ("echo", False, None), ("top_logprobs", False, MULTI),
                                              ("echo", False, MULTI)])
def test_estimate_bounds_a_real_run_and_is_close(server, tiny_task, mode, probe, words):
    if words:
        tiny_task = replace(tiny_task, format=replace(tiny_task.format, verbalizer=words))
    config = _config(server, mode=mode, probe=probe, batch_size=4)
    before = server.stats()
    with config.build() as backend:
        run_tuner(tiny_task, backend, HARD, progress=False)
        spent = backend.stats.as_dict()
    served = server.stats()  # what the server saw: requests and tokens, /models included
    assert served["prompt_tokens"] - before["prompt_tokens"] == spent["prompt_tokens"]
    est = dry_run_tune(tiny_task, HARD, "remote", LocalConfig(model="tiny"), config)
    assert served["requests"] - before["requests"] <= est.requests
    print(mode, probe, {k: spent[k] for k in ("requests", "prompt_tokens", "completion_tokens", "cost")}, est)
    # close: repeats the tuner skips are priced as sent (a few %), the probe as PROBE_REQUESTS large requests,
    # and every text carries the meter's PROMPT_TOKEN_MARGIN (tiny's texts are short, so that is ~40% here)
    assert spent["requests"] <= est.requests <= 1.1 * spent["requests"] + (PROBE_REQUESTS if probe else 0)
    assert spent["prompt_tokens"] <= est.prompt_tokens <= 1.6 * spent["prompt_tokens"]
    assert spent["completion_tokens"] <= est.completion_tokens <= 1.3 * spent["completion_tokens"]
    assert spent["cost"] <= est.cost <= 1.6 * spent["cost"]
    assert est.calls >= HARD.budget_calls


def test_cli_dry_run_sends_nothing(server, capsys, tmp_path):
    before = server.stats()["requests"]
    args = ["tune", "--dry-run", "--backend", "remote", "--remote-base-url", server.url, "--remote-local-model", "tiny",
            "--remote-price-prompt-per-mtok", "1", "--model", "tiny", "--k", "4", "--budget-calls", "20",
            "--popsize", "5", "--mode", "hard", "--run-dir", str(tmp_path / "never")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "HTTP requests" in out and "$0.0" in out
    assert not (tmp_path / "never").exists()
    assert server.stats()["requests"] == before


def test_compare_dry_run_counts_what_compare_calls(tmp_path, capsys):
    from bbtune.app.cli import CompareConfig, run_compare
    from bbtune.app.dryrun import dry_run_compare
    from bbtune.tasks import TaskConfig

    config = CompareConfig(methods=("manual", "in_context", "bbt_hard"), seeds=(3, 4), out=str(tmp_path / "r"))
    task, local, tune_cfg = TaskConfig(data="demo", k=4, test_limit=40), LocalConfig(model="tiny"), HARD
    est = dry_run_compare(config, task, local, tune_cfg)["methods"]
    assert not (tmp_path / "r").exists() and capsys.readouterr().out == ""  # no report, no fake accuracies shown
    report = run_compare(config, task, local, tune_cfg, progress=False)
    spent = sum(r.cost.calls for r in report.results)
    assert spent <= est.calls <= 1.1 * spent


@pytest.mark.parametrize("endpoint, samples", [("chat", 1), ("completions", 2)])
def test_text_mode_estimate_bounds_a_real_run(server, tiny_task, endpoint, samples):
    config = _config(server, mode="text", probe=False, answer_endpoint=endpoint, answer_samples=samples,
                     answer_temperature=1.0 if samples > 1 else 0.0, answer_tokens=3)
    with config.build() as backend:
        run_tuner(tiny_task, backend, HARD, progress=False)
        spent = backend.stats.as_dict()
    est = dry_run_tune(tiny_task, HARD, "remote", LocalConfig(model="tiny"), config)
    assert spent["answers"] > 0
    for key in ("requests", "prompt_tokens", "completion_tokens", "cost"):
        assert spent[key] <= getattr(est, key), key
    # n in one request where the server takes it: the estimate (a server refusing n) is n times the requests;
    # repeats the tuner skips are priced as sent
    assert est.requests <= 1.25 * samples * spent["requests"]


def test_the_estimate_bounds_a_run_whose_readout_reads_tokens_below_the_list(server, tiny_task):
    """A top-20 logistic readout with 38 tokens read below the list (two rounds of biased requests per input):
    the estimate still bounds what the run sends, and it prices those rounds (more than the list alone)."""
    tune = replace(HARD, readout="logistic", readout_topk=20, readout_lift=38)
    config = replace(_config(server, mode="top_logprobs", probe=False, batch_size=4, logit_bias="100"), top_k=20)
    before = server.stats()
    with config.build() as backend:
        result = run_tuner(tiny_task, backend, tune, progress=False)
    sent = server.stats()["requests"] - before["requests"]
    assert result.readout is not None and result.readout.lift  # the lift was read, so its requests were sent
    est = dry_run_tune(tiny_task, tune, "remote", LocalConfig(model="tiny"), config)
    without = dry_run_tune(tiny_task, replace(tune, readout_lift=0), "remote", LocalConfig(model="tiny"), config)
    assert sent <= est.requests and est.requests > without.requests
