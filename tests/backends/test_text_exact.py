"""Hard prompts are scored as their text: the local backend's score of a hard prompt equals what a server that
receives the rendered string (the mock, in echo mode: exact log-probs of the label word) returns for it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bbtune.backends.local import LocalBackend
from bbtune.backends.remote import RemoteBackend, RemoteConfig
from bbtune.search.discretize import Discretizer
from bbtune.core.prompts import HardPrompt
from bbtune.tasks import Example, Task, TaskFormat, Template
from mock_server import MockServer, ServerConfig, shared_scorer

TOL = 1e-4


def as_ids(backend: LocalBackend, prompts: list[HardPrompt], examples, fmt: TaskFormat) -> np.ndarray:
    """Scores of the prompts' token ids as fed in (what the backend did before it scored text)."""
    with torch.inference_mode():
        return backend.label_logprobs(backend.prompt_embeds(prompts), examples, fmt).numpy()


@pytest.fixture(scope="module")
def echo_server():
    server = MockServer(ServerConfig(model="tiny", port=0, max_logprobs=400), scorer=shared_scorer("tiny")).start()
    yield server
    server.stop()


@pytest.mark.parametrize("placement", ["suffix", "prefix"])
@pytest.mark.parametrize("vocab_filter", ["words", "printable"])
def test_every_hard_prompt_scores_locally_as_the_server_scores_its_text(echo_server: MockServer, tiny_task: Task,
                                                                        placement: str, vocab_filter: str) -> None:
    local = LocalBackend("tiny")
    fmt = TaskFormat(tiny_task.format.template, tiny_task.format.verbalizer, placement)
    examples = tiny_task.test + tiny_task.dev
    prompts = Discretizer(local.vocabulary(), vocab_filter=vocab_filter).random_prompts(n=40, tokens=5, seed=7)
    cfg = RemoteConfig(base_url=echo_server.url, model="tiny", local_model="tiny", mode="echo")
    with RemoteBackend(cfg) as remote:
        over_wire = remote.score(prompts, examples, fmt)
    here = local.score(prompts, examples, fmt)
    np.testing.assert_allclose(here, over_wire, atol=TOL)  # every prompt on every sentence, not most
    # the random prompts include ones whose ids are not what the server sees, so the test can fail
    stats = local.text_stats
    assert stats.repaired + stats.row_by_row > 0
    assert not np.allclose(as_ids(local, prompts, examples, fmt), over_wire, atol=TOL)


def test_a_prompt_that_does_not_round_trip_is_scored_as_its_retokenized_text(tiny_backend: LocalBackend) -> None:
    tok = tiny_backend.tokenizer
    fmt = TaskFormat(Template("{text} It was{label}"), {"negative": " terrible", "positive": " great"})
    examples = [Example("a great film", "positive"), Example("I hate it", "negative")]
    merged = tok.encode(" great", add_special_tokens=False)
    split = tuple(tok.encode(" gre", add_special_tokens=False) + tok.encode("at", add_special_tokens=False))
    assert len(merged) == 1 and len(split) > 1 and tok.decode(list(split)) == " great"  # its text encodes as 1 token
    before = tiny_backend.text_stats.repaired
    got = tiny_backend.score([HardPrompt(split, " great")], examples, fmt)
    want = as_ids(tiny_backend, [HardPrompt(tuple(merged), " great")], examples, fmt)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert tiny_backend.text_stats.repaired == before + 1


def test_a_prompt_that_merges_with_the_input_is_scored_row_by_row(tiny_backend: LocalBackend) -> None:
    tok = tiny_backend.tokenizer
    fmt = TaskFormat(Template("{text}{label}"), {"negative": " terrible", "positive": " great"})
    examples = [Example("I love it", "positive"), Example("a bad film", "negative")]
    prompt = HardPrompt(tuple(tok.encode("s", add_special_tokens=False)), "s")  # "its" but "films": example-dependent
    before = tiny_backend.text_stats.row_by_row
    got = tiny_backend.score([prompt], examples, fmt)[0]
    for row, ex in zip(got, examples):
        ids = torch.tensor([tok.encode(ex.text + "s", add_special_tokens=False)])
        with torch.inference_mode():
            logp = torch.log_softmax(tiny_backend.model(ids).logits[0, -1].float(), -1)
        label_ids = [tok.encode(w, add_special_tokens=False)[0] for w in fmt.verbalizer.values()]
        np.testing.assert_allclose(row, logp[label_ids].numpy(), atol=1e-5)
    assert tiny_backend.text_stats.row_by_row == before + 1


def test_prompts_that_merge_with_the_input_reuse_its_keys_and_values(tiny_backend: LocalBackend) -> None:
    """The row-by-row path runs an example's input once; later merging prompts run only their own tokens, and
    score as the whole string does."""
    tok = tiny_backend.tokenizer
    fmt = TaskFormat(Template("{text}{label}"), {"negative": " terrible", "positive": " great"})
    examples = [Example("I watched it twice and I would gladly watch it", "positive"),
                Example("the plot made no sense at all in this dull film", "negative")]  # "its", "films"
    first, second = (HardPrompt(tuple(tok.encode(t, add_special_tokens=False)), t) for t in ("s it was", "s was"))
    tiny_backend.score([first], examples, fmt)
    rows_before, tokens_before = tiny_backend.text_stats.row_by_row, tiny_backend.stats.tokens_processed
    got = tiny_backend.score([second], examples, fmt)[0]
    assert tiny_backend.text_stats.row_by_row == rows_before + 1  # it merged, so it took the row path
    whole = [tok.encode(ex.text + second.text, add_special_tokens=False) for ex in examples]
    ran = tiny_backend.stats.tokens_processed - tokens_before
    assert ran <= len(examples) * 6 < sum(map(len, whole))  # the tails (merged token + prompt), not the inputs
    label_ids = [tok.encode(w, add_special_tokens=False)[0] for w in fmt.verbalizer.values()]
    for row, ids in zip(got, whole):
        with torch.inference_mode():
            logp = torch.log_softmax(tiny_backend.model(torch.tensor([ids])).logits[0, -1].float(), -1)
        np.testing.assert_allclose(row, logp[label_ids].numpy(), atol=1e-5)
