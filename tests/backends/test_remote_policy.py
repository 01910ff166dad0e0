"""Pure pieces of the remote backend: retry policy, reply parsing, the prompt_embeds codec, cache keys, budget."""
from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from bbtune.backends import retry, wire
from bbtune.backends.accounting import Limits, SpendingLimiter, Prices, RemoteStats
from bbtune.backends.cache import ResponseCache, request_key
from bbtune.backends.http import InvalidJSONError
from bbtune.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    BudgetExceeded,
    MalformedResponseError,
)

# ---------------------------------------------------------------------- retry policy


@pytest.mark.parametrize("status, retried", [(400, False), (401, False), (403, False), (404, False), (408, True),
                                             (409, True), (422, False), (429, True), (500, True), (502, True),
                                             (503, True), (504, True)])
def test_should_retry_by_status(status: int, retried: bool) -> None:
    assert retry.should_retry(APIStatusError("x", status_code=status)) is retried


@pytest.mark.parametrize("exc, retried", [(APIConnectionError("dropped"), True), (APITimeoutError("slow"), True),
                                          (InvalidJSONError("cut off"), True), (MalformedResponseError("shape"), False),
                                          (ValueError("bug"), False)])
def test_should_retry_by_kind(exc: Exception, retried: bool) -> None:
    assert retry.should_retry(exc) is retried


@pytest.mark.parametrize("headers, expected", [
    ({"Retry-After": "2"}, 2.0), ({"retry-after": "0.5"}, 0.5), ({"retry-after-ms": "1500"}, 1.5),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10.0), ({"Retry-After": "soon"}, None), ({}, None),
])
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    now = lambda: 1445412480.0  # 07:28:00 GMT that day  # noqa: E731
    got = retry.retry_after_s(headers, now=now)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_backoff_doubles_to_cap_and_jitter_only_shortens() -> None:
    assert [retry.backoff_s(n, rand=lambda: 0.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert retry.backoff_s(2, rand=lambda: 1.0) == pytest.approx(0.75)


def test_wait_honours_retry_after_with_a_cap() -> None:
    err = APIStatusError("x", status_code=429)
    err.retry_after = 3.0  # type: ignore[attr-defined]
    assert retry.wait_s(err, 1) == 3.0
    err.retry_after = 3600.0  # type: ignore[attr-defined]
    assert retry.wait_s(err, 1) == retry.MAX_RETRY_AFTER_S
    assert retry.wait_s(APIStatusError("x", status_code=500), 2, rand=lambda: 0.0) == 1.0


# ---------------------------------------------------------------------- parsing replies


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from mock_server import shared_scorer

    return shared_scorer("tiny").tokenizer

LABELS = wire.LabelKeys.build([" good", " bad"], [7, 9], [" good", " bad"])


def _completion(top: dict, index: int = 0) -> dict:
    return {"index": index, "text": "x", "logprobs": {"tokens": ["x"], "token_logprobs": [-0.1], "top_logprobs": [top]}}


def test_a_label_missing_from_the_list_is_nan_never_a_bound() -> None:
    scores, missing = wire.label_scores({" the": -0.5, " good": -1.0, " a": -2.0}, LABELS)
    assert missing == 1
    np.testing.assert_allclose(scores, [-1.0, np.nan])  # ' bad' is not listed: unknown, not the k-th value


def test_chat_labels_match_every_spelling_and_add_up_their_probabilities() -> None:
    labels = wire.LabelKeys.chat([" positive", " negative"], None)
    top = {"Positive": np.log(0.3), " positive": np.log(0.1), "NEGATIVE": np.log(0.05), "I": np.log(0.2)}
    scores, missing = wire.label_scores(top, labels)
    assert missing == 0
    np.testing.assert_allclose(np.exp(scores), [0.4, 0.05])  # logsumexp of the variants found


def test_chat_variants_keep_only_single_tokens_and_give_their_ids_for_logit_bias(tiny_tokenizer) -> None:
    labels = wire.LabelKeys.chat([" great", " terrible"], tiny_tokenizer)
    for variants in labels.variants:
        for text, id_key in variants:
            assert tiny_tokenizer.encode(text, add_special_tokens=False) == [int(id_key.split(":")[1])]
    assert len(labels.token_ids) == sum(map(len, labels.variants)) >= 2


def test_logit_bias_goes_on_the_wire_as_string_ids() -> None:
    assert wire.top_logprob_body("m", ["x"], 5, {7: 100.0})["logit_bias"] == {"7": 100.0}
    assert "logit_bias" not in wire.chat_body("m", "x", 5, None)


def test_label_scores_accept_vllm_token_id_spelling() -> None:
    scores, missing = wire.label_scores({"token_id:9": -0.3, "token_id:7": -1.5}, LABELS)
    assert missing == 0 and scores.tolist() == [-1.5, -0.3]


def test_the_next_token_is_the_first_position_even_if_more_were_generated() -> None:
    choice = {"index": 0, "logprobs": {"tokens": ["x", "y"], "token_logprobs": [-0.1, -0.2],
                                       "top_logprobs": [{" good": -0.1}, {" bad": -0.2}]}}
    assert wire.completion_top(choice) == {" good": -0.1}


def test_choices_come_back_in_prompt_order_by_index() -> None:
    reply = {"choices": [_completion({"b": -1.0}, 1), _completion({"a": -1.0}, 0)]}
    assert [wire.completion_top(c) for c in wire.choices(reply, 2)] == [{"a": -1.0}, {"b": -1.0}]


@pytest.mark.parametrize("reply, what", [
    ({}, "no 'choices'"),
    ({"choices": [_completion({"a": -1.0})]}, "expected choices 0..1"),
    ({"choices": [_completion({"a": -1.0}), _completion({"a": -1.0}, 0)]}, "expected choices 0..1"),
])
def test_choices_with_missing_entries_are_errors(reply: dict, what: str) -> None:
    with pytest.raises(MalformedResponseError, match=what):
        wire.choices(reply, 2)


@pytest.mark.parametrize("choice, what", [
    ({"index": 0, "logprobs": None}, "no top_logprobs"),
    ({"index": 0, "logprobs": {"top_logprobs": []}}, "no top_logprobs"),
    (_completion({"a": 0.7}), "not a log-probability"),
    (_completion({"a": float("nan")}), "not a log-probability"),
    (_completion({"a": "high"}), "not a number"),
])
def test_bad_top_logprobs_are_errors_never_zero(choice: dict, what: str) -> None:
    with pytest.raises(MalformedResponseError, match=what):
        wire.completion_top(choice)


def test_chat_top_reads_the_first_token_list_and_rejects_an_empty_one() -> None:
    choice = {"index": 0, "logprobs": {"content": [{"token": " good", "logprob": -0.2,
                                                    "top_logprobs": [{"token": " good", "logprob": -0.2},
                                                                     {"token": " bad", "logprob": -1.7}]}]}}
    assert wire.chat_top(choice) == {" good": -0.2, " bad": -1.7}
    with pytest.raises(MalformedResponseError, match="no logprobs.content"):
        wire.chat_top({"index": 0, "logprobs": None})


def _echo(tokens: list[str], values: list, offsets: list[int] | None = None) -> dict:
    lp = {"tokens": tokens, "token_logprobs": values, "top_logprobs": [None] * len(tokens)}
    if offsets is not None:
        lp["text_offset"] = offsets
    return {"index": 0, "logprobs": lp}


def test_echo_reads_the_label_tokens_logprob() -> None:
    choice = _echo(["It", " was", " good", "!"], [None, -2.0, -0.7, -3.0], [0, 2, 6, 11])
    assert wire.echo_label_logprob(choice, "It was good", " good") == -0.7
    no_offsets = _echo(["It", " was", " good", "!"], [None, -2.0, -0.7, -3.0])
    assert wire.echo_label_logprob(no_offsets, "It was good", " good") == -0.7


def test_echo_refuses_a_label_merged_with_the_text_and_an_ignored_echo() -> None:
    merged = _echo(["It", " wasgood", "!"], [None, -2.0, -1.0], [0, 2, 10])
    with pytest.raises(MalformedResponseError, match="tokenized the word together"):
        wire.echo_label_logprob(merged, "It wasgood", "good")
    ignored = _echo(["!"], [-1.0], [11])  # llama.cpp: only the generated token
    with pytest.raises(MalformedResponseError, match="does not cover the prompt"):
        wire.echo_label_logprob(ignored, "It was good", " good")


def test_embeds_codec_round_trips_and_refuses_bad_shapes() -> None:
    x = torch.randn(7, 16)
    assert torch.equal(wire.decode_embeds(wire.encode_embeds(x)), x)
    assert wire.decode_embeds(wire.encode_embeds(x[None])).shape == (7, 16)
    with pytest.raises(ValueError, match="seq_len, hidden"):
        wire.decode_embeds(wire.encode_embeds(torch.randn(2, 3, 4)))
    with pytest.raises(ValueError, match="floating-point"):
        wire.decode_embeds(wire.encode_embeds(torch.ones(3, 3, dtype=torch.long)))


# ---------------------------------------------------------------------- cache keys and files


def test_cache_key_is_exact_and_ignores_credentials() -> None:
    body = {"model": "m", "prompt": "a", "logprobs": 5}
    key = request_key("http://h/v1", "POST /completions", body, {"User-Agent": "bbtune", "Authorization": "Bearer s1"})
    assert key == request_key("http://h/v1", "POST /completions", dict(reversed(body.items())),
                              {"user-agent": "bbtune", "authorization": "Bearer other", "X-Api-Key": "k"})
    assert key != request_key("http://h/v1", "POST /completions", {**body, "logprobs": 4}, {"User-Agent": "bbtune"})
    assert key != request_key("http://h/v1", "POST /completions", body, {"User-Agent": "bbtune", "X-Org": "a"})
    assert key != request_key("http://h/v1", "POST /completions", body, {"User-Agent": "bbtune"}, salt="repeat")


def test_cache_files_are_written_whole_and_unreadable_ones_are_misses(tmp_path) -> None:
    cache = ResponseCache(tmp_path)
    cache.put("ab12", {"choices": [1]})
    assert cache.get("ab12") == {"choices": [1]} and cache.get("cd34") is None and len(cache) == 1
    assert not list(tmp_path.glob("*/.tmp-*"))
    (tmp_path / "ab" / "ab12.json").write_text('{"choi')
    assert cache.get("ab12") is None


# ---------------------------------------------------------------------- budget meter


def test_meter_reserves_before_sending_so_in_flight_requests_count() -> None:
    stats = RemoteStats()
    meter = SpendingLimiter(Limits(max_requests=2), Prices(), stats)
    a, b = meter.reserve(10, 1), meter.reserve(10, 1)
    with pytest.raises(BudgetExceeded, match="RemoteConfig.max_requests 2"):
        meter.reserve(10, 1)
    meter.settle(a, {"prompt_tokens": 8, "completion_tokens": 1}, billed=True)
    meter.settle(b, None, billed=False)
    assert (stats.requests, stats.prompt_tokens, stats.completion_tokens) == (2, 8, 1)


def test_meter_token_and_cost_limits_use_usage_and_prices() -> None:
    stats = RemoteStats()
    meter = SpendingLimiter(Limits(max_tokens=100, max_cost=0.4), Prices(prompt_per_mtok=5000, completion_per_mtok=10000), stats)
    held = meter.reserve(60, 1)
    with pytest.raises(BudgetExceeded, match="max.tokens.100"):
        meter.reserve(40, 1)  # 61 in flight + 41 > 100
    meter.settle(held, {"prompt_tokens": 50, "completion_tokens": 1}, billed=True)
    assert stats.cost == pytest.approx((50 * 5000 + 10000) / 1e6)  # booked from usage, not the estimate
    with pytest.raises(BudgetExceeded, match="max.cost"):
        meter.reserve(45, 1)  # 97 tokens fit, but $0.26 + $0.235 > $0.40
    assert stats.requests == 1


def test_stats_are_json_ready_and_report_the_missing_rate() -> None:
    import json

    stats = RemoteStats()
    stats.count_labels(8, 2)
    assert stats.missing_rate == 0.25
    assert json.loads(json.dumps(stats.as_dict()))["missing_rate"] == 0.25


def test_credentials_in_the_base_url_are_reported_as_such_and_never_shown() -> None:
    from bbtune.backends.http import KeyInfo, status_error

    request = httpx.Request("POST", "http://ann:s3cret-pw@h:1/v1/completions")
    reply = httpx.Response(401, json={"error": {"message": "bad credentials"}}, request=request)
    message = str(status_error(reply, "http://h:1/v1", "/completions", "m", KeyInfo("BBTUNE_API_KEY", "sk-0123456789ab")))
    assert "credentials written in the base URL" in message and "RemoteConfig.base_url" in message
    assert "was rejected" not in message and "s3cret-pw" not in message and "ann" not in message


def test_the_backend_seam_lets_an_honest_missing_through_but_not_an_infinity() -> None:
    from bbtune.backends.base import check_scores
    from bbtune.errors import CapabilityError

    scores = np.array([[[-1.0, np.nan]]])
    assert check_scores(scores, 1, 1, 2, "x") is scores
    with pytest.raises(CapabilityError, match="infinite"):
        check_scores(np.array([[[-1.0, -np.inf]]]), 1, 1, 2, "x")
