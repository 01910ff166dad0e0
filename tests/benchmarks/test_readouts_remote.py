"""benchmarks/readouts_remote.py: the template's readout read through an OpenAI-shaped server (the mock, top-20 at
most) is the readout computed locally from the same answers."""
from __future__ import annotations

import numpy as np
import pytest

import bbtune
from bbtune.backends.local import LocalBackend
from bbtune.core.prompts import MANUAL_PROMPT
from bbtune.search.evaluate import answers_on
from bbtune.search.readouts import choose_readout
from mock_server import MockServer, ServerConfig, shared_scorer
from tests.benchmarks.test_benchmarks import load_script


@pytest.mark.parametrize("shown", [0, 1])
def test_the_remote_readout_row_is_the_local_readout(monkeypatch, shown):
    """Also with demonstrations in the template: the API receives them as text and reads what the model reads."""
    script = load_script(monkeypatch, "readouts_remote")
    task = bbtune.load_task("demo", k=8, test_limit=24, demonstrations=shown)
    local = LocalBackend("tiny")
    pool = list(task.train) + list(task.dev)
    y_pool, y_test = task.format.label_ids(pool), task.format.label_ids(task.test)
    readout, choice = choose_readout(answers_on(local, MANUAL_PROMPT, pool, task.format, 20), np.asarray(y_pool))
    expected = 100 * float(np.mean(readout.predict(answers_on(local, MANUAL_PROMPT, list(task.test), task.format, 20))
                                   == np.asarray(y_test)))
    with MockServer(ServerConfig(model="tiny", port=0, max_logprobs=20), scorer=shared_scorer("tiny")) as server:
        row = script["remote_row"](task, "tiny", 0, server.url, "top_logprobs", local_acc=expected)
    assert row["readout"] == choice.kind and row["test_acc"] == expected
    assert row["method"] == "manual_readout_top20_top_logprobs_api" and row["test_n"] == 24
    assert 0 < row["requests_per_input"] <= 2  # lists of prompts: fewer than one request per input, plus lifts


def test_the_remote_lifted_readout_is_the_local_lifted_readout(monkeypatch):
    """With tokens read below the list (logit_bias and an anchor through the API; off the distribution locally)
    the remote readout reads the same lifted tokens and scores what the local one scores."""
    from bbtune.search.readouts.fitted import fit_run_readout

    script = load_script(monkeypatch, "readouts_remote")
    task = bbtune.load_task("demo", k=8, test_limit=24)
    local = LocalBackend("tiny")
    pool = list(task.train) + list(task.dev)
    fitted = fit_run_readout(local, MANUAL_PROMPT, pool, task.format, "logistic", 20, 0, lift=20)
    answers = fitted.answers(local, MANUAL_PROMPT, list(task.test), task.format)
    expected = 100 * float(np.mean(fitted.log_scores(answers).argmax(axis=1) == task.format.label_ids(task.test)))
    monkeypatch.setitem(script["remote_row"].__globals__, "AUTO", "logistic")  # the same single candidate
    with MockServer(ServerConfig(model="tiny", port=0, max_logprobs=20), scorer=shared_scorer("tiny")) as server:
        row = script["remote_row"](task, "tiny", 0, server.url, "top_logprobs", local_acc=expected, lift=20)
        plain = script["remote_row"](task, "tiny", 0, server.url, "top_logprobs", local_acc=None)
    assert row["lifted"] == len(fitted.lift) == 20 and row["test_acc"] == expected
    assert row["method"] == "manual_readout_top20_lift20_top_logprobs_api"
    # the lifts: a round of biased lists per 19 tokens that are one token each, per group of inputs sharing an anchor
    assert row["requests_per_input"] > plain["requests_per_input"]
