"""Label words of several tokens, scored exactly: locally on every path (teacher forcing through the label-token
trie), remotely by echo or chained top-k requests (that those equal the local scores, mode by mode, is
tests/backends/test_remote_contract.py), and `continuation_logprobs` for any strings after an input.

The reference is one forward per (row, word) over the row's whole input and the word's tokens, summing the word's
token log-probs: what "exact" means, computed without any of the paths under test.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from bbtune.app.cli import main
from bbtune.backends.base import Backend, Capabilities, CallStats
from bbtune.backends.labeltrie import LabelTrie
from bbtune.backends.local import LocalBackend
from bbtune.backends.remote import RemoteBackend, RemoteConfig
from bbtune.core.prompts import HardPrompt, SoftPrompt
from bbtune.errors import CapabilityError, ConfigError, TaskError, VerbalizerError
from bbtune.tasks import Example, TaskConfig, TaskFormat, Template, label_name_words, verbalizer_token_sequences
from mock_server import MockApp, MockServer, ServerConfig, mock_transport, shared_scorer

SST5 = ("very negative", "negative", "neutral", "positive", "very positive")
TEMPLATE = Template("Review: {text}\nSentiment:{label}")
EXAMPLES = [Example("a great film", "positive"), Example("the story is boring and the jokes are bad", "negative"),
            Example("I love it", "very positive")]
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "sst5"
TOL = 1e-4


@pytest.fixture(scope="module", params=["tiny", "tiny-gemma"])
def backend(request: pytest.FixtureRequest) -> LocalBackend:
    return LocalBackend(request.param)


def fmt(placement: str = "suffix", words: dict[str, str] | None = None) -> TaskFormat:
    return TaskFormat(TEMPLATE, words or label_name_words(SST5), placement)


def round_trip_prompt(backend: LocalBackend, text: str) -> HardPrompt:
    """A hard prompt whose text re-tokenizes to its ids inside the template (so ids and text score alike)."""
    return HardPrompt(tuple(backend.tokenizer.encode(text, add_special_tokens=False)), text)


def prompts_of(backend: LocalBackend, kind: str) -> list[Any]:
    if kind == "hard":
        return [round_trip_prompt(backend, " the story"), round_trip_prompt(backend, " a great")]
    gen = torch.Generator().manual_seed(3)
    hidden = backend.model.get_input_embeddings().weight.shape[1]
    return [SoftPrompt(0.05 * torch.randn(2, hidden, generator=gen)) for _ in range(2)]


def teacher_forced(backend: LocalBackend, prompts: list[Any], examples: list[Example], f: TaskFormat) -> np.ndarray:
    """(P, B, L): each row's whole input (`input_embeds`) followed by the word's tokens, one forward each."""
    rows = [row for p in prompts for row in backend.input_embeds([p], examples, f)]
    seqs = verbalizer_token_sequences(backend.tokenizer, f)
    out = np.empty((len(prompts), len(examples), len(seqs)))
    dtype = backend.model.get_input_embeddings().weight.dtype
    for r, row in enumerate(rows):
        for j, seq in enumerate(seqs):
            x = torch.cat([row, backend.embed_text_ids(list(seq))])[None].to(dtype)
            with torch.inference_mode():
                logp = torch.log_softmax(backend.model(inputs_embeds=x).logits[0].float(), -1)
            n = row.shape[0]
            out[r // len(examples), r % len(examples), j] = sum(float(logp[n - 1 + i, t]) for i, t in enumerate(seq))
    return out


# ---------------------------------------------------------------------- the trie


def test_the_trie_shares_prefixes_and_sums_each_words_path() -> None:
    trie = LabelTrie.build([(5, 1), (2,), (5, 3, 4)])
    assert [(s.prefix, s.next_ids) for s in trie.steps] == [((), (5, 2)), ((5,), (1, 3)), ((5, 3), (4,))]
    parts = [np.array([[-1.0, -2.0]]), np.array([[-0.5, -0.25]]), np.array([[-0.125]])]
    np.testing.assert_allclose(trie.combine(parts), [[-1.5, -2.0, -1.375]])
    single = LabelTrie.build([(7,), (3,)])
    assert single.single and len(single.steps) == 1 and single.combine([parts[0]]) is parts[0]


def test_words_are_tokenized_after_the_cue_and_refused_where_they_merge_with_it(backend: LocalBackend) -> None:
    tok = backend.tokenizer
    seqs = verbalizer_token_sequences(tok, fmt())
    cue = tok.encode("\nSentiment:", add_special_tokens=False)
    for seq, label in zip(seqs, SST5):
        assert tok.encode("\nSentiment: " + label, add_special_tokens=False) == cue + list(seq)
    merging = TaskFormat(Template("{text} It wa{label}"), {"a": "s great", "b": " bad"})
    with pytest.raises(VerbalizerError, match="merges with the end of the template's cue.*word boundary"):
        verbalizer_token_sequences(tok, merging)


# ---------------------------------------------------------------------- local: every path is exact


@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("placement, reuse", [("suffix", True), ("prefix", True), ("suffix", False)])
def test_every_local_path_scores_multi_token_words_exactly(backend: LocalBackend, kind: str, placement: str,
                                                         reuse: bool) -> None:
    f, prompts = fmt(placement), prompts_of(backend, kind)
    assert max(len(s) for s in verbalizer_token_sequences(backend.tokenizer, f)) > 1
    backend.kv_reuse = reuse
    try:
        got = backend.score(prompts, EXAMPLES, f)
    finally:
        backend.kv_reuse = True
    np.testing.assert_allclose(got, teacher_forced(backend, prompts, EXAMPLES, f), atol=TOL)


def test_a_hard_prompt_merging_with_its_input_is_scored_row_by_row_exactly(backend: LocalBackend) -> None:
    """A prompt whose text merges with the input (no leading space) takes the whole-string path."""
    prompt = HardPrompt(tuple(backend.tokenizer.encode("s", add_special_tokens=False)), "s")
    got = backend.score([prompt], EXAMPLES, fmt())
    assert backend.text_stats.row_by_row >= 1
    for b, ex in enumerate(EXAMPLES):  # the reference from the whole string's ids
        ids = backend.encoder.lead() + backend.tokenizer.encode(fmt().text(ex, "s"), add_special_tokens=False)
        for j, seq in enumerate(verbalizer_token_sequences(backend.tokenizer, fmt())):
            with torch.inference_mode():
                logp = torch.log_softmax(backend.model(torch.tensor([ids + list(seq)])).logits[0].float(), -1)
            want = sum(float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(seq))
            assert got[0, b, j] == pytest.approx(want, abs=TOL)


def test_gradients_flow_through_multi_token_words(backend: LocalBackend) -> None:
    embeds = backend.prompt_embeds(prompts_of(backend, "soft")).clone().requires_grad_(True)
    logp = backend.label_logprobs(embeds, EXAMPLES, fmt())
    logp[:, :, 0].sum().backward()
    assert embeds.grad is not None and float(embeds.grad.abs().sum()) > 0


def test_single_token_words_cost_one_step_and_shared_prefixes_one_more_each() -> None:
    """The speed claim: single-token words read all labels from one forward per block; SST-5's names cost one
    forward per trie step (their shared prefix once), not one per word."""
    singles = {"negative": " negative", "positive": " positive"}
    names = {"very negative": " very negative", "negative": " negative", "very positive": " very positive"}
    counts = {}
    for name, words in (("single", singles), ("names", names)):
        b = LocalBackend("tiny")
        prompts = prompts_of(b, "soft")
        b.score(prompts, EXAMPLES, fmt(words=words))  # fills the input store
        before = b.stats.forward_passes
        b.score(prompts, EXAMPLES, fmt(words=words))
        counts[name] = b.stats.forward_passes - before
    steps = len(LabelTrie.build(verbalizer_token_sequences(LocalBackend("tiny").tokenizer, fmt(words=names))).steps)
    assert counts["single"] >= 1 and counts["names"] == steps * counts["single"]
    assert steps < sum(len(s) for s in verbalizer_token_sequences(shared_scorer("tiny").tokenizer, fmt(words=names)))


def test_a_masked_lm_refuses_multi_token_words_naming_the_fix() -> None:
    masked = LocalBackend("tiny-masked")
    with pytest.raises(VerbalizerError, match="masked LM.*single-token words.*' very negative'.*tokens"):
        masked.score([HardPrompt((), "")], EXAMPLES, fmt("prefix"))


# ---------------------------------------------------------------------- continuations


def test_continuations_shared_by_all_examples_are_the_label_scores(backend: LocalBackend) -> None:
    prompts, f = prompts_of(backend, "soft"), fmt()
    words = list(f.verbalizer.values())
    got = backend.continuation_logprobs(prompts, EXAMPLES, f, [words] * len(EXAMPLES))
    np.testing.assert_allclose(got, backend.score(prompts, EXAMPLES, f), atol=TOL)


def test_continuations_of_each_example_are_scored_after_its_own_input(backend: LocalBackend) -> None:
    prompts = prompts_of(backend, "hard")
    strings = [[" a fine film", " bad"], [" bad", " the end"], [" bad", " bad"]]
    got = backend.continuation_logprobs(prompts, EXAMPLES, fmt(), strings)
    assert got.shape == (2, 3, 2)
    for b, (ex, own) in enumerate(zip(EXAMPLES, strings)):
        words = {f"w{i}": s for i, s in enumerate(dict.fromkeys(own))}
        alone = teacher_forced(backend, prompts, [ex], fmt(words=words))[:, 0]
        np.testing.assert_allclose(got[:, b], alone[:, [list(words.values()).index(s) for s in own]], atol=TOL)


@pytest.mark.parametrize("strings, needle", [([[" a"], [" a", " b"], [" c"]], "same number"),
                                             ([[" a"], [""], [" c"]], "non-empty strings"),
                                             ([[" a"]], "one list of strings per example")])
def test_bad_continuations_say_what_is_wrong(backend: LocalBackend, strings: list, needle: str) -> None:
    with pytest.raises(TaskError, match=needle):
        backend.continuation_logprobs(prompts_of(backend, "hard"), EXAMPLES, fmt(), strings)


def test_a_backend_without_continuations_names_what_to_use() -> None:
    class ScoresOnly(Backend):
        name, capabilities, stats = "scores-only", Capabilities(soft=False), CallStats()

    with pytest.raises(CapabilityError, match="cannot score continuations.*LocalBackend"):
        ScoresOnly().continuation_logprobs([], EXAMPLES, fmt(), [[" a"]] * 3)


# ---------------------------------------------------------------------- remote: echo and chained


class Counted:
    """The mock in-process, counting the HTTP requests it answers."""

    def __init__(self, **server: Any):
        self.inner, self.requests = mock_transport(MockApp(ServerConfig(**{"model": "tiny", "max_logprobs": 400,
                                                                             **server}), scorer=shared_scorer("tiny"))), 0
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return self.inner.handle_request(request)


def remote(transport: httpx.MockTransport, **config: Any) -> RemoteBackend:
    cfg = RemoteConfig(**{"base_url": "http://mock.test/v1", "model": "tiny", "local_model": "tiny", "top_k": 400,
                          "batch_size": 4, **config})
    return RemoteBackend(cfg, transport=transport)


@pytest.fixture(scope="module")
def tiny() -> LocalBackend:
    return LocalBackend("tiny")


def test_chained_requests_share_prefixes_and_count_as_requests(tiny: LocalBackend) -> None:
    f = fmt()
    steps = len(LabelTrie.build(verbalizer_token_sequences(tiny.tokenizer, f)).steps)
    server = Counted()
    with remote(server.transport, mode="top_logprobs", probe=False, batch_size=1) as backend:
        backend.score(prompts_of(tiny, "hard"), EXAMPLES, f)
        assert server.requests == backend.stats.requests == steps * 2 * len(EXAMPLES)


def test_a_token_outside_the_top_k_makes_its_word_missing_and_counted(tiny: LocalBackend) -> None:
    with remote(Counted().transport, mode="top_logprobs", probe=False, top_k=3) as backend:
        scores = backend.score(prompts_of(tiny, "hard"), EXAMPLES, fmt())
        assert np.isnan(scores).any() and backend.stats.labels_missing == int(np.isnan(scores).sum())
    exact = tiny.score(prompts_of(tiny, "hard"), EXAMPLES, fmt())
    known = ~np.isnan(scores)
    np.testing.assert_allclose(scores[known], exact[known], atol=TOL)  # no bias: the listed ones are exact


def test_chat_mode_refuses_multi_token_words_naming_the_modes() -> None:
    with remote(Counted().transport, mode="chat", probe=False, top_k=5) as backend, pytest.raises(
            CapabilityError, match="several tokens.*RemoteConfig.mode=echo.*RemoteConfig.mode=top_logprobs"):
        backend.score([HardPrompt((), "")], EXAMPLES, fmt())


def test_top_k_modes_without_a_tokenizer_refuse_words_of_several_words_naming_the_fixes() -> None:
    with remote(Counted().transport, mode="top_logprobs", local_model="", probe=False) as backend, pytest.raises(
            ConfigError, match="several tokens.*RemoteConfig.local_model.*RemoteConfig.mode=echo"):
        backend.score([HardPrompt((), "")], EXAMPLES, fmt())


# ---------------------------------------------------------------------- the label names as words, end to end


def test_the_names_verbalizer_uses_each_label_name_after_a_space() -> None:
    task = TaskConfig(data=str(DATA), preset="sentiment-5", verbalizer="names", k=2, test_limit=4).load()
    assert task.format.verbalizer == {label: " " + label for label in SST5}
    with pytest.raises(TaskError, match="neither a mapping"):
        from bbtune.tasks import build_task
        build_task(DATA, "sentiment-5", k=2, seed=13, verbalizer="label-names")


TUNE = ["--data", str(DATA), "--preset", "sentiment-5", "--verbalizer", "names", "--k", "2", "--test-limit", "6",
        "--mode", "hard", "--budget-calls", "8", "--popsize", "4", "--prompt-tokens", "3", "--intrinsic-dim", "10",
        "--eval-every", "8", "--no-progress"]


@pytest.mark.skipif(not DATA.exists(), reason="the shared SST-5 data is not here")
def test_tune_sst5_with_label_names_locally_and_through_the_mock(tmp_path: Path) -> None:
    assert main(["tune", *TUNE, "--model", "tiny", "--run-dir", str(tmp_path / "local")]) in (0, None)
    server = MockServer(ServerConfig(model="tiny", port=0, max_logprobs=400), scorer=shared_scorer("tiny")).start()
    try:
        for mode in ("echo", "top_logprobs"):  # exact, and chained with the probe's choices (top-k, logit_bias)
            code = main(["tune", *TUNE, "--backend", "remote", "--remote-base-url", server.url, "--remote-model",
                         "tiny", "--remote-local-model", "tiny", "--remote-mode", mode, "--remote-top-k", "400",
                         "--run-dir", str(tmp_path / mode)])
            assert code in (0, None), mode
    finally:
        server.stop()
    local = json.loads((tmp_path / "local" / "metrics.json").read_text())
    for mode in ("echo", "top_logprobs"):
        far = json.loads((tmp_path / mode / "metrics.json").read_text())
        assert local["calls"] == far["calls"] == 8
        assert local["manual_dev_acc"] == far["manual_dev_acc"], mode  # the same label differences pick the same labels
