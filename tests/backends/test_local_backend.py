"""LocalBackend: the three scoring paths agree, memory-budget batching, KV reuse, errors and counters.

The tiny in-process Llama/RoBERTa make these fast; one test runs the real SmolLM2-135M (`real_model`).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bbtune.backends.local import LocalBackend
from bbtune.errors import ConfigError, TaskError, VerbalizerError
from bbtune.core.prompts import HardPrompt, SoftPrompt
from bbtune.tasks import Example, TaskFormat, Template

TOL = 1e-5
TEXTS = ["a great film", "I love it and the acting was wonderful , the story is fine", "bad",
         "the film was great and the acting was wonderful . a terrible , boring movie with bad jokes"]
EXAMPLES = [Example(t, "positive" if i % 2 else "negative") for i, t in enumerate(TEXTS)]  # lengths 3..20 tokens


def fmt(placement: str = "suffix", template: str = "{text} It was{label}", **verbalizer: str) -> TaskFormat:
    return TaskFormat(Template(template), verbalizer or {"negative": " terrible", "positive": " great"}, placement)


def soft_prompts(backend: LocalBackend, n: int = 3, tokens: int = 4, seed: int = 0) -> list[SoftPrompt]:
    gen = torch.Generator().manual_seed(seed)
    table = backend.vocabulary().embeddings
    return [SoftPrompt(table[torch.randint(0, table.shape[0], (tokens,), generator=gen)]
                       + 0.1 * torch.randn(tokens, table.shape[1], generator=gen)) for _ in range(n)]


def score(backend: LocalBackend, prompts, examples, f: TaskFormat, *, reuse: bool) -> np.ndarray:
    backend.kv_reuse = reuse
    try:
        return backend.score(prompts, examples, f)
    finally:
        backend.kv_reuse = True


@pytest.fixture()
def tiny() -> LocalBackend:
    """A fresh backend (own store, counters and batch log) over the tiny Llama."""
    return LocalBackend("tiny")


# ---------------------------------------------------------------------- the paths agree


@pytest.mark.parametrize("placement", ["suffix", "prefix"])
def test_kv_reuse_equals_full_path(tiny, placement):
    prompts, f = soft_prompts(tiny), fmt(placement)
    full = score(tiny, prompts, EXAMPLES, f, reuse=False)
    tiny.planner.log.clear()
    cached = score(tiny, prompts, EXAMPLES, f, reuse=True)
    assert any(b.cached > 0 for b in tiny.planner.log), "the reuse path was not taken"
    np.testing.assert_allclose(cached, full, atol=TOL)
    np.testing.assert_allclose(score(tiny, prompts, EXAMPLES, f, reuse=True), full, atol=TOL)  # warm store


@pytest.mark.parametrize("placement", ["suffix", "prefix"])
@pytest.mark.parametrize("reuse", [True, False])
def test_padded_batch_equals_one_example_at_a_time(tiny, placement, reuse):
    """Inputs of 3 to 20 tokens padded into one batch score as each does alone."""
    prompts, f = soft_prompts(tiny), fmt(placement)
    batched = score(tiny, prompts, EXAMPLES, f, reuse=reuse)
    alone = np.concatenate([score(tiny, prompts, [ex], f, reuse=reuse) for ex in EXAMPLES], axis=1)
    np.testing.assert_allclose(batched, alone, atol=TOL)


def test_prefix_sharing_encodes_each_prompt_once(tiny):
    prompts, f = soft_prompts(tiny, n=3, tokens=4), fmt("prefix")
    tiny.score(prompts, EXAMPLES, f)
    first = tiny.planner.log[0]
    assert (first.rows, first.cached, first.new) == (3, 0, 4)  # 3 prompts x 4 tokens, not 3 x 4 examples
    assert all(b.cached == 4 for b in tiny.planner.log[1:])  # every row reuses its prompt's keys/values


def test_hard_prompt_equals_soft_prompt_of_its_embeddings(tiny):
    # texts that tokenize to these ids in context (else the text is scored: tests/backends/test_text_exact.py)
    ids = [tiny.tokenizer.encode(t, add_special_tokens=False) for t in (" the story is", " not good ,")]
    hard = [HardPrompt(tuple(i), tiny.tokenizer.decode(i)) for i in ids]
    table = tiny.vocabulary().embeddings
    soft = [SoftPrompt(table[i]) for i in ids]
    for placement in ("suffix", "prefix"):
        np.testing.assert_allclose(tiny.score(hard, EXAMPLES, fmt(placement)),
                                   tiny.score(soft, EXAMPLES, fmt(placement)), atol=TOL)


def test_repeated_hard_prompts_are_scored_once(tiny):
    a, b = HardPrompt((5, 17), "a"), HardPrompt((9, 3), "b")
    got = tiny.score([a, b, HardPrompt((5, 17), "a"), a], EXAMPLES, fmt())
    assert sum(x.rows for x in tiny.planner.log if x.cached) == 2 * len(EXAMPLES)
    np.testing.assert_array_equal(got[0], got[2])
    np.testing.assert_array_equal(got[0], got[3])
    np.testing.assert_allclose(got[1], tiny.score([b], EXAMPLES, fmt())[0], atol=TOL)
    assert tiny.stats.calls == 5  # the budget counts every candidate asked for


def test_bfloat16_paths_agree_and_return_float(tiny):
    backend = LocalBackend("tiny", dtype="bfloat16")
    prompts = soft_prompts(backend)
    full = score(backend, prompts, EXAMPLES, fmt(), reuse=False)
    cached = score(backend, prompts, EXAMPLES, fmt(), reuse=True)
    assert cached.dtype == np.float32
    np.testing.assert_allclose(cached, full, atol=0.1)
    np.testing.assert_allclose(cached, tiny.score(prompts, EXAMPLES, fmt()), atol=0.1)


def test_label_logprobs_is_differentiable(tiny):
    param = torch.stack([p.embeds for p in soft_prompts(tiny, n=1)]).requires_grad_(True)
    logp = tiny.label_logprobs(param, EXAMPLES, fmt())
    logp[..., 0].sum().backward()
    assert param.grad is not None and param.grad.abs().sum() > 0
    with torch.inference_mode():
        np.testing.assert_allclose(logp.detach().numpy(), tiny.label_logprobs(param.detach(), EXAMPLES, fmt()).numpy(),
                                   atol=TOL)


# ---------------------------------------------------------------------- KV store in the backend


def test_store_evicts_and_recomputes_on_miss(tiny):
    prompts, f = soft_prompts(tiny), fmt()
    reference = score(tiny, prompts, EXAMPLES, f, reuse=False)
    cfg = tiny.model.config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    lengths = [len(h) for h in tiny.encoder.encode(EXAMPLES, f, 4).heads]
    by_length = sorted(range(len(EXAMPLES)), key=lengths.__getitem__)  # inputs are encoded shortest first
    room = sum(lengths[i] for i in by_length[-2:]) + 0.5  # tokens: the two longest fit, not three
    backend = LocalBackend("tiny", kv_cache_mb=room * per_token / 2**20)
    np.testing.assert_allclose(backend.score(prompts, EXAMPLES, f), reference, atol=TOL)
    store = backend.kv_store
    assert (store.hits, store.misses, store.evictions, len(store)) == (0, 4, 2, 2)
    assert store.bytes_used <= store.max_bytes
    keep = sorted(by_length[1:])  # a new batch: the two longest hit, the evicted second-shortest is recomputed
    np.testing.assert_allclose(backend.score(prompts, [EXAMPLES[i] for i in keep], f), reference[:, keep], atol=TOL)
    assert (store.hits, store.misses) == (2, 5) and store.bytes_used <= store.max_bytes


def test_same_examples_again_skip_the_store(tiny):
    """A generation on the same examples (in any order) reuses the stacked keys/values of the last one."""
    prompts, f = soft_prompts(tiny), fmt()
    tiny.score(prompts, EXAMPLES, f)
    lookups = tiny.kv_store.hits + tiny.kv_store.misses
    passes = tiny.stats.forward_passes
    tiny.score(prompts, EXAMPLES[::-1], f)
    assert tiny.kv_store.hits + tiny.kv_store.misses == lookups
    assert tiny.stats.forward_passes == passes + 1  # only the prompt + cue rows ran


# ---------------------------------------------------------------------- memory-budget batching


@pytest.mark.parametrize("placement,reuse", [("suffix", True), ("prefix", True), ("prefix", False)])
def test_no_batch_above_the_budget_and_same_scores(placement, reuse):
    f = fmt(placement)
    roomy = LocalBackend("tiny")
    prompts = soft_prompts(roomy, n=5)
    expected = score(roomy, prompts, EXAMPLES, f, reuse=reuse)
    assert len(roomy.planner.log) <= 2  # everything fits in one batch per stage
    for budget_mb in (0.5, 0.2):  # 0.2 MB holds fewer rows than one example's 5 candidates
        tight = LocalBackend("tiny", memory_budget_mb=budget_mb)
        np.testing.assert_allclose(score(tight, prompts, EXAMPLES, f, reuse=reuse), expected, atol=TOL)
        assert len(tight.planner.log) > 2
        assert all(b.nbytes <= tight.planner.budget_bytes for b in tight.planner.log)
        assert sum(b.rows for b in tight.planner.log if b.cached or not reuse) == 5 * len(EXAMPLES)


def test_chunks_are_even(tiny):
    tiny.planner.budget_bytes = 9 * tiny.planner.row_bytes(10, 6)  # 9 rows fit: 20 rows as 6 + 7 + 7, not 9 + 9 + 2
    assert [s.stop - s.start for s in tiny.planner.chunks(20, 10, 6)] == [6, 7, 7]


def test_blocks_group_inputs_of_similar_length(tiny):
    """Sorted inputs are cut where padding would waste > 25% (once a block has 64 rows) or the budget is full."""
    lengths, P, shape = [2, 2, 3, 3, 10, 11, 30], 32, (lambda n: (n, 6))
    blocks = tiny.planner.blocks(lengths, P, shape)
    assert [(ex.start, ex.stop) for ex, _ in blocks] == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert all(cand == slice(0, P) for _, cand in blocks)
    tiny.planner.budget_bytes = 20 * tiny.planner.row_bytes(30, 6)  # the longest input's 32 candidates need 2 blocks
    tiny.planner.log.clear()
    blocks = tiny.planner.blocks(lengths, P, shape)
    assert [(c.start, c.stop) for ex, c in blocks if ex.start == 6] == [(0, 20), (20, 32)]
    covered = sorted((b, p) for ex, cand in blocks for b in range(ex.start, ex.stop) for p in range(cand.start, cand.stop))
    assert covered == [(b, p) for b in range(len(lengths)) for p in range(P)]
    assert all(x.nbytes <= tiny.planner.budget_bytes for x in tiny.planner.log)


def test_too_small_budget_raises_config_error():
    backend = LocalBackend("tiny", memory_budget_mb=0.01)
    with pytest.raises(ConfigError, match="memory_budget_mb=0.01 is too small.*raise memory_budget_mb"):
        backend.score(soft_prompts(backend), EXAMPLES, fmt())


# ---------------------------------------------------------------------- masked LMs


def test_masked_lm_scores_the_mask_position():
    backend = LocalBackend("tiny-masked")
    tok, model = backend.tokenizer, backend.model
    prompt = HardPrompt((5, 17), tok.decode([5, 17]))
    f = fmt("prefix")
    got = backend.score([prompt], EXAMPLES, f)
    enc = backend.encoder.encode(EXAMPLES, f, 2)
    for b, head in enumerate(enc.heads):  # score each alone, finding the mask by its id
        ids = [5, 17] + head + enc.cue + [tok.mask_token_id, tok.eos_token_id]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, ids.index(tok.mask_token_id)]
        np.testing.assert_allclose(got[0, b], torch.log_softmax(logits, -1)[enc.label_ids].numpy(), atol=TOL)


# ---------------------------------------------------------------------- errors that say what to do


def test_context_overflow_names_the_fix(tiny):
    long = Example(" ".join(["the film was great"] * 100), "positive")
    with pytest.raises(TaskError, match=r"overflows the model's context of 256.*max_input_tokens"):
        tiny.score(soft_prompts(tiny), [long], fmt())
    truncated = LocalBackend("tiny", max_input_tokens=50)
    assert truncated.score(soft_prompts(truncated), [long], fmt()).shape == (3, 1, 2)


def test_a_multi_token_word_is_scored_as_the_sum_of_its_tokens(tiny):
    """Once refused; now "great" (2 tokens after the cue: 'g', 'reat') scores log p(g) + log p(reat | g)."""
    words = fmt(negative=" terrible", positive="great")
    assert len(tiny.tokenizer.encode("great", add_special_tokens=False)) == 2
    got = tiny.score(soft_prompts(tiny), EXAMPLES, words)
    first = tiny.score(soft_prompts(tiny), EXAMPLES, fmt(negative=" terrible", positive="g"))
    both = tiny.score(soft_prompts(tiny), EXAMPLES, fmt(template="{text} It wasg{label}", negative=" terrible",
                                                        positive="reat"))
    np.testing.assert_allclose(got[..., 1], first[..., 1] + both[..., 1], atol=TOL)


def test_a_word_merging_with_the_cue_names_the_fix(tiny):
    with pytest.raises(VerbalizerError, match="merges with the end of the template's cue"):
        tiny.score(soft_prompts(tiny), EXAMPLES, fmt(template="{text} It wa{label}", negative="s bad", positive=" good"))


def test_no_examples_is_a_task_error(tiny):
    with pytest.raises(TaskError, match="no examples"):
        tiny.score(soft_prompts(tiny), [], fmt())


# ---------------------------------------------------------------------- counters


def test_stats_count_calls_examples_passes_and_tokens(tiny):
    prompts, f = soft_prompts(tiny, n=3, tokens=4), fmt()
    enc = tiny.encoder.encode(EXAMPLES, f, 4)
    heads, tail = [len(h) for h in enc.heads], 4 + len(enc.cue)
    tiny.score(prompts, EXAMPLES, f)  # one pass encodes the inputs (padded), one scores 3 x 4 rows
    s = tiny.stats
    assert (s.calls, s.examples_scored, s.forward_passes) == (3, 12, 2)
    assert s.tokens_processed == 4 * max(heads) + 12 * tail
    tiny.score(prompts[:2], EXAMPLES[:2], f)  # a new batch: its inputs are in the store, so one pass
    assert (s.calls, s.examples_scored, s.forward_passes) == (5, 16, 3)
    assert s.tokens_processed == 4 * max(heads) + 12 * tail + 4 * tail


# ---------------------------------------------------------------------- the real model


@pytest.mark.real_model
def test_smollm2_kv_reuse_equals_full_path(smollm2_backend):
    """Padded batches of inputs of 1 to 15 words, cached, agree with each input run whole on its own."""
    backend, examples = smollm2_backend, EXAMPLES[:3]
    gen = torch.Generator().manual_seed(0)
    table = backend.vocabulary().embeddings
    prompts = [SoftPrompt(table[torch.randint(0, 40000, (3,), generator=gen)]) for _ in range(2)]
    alone = np.concatenate([score(backend, prompts, [ex], fmt(), reuse=False) for ex in examples], axis=1)
    np.testing.assert_allclose(score(backend, prompts, examples, fmt(), reuse=False), alone, atol=1e-4)
    np.testing.assert_allclose(score(backend, prompts, examples, fmt(), reuse=True), alone, atol=1e-4)
    prefix = fmt("prefix")
    np.testing.assert_allclose(score(backend, prompts, examples, prefix, reuse=True),
                               score(backend, prompts, examples, prefix, reuse=False), atol=1e-4)
