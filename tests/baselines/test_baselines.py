"""Baselines on the tiny model: each learns (loss goes down), is seeded, is counted, and PEZ stays on real tokens."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

import bbtune.errors
import pytest
import torch

from bbtune.backends.base import Capabilities
from bbtune.backends.local import LocalBackend
from bbtune.baselines import (InContextConfig, Meter, PEZConfig, PromptTuningConfig, run_in_context,
                              run_manual, run_pez, run_prompt_tuning)
from bbtune.baselines.bbt import run_bbt
from bbtune.baselines.gradient import GradientConfig, frozen, initial_embeds, train_prompt
from bbtune.tasks.demonstrations import sample_demonstrations
from bbtune.baselines.pez import _Projected
from bbtune.baselines.prompt_tuning import _AsIs
from bbtune.search.discretize import Discretizer
from bbtune.errors import CapabilityError, ConfigError, TaskError
from bbtune.search.evaluate import evaluate
from bbtune.core.prompts import HardPrompt, SoftPrompt
from bbtune.runs.tuner import TuneConfig

FAST = dict(steps=6, eval_every=3, batch_size=4, prompt_tokens=3)


def _learning_task(task):
    """One label only, dev = train: a random tiny model cannot separate classes, but a prompt can always learn
    to favour one label word, so the loss has room to fall."""
    positives = tuple(ex for ex in task.train if ex.label == "positive")
    return replace(task, train=positives, dev=positives)


# ---------------------------------------------------------------------- prompt tuning


def test_prompt_tuning_loss_decreases(tiny_backend, tiny_task):
    vocab = tiny_backend.vocabulary()
    config = PromptTuningConfig(steps=10, batch_size=0, eval_every=10, prompt_tokens=3, lr=1.0, seed=0)
    init = initial_embeds(vocab, 3, "vocab", "", seed=0)
    trained = train_prompt(_learning_task(tiny_task), tiny_backend, init, _AsIs(), config)
    assert trained.losses[-1] < trained.losses[0] - 0.02
    assert all(b <= a + 1e-4 for a, b in zip(trained.losses, trained.losses[1:]))  # full batch: steady descent
    assert isinstance(trained.best, SoftPrompt) and trained.best.embeds.shape == init.shape


@pytest.mark.parametrize("view", [_AsIs(), "pez"])
def test_a_step_accumulated_within_the_memory_budget_equals_the_whole_batch_at_once(tiny_task, view):
    """A step's graph over many long examples outgrew the machine (12 GB, AG News); the step is cut into parts
    whose backward fits the budget, and the gradient stays the whole batch's mean."""
    roomy = LocalBackend("tiny")
    tight = LocalBackend("tiny", memory_budget_mb=0.3)
    # PEZ scores the nearest tokens: a step must be long enough to change one (lr 1.0 moved none with torch 2.13)
    config = PromptTuningConfig(steps=3, batch_size=0, eval_every=3, prompt_tokens=3, lr=3.0 if view == "pez" else 1.0,
                                seed=0)
    init = initial_embeds(roomy.vocabulary(), 3, "vocab", "", seed=0)
    assert len(roomy.train_slices(3, tiny_task.train, tiny_task.format)) == 1
    parts = tight.train_slices(3, tiny_task.train, tiny_task.format)
    assert len(parts) > 1 and [i for s in parts for i in range(s.start, s.stop)] == list(range(len(tiny_task.train)))
    views = [(_Projected(b, Discretizer(b.vocabulary())) if view == "pez" else view) for b in (roomy, tight)]
    whole, cut = (train_prompt(tiny_task, b, init, v, config) for b, v in zip((roomy, tight), views))
    np.testing.assert_allclose(cut.losses, whole.losses, rtol=1e-5)
    assert len(set(whole.losses)) > 1  # the steps moved the prompt: equal losses are not equal starts alone
    if view == "pez":
        assert cut.best.token_ids == whole.best.token_ids
    else:
        torch.testing.assert_close(cut.best.embeds, whole.best.embeds, rtol=1e-4, atol=1e-5)


def test_a_budget_too_small_to_train_one_example_names_the_fix(tiny_task):
    with pytest.raises(ConfigError, match="too small to train through one sequence.*raise memory_budget_mb"):
        LocalBackend("tiny", memory_budget_mb=0.001).train_slices(3, tiny_task.train, tiny_task.format)


def test_prompt_tuning_record_counts_calls_and_passes(tiny_backend, tiny_task):
    result = run_prompt_tuning(tiny_task, tiny_backend, PromptTuningConfig(**FAST, seed=1))
    assert result.method == "prompt_tuning" and result.seed == 1 and result.prompt_text is None
    assert result.train_calls == 6 and result.cost.backward_passes == 6
    evals = len(result.curve) + 1  # dev at steps 0, 3, 6, then the test set once (each fits one chunk)
    assert result.cost.calls == 6 + evals
    assert [x for x, _ in result.curve] == [0, 3, 6]
    best_so_far = [acc for _, acc in result.curve]
    assert best_so_far == sorted(best_so_far) and result.dev_acc == best_so_far[-1]
    assert result.cost.peak_mem_mb > 0
    test = evaluate(tiny_backend, result.best, tiny_task.test, tiny_task.format)
    assert result.test_acc == test.accuracy  # the record's test number is the returned prompt's, scored again


def test_prompt_tuning_is_seeded(tiny_backend, tiny_task):
    a, b, c = (run_prompt_tuning(tiny_task, tiny_backend, PromptTuningConfig(**FAST, seed=s)) for s in (3, 3, 4))
    torch.testing.assert_close(a.best.embeds, b.best.embeds)
    assert not torch.equal(a.best.embeds, c.best.embeds)


def test_prompt_tuning_text_init_starts_at_the_text(tiny_backend):
    vocab = tiny_backend.vocabulary()
    ids = vocab.tokenizer.encode(" great film", add_special_tokens=False)
    init = initial_embeds(vocab, len(ids), "text", " great film", seed=0)
    torch.testing.assert_close(init, vocab.embeddings[ids])


# ---------------------------------------------------------------------- PEZ


class _Spy(_Projected):
    """Records every projected prompt fed to the model, to check them all."""

    def __init__(self, backend, discretizer):
        super().__init__(backend, discretizer)
        self.fed: list[tuple[HardPrompt, torch.Tensor]] = []

    def point(self, param):
        out = super().point(param)
        self.fed.append((self.prompt(param), out.detach()))
        return out


def test_pez_always_feeds_and_yields_valid_token_ids(tiny_backend, tiny_task):
    vocab = tiny_backend.vocabulary()
    disc = Discretizer(vocab, block=["great", "terrible"])
    spy = _Spy(tiny_backend, disc)
    init = initial_embeds(vocab, 4, "vocab", "", seed=0, allowed=disc.allowed)
    trained = train_prompt(tiny_task, tiny_backend, init, spy, PEZConfig(steps=8, eval_every=4, batch_size=4, seed=0))
    assert len(spy.fed) == 8
    for prompt, fed in spy.fed + [(trained.best, None)]:
        ids = torch.tensor(prompt.token_ids)
        assert len(ids) == 4 and bool(disc.allowed[ids].all())
        assert all(t.strip().lower() not in ("great", "terrible") for t in map(vocab.tokenizer.decode, ids.tolist()))
        assert prompt.text == vocab.tokenizer.decode(prompt.token_ids)
        if fed is not None:  # the model saw exactly those tokens' embeddings, not the continuous vectors
            torch.testing.assert_close(fed, vocab.embeddings[ids])


def test_pez_loss_decreases(tiny_backend, tiny_task):
    task = _learning_task(tiny_task)
    result = run_pez(task, tiny_backend, PEZConfig(steps=10, eval_every=2, batch_size=0, prompt_tokens=3, seed=0))
    vocab = tiny_backend.vocabulary()
    disc = Discretizer(vocab)
    init = disc.project(initial_embeds(vocab, 3, "vocab", "", seed=0, allowed=disc.allowed))  # PEZ's start
    before = evaluate(tiny_backend, init, task.train, task.format).loss
    after = evaluate(tiny_backend, result.best, task.train, task.format).loss
    assert after < before - 0.005
    assert isinstance(result.best, HardPrompt) and result.prompt_text == result.best.text


def test_pez_record(tiny_backend, tiny_task):
    result = run_pez(tiny_task, tiny_backend, PEZConfig(**FAST, seed=2))
    assert result.method == "pez" and result.train_calls == 6 and result.cost.backward_passes == 6
    assert isinstance(result.best, HardPrompt) and result.best.n_tokens == 3
    assert result.as_dict()["prompt_kind"] == "hard"


# ---------------------------------------------------------------------- manual and in-context


def test_manual_is_the_template_alone(tiny_backend, tiny_task):
    result = run_manual(tiny_task, tiny_backend, seed=7)
    assert result.prompt_text == "" and result.best == HardPrompt((), "")
    assert result.train_calls == 0 and result.cost.calls == 2 and result.cost.backward_passes == 0
    assert result.curve == ((0, result.dev_acc),)


def test_in_context_demonstrations(tiny_backend, tiny_task):
    config = InContextConfig(shots_per_class=2, seed=5)
    result = run_in_context(tiny_task, tiny_backend, config)
    demos = sample_demonstrations(tiny_task.train, tiny_task.format, 2, seed=5)
    assert sorted(d.label for d in demos) == ["negative"] * 2 + ["positive"] * 2
    assert all(d in tiny_task.train for d in demos)
    for d in demos:
        word = tiny_task.format.verbalizer[d.label]
        assert f"{d.text} It was{word}\n" in result.prompt_text
    assert result.placement == "prefix" and result.note.startswith("2 per class")
    assert run_in_context(tiny_task, tiny_backend, config).prompt_text == result.prompt_text  # seeded
    assert sample_demonstrations(tiny_task.train, tiny_task.format, 2, seed=6) != demos


def test_in_context_needs_enough_examples(tiny_backend, tiny_task):
    with pytest.raises(TaskError, match="shots_per_class"):
        run_in_context(tiny_task, tiny_backend, InContextConfig(shots_per_class=50))


# ---------------------------------------------------------------------- BBT records


def test_bbt_soft_and_discrete_share_one_search(tiny_backend, tiny_task):
    config = TuneConfig(budget_calls=12, popsize=4, intrinsic_dim=4, prompt_tokens=3, eval_every=4, seed=0)
    soft, discrete = run_bbt(tiny_task, tiny_backend, config, "bbt_soft", "bbt_discrete")
    assert isinstance(soft.best, SoftPrompt) and soft.prompt_text is None and soft.train_calls == 12
    assert isinstance(discrete.best, HardPrompt) and discrete.prompt_text == discrete.best.text
    assert discrete.cost == soft.cost and "shared" in discrete.note
    assert soft.curve[0][0] == 0 and soft.curve[-1][0] == 12
    hard, none = run_bbt(tiny_task, tiny_backend, replace(config, mode="hard"), "bbt_hard", "unused")
    assert none is None and isinstance(hard.best, HardPrompt) and hard.prompt_text == hard.best.text


# ---------------------------------------------------------------------- plumbing


def test_gradient_methods_need_a_gradient_backend(tiny_task):
    backend = LocalBackend("tiny")
    backend.capabilities = Capabilities(soft=True, hard=True, gradients=False)
    with pytest.raises(CapabilityError, match="gradient"):
        run_prompt_tuning(tiny_task, backend, PromptTuningConfig(**FAST))


def test_frozen_restores_requires_grad(tiny_backend):
    params = list(tiny_backend.model.parameters())
    params[0].requires_grad_(False)
    before = [p.requires_grad for p in params]
    with frozen(tiny_backend.model):
        assert not any(p.requires_grad for p in params)
    assert [p.requires_grad for p in params] == before
    params[0].requires_grad_(True)


def test_meter_measures_only_its_own_block(tiny_backend, tiny_task):
    tiny_backend.score([HardPrompt((), "")], tiny_task.dev, tiny_task.format)
    with Meter(tiny_backend) as meter:
        tiny_backend.score([HardPrompt((), "")] * 3, tiny_task.dev, tiny_task.format)
    m = meter.measurement
    assert m.calls == 3 and m.forward_passes >= 1 and m.backward_passes == 0 and m.wall_s > 0
    assert m.mem_kind in ("rss_peak", "rss_peak_lifetime") and m.peak_mem_mb > 0


def test_result_as_dict_is_flat_json(tiny_backend, tiny_task):
    d = run_manual(tiny_task, tiny_backend).as_dict()
    assert {"method", "seed", "dev_acc", "test_acc", "calls", "forward_passes", "backward_passes", "wall_s",
            "peak_mem_mb", "curve", "prompt_text"} <= set(d) and "best" not in d


@pytest.mark.parametrize("cls, kwargs, field", [
    (GradientConfig, {"steps": 0}, "steps"),
    (GradientConfig, {"prompt_tokens": 0}, "prompt_tokens"),
    (GradientConfig, {"eval_every": 0}, "eval_every"),
    (GradientConfig, {"batch_size": -1}, "batch_size"),
    (GradientConfig, {"lr": 0}, "lr"),
    (GradientConfig, {"weight_decay": -1}, "weight_decay"),
    (PromptTuningConfig, {"init": "text"}, "init_text"),
    (PEZConfig, {"vocab_filter": "emoji"}, "vocab_filter"),
    (InContextConfig, {"shots_per_class": 0}, "shots_per_class"),
    (InContextConfig, {"separator": ""}, "separator"),
])
def test_configs_name_the_bad_field(cls, kwargs, field):
    with pytest.raises(ConfigError, match=field):
        cls(**kwargs)


def test_unknown_init_is_a_value_error():
    with pytest.raises(ValueError):
        PromptTuningConfig(init="glove")


def test_the_calibrated_manual_baseline_is_the_tuners_calibrated_manual_prompt(tiny_backend, tiny_task):
    from bbtune.baselines.manual import run_manual_calibrated
    from bbtune.runs.tuner import TuneConfig, run_tuner

    baseline = run_manual_calibrated(tiny_task, tiny_backend)
    run = run_tuner(tiny_task, tiny_backend, TuneConfig(budget_calls=6, popsize=6, intrinsic_dim=4, prompt_tokens=2,
                                                    p0="vocab"), progress=False)
    assert baseline.test_acc == run.metrics["manual_calibrated_test_acc"]
    assert baseline.dev_acc == run.metrics["manual_calibrated_dev_acc"]


def test_contextual_calibration_makes_content_free_inputs_score_every_label_alike(tiny_backend, tiny_task):
    from bbtune.baselines.incontext import (CONTENT_FREE, InContextConfig, contextual_bias, in_context_prompt,
                                            run_in_context)
    from bbtune.search.losses import label_log_softmax
    from bbtune.tasks import Example

    task = tiny_task.with_placement("prefix")
    prompt = in_context_prompt(task, tiny_backend.tokenizer, InContextConfig(shots_per_class=2, seed=3))
    bias = contextual_bias(tiny_backend, prompt, task.format)
    free = tiny_backend.score([prompt], [Example(t, "positive") for t in CONTENT_FREE], task.format)[0]
    raw = np.exp(label_log_softmax(free[None]))[0].mean(axis=0)
    calibrated = np.exp(label_log_softmax((free + bias)[None]))[0]
    assert not np.allclose(raw, 0.5, atol=1e-3)  # the demonstrations do tilt the prior (else this proves nothing)
    assert np.allclose(np.exp(-bias) / np.exp(-bias).sum(), raw)  # the bias is minus the log prior
    assert np.allclose(calibrated.mean(axis=0), 0.5, atol=0.05)
    record = run_in_context(tiny_task, tiny_backend, InContextConfig(shots_per_class=2, seed=3, calibration="contextual"))
    assert record.method == "in_context_calibrated" and "contextual" in record.note


def test_in_context_train_calibration_is_the_bias_fitted_on_the_training_split(tiny_backend, tiny_task):
    """`in_context_train`: the demonstrations' prompt with one bias per label fitted on train (what the probe's
    median threshold amounted to), reported under its own name."""
    from bbtune.baselines.incontext import InContextConfig, in_context_prompt, run_in_context
    from bbtune.search.evaluate import evaluate, fitted_bias

    task = tiny_task.with_placement("prefix")
    config = InContextConfig(shots_per_class=2, seed=3, calibration="train")
    record = run_in_context(tiny_task, tiny_backend, config)
    prompt = in_context_prompt(task, tiny_backend.tokenizer, config)
    bias = fitted_bias(tiny_backend, prompt, task.train, task.format)
    assert record.method == "in_context_train" and "calibration train" in record.note and np.any(bias != 0)
    for split, acc in ((task.dev, record.dev_acc), (task.test, record.test_acc)):
        assert acc == evaluate(tiny_backend, prompt, split, task.format, label_bias=bias).accuracy


def test_prompt_tuning_from_the_cue_starts_at_the_calibrated_manual_prompt(tiny_backend, tiny_task):
    """Like for like with BBT's default: same start (the cue's embeddings in the cue's place), same length, same
    calibration; before any step the prompt scores exactly as the calibrated manual prompt does."""
    from bbtune.baselines.manual import run_manual_calibrated

    config = PromptTuningConfig(**{**FAST, "steps": 1, "eval_every": 1}, init="cue", calibrate=True, lr=1e-9, seed=1)
    tuned = run_prompt_tuning(tiny_task, tiny_backend, config)
    manual = run_manual_calibrated(tiny_task, tiny_backend)
    assert tuned.curve[0][1] == manual.dev_acc  # step 0 is the cue itself, calibrated on train like the manual
    cue_ids = tiny_backend.tokenizer.encode(" It was", add_special_tokens=False)
    assert tuned.best.embeds.shape[0] == len(cue_ids)
    with pytest.raises(bbtune.errors.ConfigError, match="cue words"):
        run_prompt_tuning(tiny_task.with_placement("prefix"), tiny_backend, config)
