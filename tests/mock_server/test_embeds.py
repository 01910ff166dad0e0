"""The mock reads `prompt_embeds` as vLLM documents them (`mock_server.embeds`), not through bbtune's codec: a
tensor saved the way vLLM's own examples save it gives the same scores as the same text, and what vLLM's
server refuses the mock refuses."""
from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
import torch

from bbtune.backends.wire import decode_embeds, encode_embeds
from mock_server import MockApp, ServerConfig, shared_scorer
from mock_server.embeds import EmbedsError, load_prompt_embeds

TEXT = "the film was great"


def vllm_example_encoding(tensor: torch.Tensor) -> str:
    """As vLLM's examples/online_serving/prompt_embed_inference_with_openai_client.py (and its
    `vllm.utils.serial_utils.tensor2base64`) write it: torch.save into a buffer, base64 of the bytes."""
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    buffer.seek(0)
    return base64.b64encode(buffer.read()).decode("utf-8")


def top_logprobs(body: dict[str, Any]) -> dict[str, float]:
    app = MockApp(ServerConfig(model="tiny"), scorer=shared_scorer("tiny"))
    reply = app.handle("POST", "/v1/completions", {}, json.dumps(
        {"model": "tiny", "max_tokens": 1, "temperature": 0, "logprobs": 5, **body}).encode())
    assert reply.status == 200, reply.body
    return json.loads(reply.body)["choices"][0]["logprobs"]["top_logprobs"][0]


def example_embeds() -> torch.Tensor:
    """The example's tensor: the HF embedding layer on the token ids, (1, seq, hidden), still carrying grad."""
    scorer = shared_scorer("tiny")
    ids = torch.tensor([scorer.encode(TEXT)])
    return scorer.model.get_input_embeddings()(ids)


@pytest.mark.parametrize("shape", ["seq x hidden", "1 x seq x hidden"])
def test_a_tensor_saved_as_vllms_example_saves_it_scores_as_its_text(shape: str) -> None:
    embeds = example_embeds()
    if shape == "seq x hidden":
        embeds = embeds.squeeze(0)  # what the example sends
    assert top_logprobs({"prompt": "", "prompt_embeds": vllm_example_encoding(embeds)}) == top_logprobs(
        {"prompt": TEXT})


def test_half_precision_embeddings_are_cast_to_the_models_dtype_as_vllm_does() -> None:
    embeds = example_embeds().squeeze(0).detach()
    loaded = load_prompt_embeds(vllm_example_encoding(embeds.to(torch.bfloat16)), embeds.shape[1])
    assert loaded.dtype == torch.float32 and torch.equal(loaded, embeds.to(torch.bfloat16).float())


def test_bbtunes_codec_and_vllms_reading_agree_both_ways() -> None:
    embeds = torch.randn(3, 32)
    assert torch.equal(load_prompt_embeds(encode_embeds(embeds), 32), embeds)
    assert torch.equal(decode_embeds(vllm_example_encoding(embeds)), embeds)


def _sparse_declaring_gib() -> torch.Tensor:
    return torch.sparse_coo_tensor(torch.tensor([[0], [0]]), torch.tensor([1.0]), (2**15, 2**15), check_invariants=True)


@pytest.mark.parametrize("payload, message", [
    ("not base64!", "not base64"),
    (base64.b64encode(b"not a tensor file").decode(), "could not be deserialized"),
    (vllm_example_encoding(torch.zeros(32)), "must be a 2D tensor"),
    (vllm_example_encoding(torch.zeros(2, 3, 32)), "must be a 2D tensor"),  # a leading 2 is not squeezed
    (vllm_example_encoding(torch.zeros(3, 16)), "hidden_size 16 does not match"),
    (vllm_example_encoding(torch.zeros(3, 32, dtype=torch.int64)), "not a floating-point type"),
    (vllm_example_encoding(_sparse_declaring_gib()), "bytes dense"),
])
def test_what_vllm_refuses_the_mock_refuses(payload: str, message: str) -> None:
    with pytest.raises(EmbedsError, match=message):
        load_prompt_embeds(payload, 32)


def test_a_refused_entry_is_a_400_naming_prompt_embeds() -> None:
    app = MockApp(ServerConfig(model="tiny"), scorer=shared_scorer("tiny"))
    reply = app.handle("POST", "/v1/completions", {}, json.dumps(
        {"model": "tiny", "prompt": "", "max_tokens": 1, "prompt_embeds": vllm_example_encoding(torch.zeros(3, 16))}
    ).encode())
    error = json.loads(reply.body)["error"]
    assert reply.status == 400 and error["param"] == "prompt_embeds" and "hidden_size 16" in error["message"]
