"""Tokens read below the top-k list (`Backend.score_lifted`): locally off the whole distribution, remotely by
``logit_bias`` with an anchor token; both give the values a deeper list would have shown, and a server that cannot
lift says so in one line."""
from __future__ import annotations

import numpy as np
import pytest

from bbtune.backends.local import LocalBackend
from bbtune.core.topk import AnswerTopK
from bbtune.errors import CapabilityError
from bbtune.search.readouts.fitted import fit_run_readout
from mock_server import mock_transport
from tests.backends.test_remote_backend import EXAMPLES, FMT, make_app, make_backend, prompts

SHALLOW, DEEP = 5, 20


@pytest.fixture(scope="module")
def local() -> LocalBackend:
    return LocalBackend("tiny")


def below(shallow: list[AnswerTopK], deep: list[AnswerTopK]) -> tuple[str, ...]:
    """Tokens of the deep lists that no shallow list holds: what only a lift can read at the shallow depth."""
    listed = {t for top in shallow for row in top.tokens for t in row}
    return tuple(dict.fromkeys(t for top in deep for row in top.tokens for t in row if t not in listed))[:30]


def deep_values(deep: list[AnswerTopK], tokens: tuple[str, ...]) -> np.ndarray:
    """(P, B, T) the deep lists' values of `tokens` (NaN where a row's list lacks one)."""
    return np.array([[[dict(zip(t, v)).get(token, np.nan) for token in tokens] for t, v in zip(top.tokens, top.logprobs)]
                     for top in deep])


def test_local_lifted_values_are_the_deeper_lists_values(local: LocalBackend) -> None:
    _, shallow = local.score_topk(prompts(), EXAMPLES, FMT, SHALLOW)
    _, deep = local.score_topk(prompts(), EXAMPLES, FMT, DEEP)
    tokens = below(shallow, deep)
    assert len(tokens) >= 8
    got, want = local.score_lifted(prompts(), EXAMPLES, FMT, tokens, shallow), deep_values(deep, tokens)
    read = ~np.isnan(got)  # a text that is no single token (a byte piece) is not read, as an API could not lift it
    assert read.sum() >= 0.8 * got.size
    listed = ~np.isnan(want) & read
    np.testing.assert_allclose(got[listed], want[listed], atol=1e-5)
    last = np.array([[row[-1] for row in top.logprobs] for top in deep])[..., None]  # each row's deep floor
    assert (got <= np.broadcast_to(last, got.shape) + 1e-5)[read & np.isnan(want)].all()  # unlisted: below the list
    assert np.isnan(local.score_lifted(prompts(), EXAMPLES, FMT, ("no such token text",), shallow)).all()


@pytest.mark.parametrize("mode", ["top_logprobs", "chat"])
def test_remote_lifted_values_through_the_mock_are_what_a_deeper_list_shows(mode: str) -> None:
    """At the server's top-5, tokens only a top-20 lists are read by logit_bias and put back on the unbiased
    scale by the anchor: each equals its top-20 value (chat too, whose template changes the distribution); in
    top_logprobs mode they are also exactly what the local model lifts."""
    with make_backend(mock_transport(make_app()), mode=mode, top_k=DEEP, logit_bias="100") as backend:
        _, deep = backend.score_topk(prompts(), EXAMPLES, FMT, DEEP)
        _, shallow = backend.score_topk(prompts(), EXAMPLES, FMT, SHALLOW)
        tokens = below(shallow, deep)
        sent = backend.stats.requests
        got = backend.score_lifted(prompts(), EXAMPLES, FMT, tokens, shallow)
        lift_requests = backend.stats.requests - sent
    want = deep_values(deep, tokens)
    listed = ~np.isnan(want)
    read = listed & ~np.isnan(got)  # a text that is no single token (a byte piece) cannot be biased: NaN, unread
    assert read.sum() >= 8 and read.sum() >= 0.8 * listed.sum()
    np.testing.assert_allclose(got[read], want[read], atol=1e-4)
    if mode == "top_logprobs":
        np.testing.assert_allclose(got, LocalBackend("tiny").score_lifted(prompts(), EXAMPLES, FMT, tokens, shallow),
                                   atol=1e-4)  # NaN where the same: the same texts read
    rows = len(prompts()) * len(EXAMPLES)
    assert lift_requests >= -(-len(tokens) // (DEEP - 1))  # k - 1 tokens a request at most, beside the anchor
    assert lift_requests <= rows * -(-len(tokens) // (DEEP - 1))


@pytest.mark.parametrize("config, message", [({"mode": "echo"}, "cannot read tokens below"),
                                             ({"logit_bias": "off"}, "needs logit_bias")])
def test_a_backend_that_cannot_lift_refuses_in_one_line(config: dict, message: str) -> None:
    with make_backend(mock_transport(make_app()), top_k=20, **config) as backend:
        _, tops = backend.score_topk(prompts(), EXAMPLES, FMT, 5)
        with pytest.raises(CapabilityError, match=message) as refused:
            backend.score_lifted(prompts(), EXAMPLES, FMT, (" the",), tops)
    assert "\n" not in str(refused.value) and "readout_lift=0" in str(refused.value)


def test_a_run_readout_falls_back_to_the_list_alone_and_says_why() -> None:
    """readout auto on a server without logit_bias: the top-k readout is still chosen among, without lifted tokens,
    and the reason says why none were read."""
    pool = EXAMPLES * 4
    with make_backend(mock_transport(make_app()), top_k=20, logit_bias="off") as backend:
        fitted = fit_run_readout(backend, prompts()[0], pool, FMT, "auto", 5, seed=0, lift=10)
    assert fitted.lift == () and "no tokens read below the top-5" in fitted.choice.reason


def test_a_lifted_readout_reads_the_lifted_values(local: LocalBackend) -> None:
    """Lifted on the pool, the readout's columns hold the lifted tokens, and the same tokens are read again on
    the inputs it classifies (`RunReadout.answers`)."""
    pool = EXAMPLES * 4
    fitted = fit_run_readout(local, prompts()[0], pool, FMT, "logistic", 3, seed=0, lift=12)
    _, tops = local.score_topk(prompts()[:1], pool, FMT, 3)
    listed = {t for row in tops[0].tokens for t in row}  # only tokens the pool's lists named are candidates
    assert set(fitted.lift) == listed if len(listed) <= 12 else len(fitted.lift) == 12
    assert set(fitted.lift) <= set(fitted.readout.state()["tokens"])
    answers = fitted.answers(local, prompts()[0], EXAMPLES, FMT)
    assert answers.topk is not None and answers.topk.lifted == fitted.lift
    assert not np.isnan(np.array(answers.topk.lifted_logprobs)).any()


def test_label_words_of_several_tokens_are_scored_beside_the_lists_and_the_lift(local: LocalBackend) -> None:
    """A word of several tokens is scored outside the whole-vocabulary pass: its score is `score`'s, and the lift
    reads the same distribution as with one-token words."""
    from tests.backends.test_remote_topk import MULTI

    labels, shallow = local.score_topk(prompts(), EXAMPLES, MULTI, SHALLOW)
    np.testing.assert_allclose(labels, local.score(prompts(), EXAMPLES, MULTI), atol=1e-5)
    _, deep = local.score_topk(prompts(), EXAMPLES, MULTI, DEEP)
    tokens = below(shallow, deep)
    got, want = local.score_lifted(prompts(), EXAMPLES, MULTI, tokens, shallow), deep_values(deep, tokens)
    both = ~np.isnan(got) & ~np.isnan(want)
    assert both.sum() >= 8
    np.testing.assert_allclose(got[both], want[both], atol=1e-5)


def test_a_server_that_ignores_logit_bias_gives_no_lifted_value_rather_than_a_wrong_one() -> None:
    """The bias dropped on the way (a server that answers as if it had none): the lifted tokens stay below the
    list, so each is NaN (read as unlisted), never a value made up from the anchor."""
    import json

    import httpx

    inner = mock_transport(make_app())

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.read())
        body.pop("logit_bias", None)
        return inner.handle_request(httpx.Request(request.method, request.url, json=body))

    with make_backend(httpx.MockTransport(handle), top_k=DEEP, logit_bias="100") as backend:
        _, deep = backend.score_topk(prompts(), EXAMPLES, FMT, DEEP)
        _, shallow = backend.score_topk(prompts(), EXAMPLES, FMT, SHALLOW)
        tokens = below(shallow, deep)
        got = backend.score_lifted(prompts(), EXAMPLES, FMT, tokens, shallow)
    want = deep_values(deep, tokens)
    # only what the unbiased top-20 itself lists can come back, and then at its true value
    assert np.isnan(got[np.isnan(want)]).all()
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(got)], atol=1e-4)
