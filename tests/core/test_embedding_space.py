"""One embedding space for the whole project, over model families.

"The embedding of a token" is the input-embedding module's output (`vocab.token_embeddings`). Gemma's module
scales its weight rows by sqrt(hidden); a soft prompt built from raw rows is then too small next to the text
around it. Every test here runs on a tiny Llama (module output == rows) and a tiny Gemma 3 (scaled), and each
one fails on Gemma if any of the paths reads weight rows instead.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bbtune.backends.local import LocalBackend
from bbtune.search.discretize import Discretizer, Metric
from bbtune.app.export import export_peft
from bbtune.core.prompts import HardPrompt, SoftPrompt
from bbtune.search.subspace import P0Init, Subspace, SubspaceConfig
from bbtune.tasks import Example, Placement, TaskFormat, Template
from bbtune.core.vocab import token_embeddings

FAMILIES = ["tiny", "tiny-gemma"]
TEXT = " the story is fine"
EXAMPLES = [Example("a great film", "positive"), Example("bad jokes and a boring movie", "negative"),
            Example("I love it", "positive")]


def fmt(placement: str) -> TaskFormat:
    return TaskFormat(Template("{text} It was{label}"), {"negative": " terrible", "positive": " great"},
                      Placement(placement))


@pytest.fixture(scope="module", params=FAMILIES)
def backend(request) -> LocalBackend:
    return LocalBackend(request.param)


def text_prompts(backend: LocalBackend) -> tuple[HardPrompt, SoftPrompt]:
    ids = tuple(backend.tokenizer.encode(TEXT, add_special_tokens=False))
    return HardPrompt(ids, TEXT), SoftPrompt(backend.vocabulary().embeddings[list(ids)].clone())


def test_the_vocabulary_is_the_embedding_modules_output(backend):
    module = backend.model.get_input_embeddings()
    ids = torch.arange(backend.vocabulary().size)
    torch.testing.assert_close(backend.vocabulary().embeddings, module(ids).detach().float())
    torch.testing.assert_close(token_embeddings(backend.model, [3, 5]), module(torch.tensor([3, 5])).detach().float())


def test_the_gemma_model_really_scales_its_embeddings():
    """Guards the test above: on the tiny Gemma the module output is not the weight rows (else it proves nothing)."""
    gemma = LocalBackend("tiny-gemma")
    rows = gemma.model.get_input_embeddings().weight.detach().float()
    ratio = gemma.vocabulary().embeddings.norm() / rows[: gemma.vocabulary().size].norm()
    assert float(ratio) == pytest.approx(gemma.model.config.hidden_size ** 0.5, rel=1e-4)


@pytest.mark.parametrize("placement", ["suffix", "prefix"])
def test_a_texts_soft_prompt_scores_like_the_text(backend, placement):
    hard, soft = text_prompts(backend)
    f = fmt(placement)
    np.testing.assert_allclose(backend.score([soft], EXAMPLES, f), backend.score([hard], EXAMPLES, f), atol=1e-5)


def test_the_cue_start_point_is_the_manual_prompt(backend):
    """The embedding-space study's table (benchmarks/studies/embedding_space): the cue as token ids, as what
    `--p0 cue` builds (z = 0), as the module's output."""
    cue = "\nSentiment:"
    ids = tuple(backend.tokenizer.encode(cue, add_special_tokens=False))
    space = SubspaceConfig(prompt_tokens=len(ids), intrinsic_dim=8, p0=P0Init.TEXT, p0_text=cue)
    start = Subspace.build(backend.vocabulary(), space, seed=0).soft_prompt(np.zeros(8))
    module = SoftPrompt(backend.embed_text_ids(ids))
    f = TaskFormat(Template("Review: {text}{label}"), {"negative": " negative", "positive": " positive"})
    hard = backend.score([HardPrompt(ids, cue)], EXAMPLES, f)
    np.testing.assert_allclose(backend.score([start], EXAMPLES, f), hard, atol=1e-5)
    np.testing.assert_allclose(backend.score([module], EXAMPLES, f), hard, atol=1e-5)


@pytest.mark.parametrize("metric", list(Metric))
def test_nearest_tokens_of_a_texts_soft_prompt_are_the_text(backend, metric):
    hard, soft = text_prompts(backend)
    discretizer = Discretizer(backend.vocabulary(), metric=metric, vocab_filter="all")
    assert discretizer.project(soft.embeds).token_ids == hard.token_ids


def test_the_subspace_steps_are_sized_in_the_models_space(backend):
    """BBT's std rule reads the std of the embeddings the prompt lives among: scaled on Gemma."""
    space = SubspaceConfig(prompt_tokens=8, intrinsic_dim=50, p0=P0Init.ZEROS, alpha=1.0)
    sub = Subspace.build(backend.vocabulary(), space, seed=0)
    z = np.random.default_rng(0).standard_normal(50)
    step = sub.embeds(z / np.linalg.norm(z) * np.sqrt(50))[0]  # a step of sigma0 = 1: |z| = sqrt(d)
    assert float(step.std()) == pytest.approx(float(backend.vocabulary().embeddings.std()), rel=0.15)


def test_an_exported_peft_prompt_scores_like_bbtune(backend, tmp_path):
    peft = pytest.importorskip("peft")
    from bbtune.backends.models import build_tiny_model

    _, soft = text_prompts(backend)
    f = fmt("prefix")
    folder = export_peft(soft, tmp_path / "adapter", model_config=backend.model.config)
    family = "gemma3" if "Gemma" in type(backend.model).__name__ else "llama"
    model = peft.PeftModel.from_pretrained(build_tiny_model(family=family)[0], folder).eval()
    example = EXAMPLES[0]
    rendered = f.render(example)
    ids = backend.tokenizer.encode(rendered.head, add_special_tokens=False) + backend.tokenizer.encode(
        rendered.cue, add_special_tokens=False)  # the backend tokenizes input and cue apart
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits
    label_ids = [backend.tokenizer.encode(w, add_special_tokens=False)[0] for w in f.verbalizer.values()]
    peft_scores = torch.log_softmax(logits[0, -1].float(), -1)[label_ids]
    torch.testing.assert_close(peft_scores, torch.as_tensor(backend.score([soft], [example], f)[0, 0]),
                               atol=1e-4, rtol=1e-4)


def test_bbt_soft_starts_at_the_manual_prompt(backend, tiny_task):
    """Generation 0 of a soft run from the cue is the manual prompt: same (calibrated) train loss."""
    from bbtune.tasks import Task
    from bbtune.runs.tuner import TuneConfig, run_tuner

    cued = Task(tiny_task.name, TaskFormat(Template("Review: {text}\nSentiment:{label}"), tiny_task.format.verbalizer),
                tiny_task.train, tiny_task.dev)
    result = run_tuner(cued, backend, TuneConfig(budget_calls=6, popsize=6, intrinsic_dim=10, p0="cue"), progress=False)
    assert result.metrics["p0"] == "cue"
    assert result.curve[0]["generation"] == 0
    assert result.curve[0]["train_loss"] == pytest.approx(result.metrics["manual_train_loss"], abs=1e-3)
