import json

import numpy as np
import pytest
import torch

from bbtune.backends.base import Backend, Capabilities
from bbtune.constants import CPU_PROMPT_TOKENS
from bbtune.search.discretize import Discretizer
from bbtune.errors import CapabilityError, CheckpointError, ConfigError
from bbtune.core.prompts import HardPrompt, SoftPrompt
from bbtune.runs.folder import RunFolder
from bbtune.search.subspace import Subspace, SubspaceConfig
from bbtune.runs.tuner import TuneConfig, Tuner, calibrate_hard_scale, run_tuner

FAST = dict(prompt_tokens=3, intrinsic_dim=20, popsize=6, eval_every=12, p0="vocab")  # BBT's start: random words


class CountingBackend(Backend):
    """Wraps a backend and records every batch it is asked to score."""

    def __init__(self, inner, soft=True):
        self.inner, self.name, self.stats = inner, "counting", inner.stats
        self.capabilities = Capabilities(soft=soft, hard=True)
        self.batches: list[list] = []

    def score(self, prompts, examples, fmt):
        self.batches.append(list(prompts))
        return self.inner.score(prompts, examples, fmt)

    def vocabulary(self):
        return self.inner.vocabulary()


@pytest.mark.parametrize("budget", [12, 30, 35])
def test_budget_is_counted_in_model_calls_and_never_exceeded(tiny_backend, tiny_task, budget):
    backend = CountingBackend(tiny_backend)
    res = run_tuner(tiny_task, backend, TuneConfig(budget_calls=budget, **FAST), progress=False)
    train_calls = sum(len(b) for b in backend.batches if len(b) == 6)
    assert res.metrics["calls"] == train_calls == (budget // 6) * 6 <= budget
    assert res.metrics["generations"] == budget // 6
    assert res.metrics["eval_calls"] >= 1


def test_same_seed_same_result_other_seed_other(tiny_backend, tiny_task):
    runs = [run_tuner(tiny_task, tiny_backend, TuneConfig(budget_calls=18, seed=s, **FAST), progress=False) for s in (1, 1, 2)]
    assert np.array_equal(runs[0].best_z, runs[1].best_z)
    assert runs[0].curve == runs[1].curve
    assert [r.get("train_loss") for r in runs[0].curve] != [r.get("train_loss") for r in runs[2].curve]


def test_soft_mode_on_text_only_backend_is_refused(tiny_backend, tiny_task):
    with pytest.raises(CapabilityError, match="cannot score soft prompts"):
        run_tuner(tiny_task, CountingBackend(tiny_backend, soft=False), TuneConfig(budget_calls=12, **FAST), progress=False)


def test_hard_mode_scores_only_hard_prompts_that_really_differ(tiny_backend, tiny_task):
    backend = CountingBackend(tiny_backend, soft=False)
    res = run_tuner(tiny_task, backend, TuneConfig(mode="hard", budget_calls=30, **FAST), progress=False)
    assert all(isinstance(p, HardPrompt) for b in backend.batches for p in b)
    first_gen = backend.batches[4]  # after the manual prompt's and p0's train and dev scoring
    assert len({p.token_ids for p in first_gen}) >= 3
    assert backend.batches[0][0].token_ids == ()  # the manual prompt: the template alone
    p0_ids = backend.batches[2][0].token_ids
    changed = np.mean([np.not_equal(p.token_ids, p0_ids).mean() for p in first_gen])
    assert 0.15 < changed < 0.8
    assert isinstance(res.best_prompt, HardPrompt) and res.soft_prompt is None
    assert res.metrics["hard_change_at_sigma0"] == pytest.approx(0.4, abs=0.15)


def test_repeated_hard_candidates_are_scored_once_and_each_gets_its_score(tiny_backend, tiny_task):
    backend = CountingBackend(tiny_backend, soft=False)
    tuner = Tuner(tiny_task, backend, TuneConfig(mode="hard", budget_calls=12, **FAST))
    tuner._setup()
    a, b = HardPrompt((5, 6, 7), "a"), HardPrompt((8, 9, 10), "b")
    scores = tuner._score_unique([a, b, a, a])
    assert [p.token_ids for p in backend.batches[-1]] == [a.token_ids, b.token_ids]
    alone = tiny_backend.score([a, b], tiny_task.train, tiny_task.format)
    assert np.allclose(scores, alone[[0, 1, 0, 0]])
    assert not np.allclose(scores[0], scores[1])


def test_calibration_hits_the_target_share(tiny_backend):
    vocab = tiny_backend.vocabulary()
    disc = Discretizer(vocab)
    sub = Subspace.build(vocab, SubspaceConfig(prompt_tokens=4, intrinsic_dim=30), seed=0, allowed=disc.allowed)
    for target in (0.2, 0.6):
        scale, share = calibrate_hard_scale(sub, disc, sigma0=1.0, target=target, seed=0)
        assert share == pytest.approx(target, abs=0.12)
    low, _ = calibrate_hard_scale(sub, disc, 1.0, 0.2, 0)
    high, _ = calibrate_hard_scale(sub, disc, 1.0, 0.6, 0)
    assert low < high


def test_run_folder_has_every_artifact(tiny_backend, tiny_task, tmp_path):
    res = run_tuner(tiny_task, tiny_backend, TuneConfig(budget_calls=18, **FAST), tmp_path / "run", progress=False)
    folder = RunFolder(tmp_path / "run")
    cfg = folder.read_json("config.json")
    assert cfg["tune"]["budget_calls"] == 18 and cfg["task"]["template"] == "{text} It was{label}"
    curve = folder.read_curve()
    assert [int(r["calls"]) for r in curve] == [0, 6, 12, 18]
    assert curve[0]["dev_acc"] != "" and curve[-1]["dev_acc"] != ""
    tensors = folder.load_tensors("best_prompt.safetensors")
    assert tensors["soft_prompt"].shape == (3, 32) and torch.allclose(tensors["z"].double(), torch.as_tensor(res.best_z))
    hard = folder.read_json("hard_prompt.json")
    assert hard["text"] == res.hard_prompt.text and len(hard["token_ids"]) == 3
    metrics = folder.read_json("metrics.json")
    for key in ("dev_acc", "test_acc", "hard_dev_acc", "hard_test_acc", "calls", "wall_s", "backend_stats"):
        assert key in metrics
    selected = {"tuned": [float(r["dev_acc"]) for r in curve if r["dev_acc"]], "manual": [metrics["manual_calibrated_dev_acc"]]}
    assert metrics["dev_acc"] in selected[metrics["selected"]]
    assert {"manual_test_acc", "gain_over_manual", "label_bias", "stop_reasons"} <= set(metrics)
    assert metrics["gain_over_manual"] == pytest.approx(metrics["test_acc"] - metrics["manual_test_acc"])


def test_resume_continues_to_the_same_result(tiny_backend, tiny_task, tmp_path):
    cfg = TuneConfig(budget_calls=30, **FAST)
    full = run_tuner(tiny_task, tiny_backend, cfg, tmp_path / "full", progress=False)
    short = TuneConfig(**{**cfg.__dict__, "budget_calls": 12})
    run_tuner(tiny_task, tiny_backend, short, tmp_path / "part", progress=False)
    # pretend the run was stopped after 12 calls: same folder, original budget
    ckpt = RunFolder(tmp_path / "part").load_checkpoint()
    ckpt["run_config"]["tune"]["budget_calls"] = 30
    RunFolder(tmp_path / "part").save_checkpoint(ckpt)
    (tmp_path / "part" / "metrics.json").unlink()  # a stopped run has no metrics yet
    resumed = run_tuner(tiny_task, tiny_backend, cfg, tmp_path / "part", progress=False, resume=True)
    assert np.array_equal(resumed.best_z, full.best_z)
    assert len(resumed.curve) == len(full.curve) > 3 and resumed.curve == full.curve


def test_resume_refuses_another_config(tiny_backend, tiny_task, tmp_path):
    run_tuner(tiny_task, tiny_backend, TuneConfig(budget_calls=12, **FAST), tmp_path / "r", progress=False)
    (tmp_path / "r" / "metrics.json").unlink()  # unfinished: a finished run is refused before its config is read
    with pytest.raises(CheckpointError, match="another config"):
        run_tuner(tiny_task, tiny_backend, TuneConfig(budget_calls=12, seed=9, **FAST), tmp_path / "r", progress=False,
             resume=True)
    with pytest.raises(CheckpointError, match="not a run that can resume"):
        run_tuner(tiny_task, tiny_backend, TuneConfig(budget_calls=12, **FAST), tmp_path / "empty", progress=False, resume=True)


@pytest.mark.parametrize("kw, field", [({"budget_calls": 3}, "budget_calls"), ({"eval_every": 0}, "eval_every"),
                                       ({"hard_change": 1.5}, "hard_change"), ({"vocab_filter": "emoji"}, "vocab_filter")])
def test_bad_tune_config_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        TuneConfig(**kw)


@pytest.mark.real_model
@pytest.mark.slow  # 15 s; the default run keeps SmolLM2's scoring, KV-reuse and preset tests (make test-all runs it)
def test_smollm2_end_to_end_train_loss_goes_down(smollm2_backend):
    from bbtune.tasks import TaskConfig

    task = TaskConfig(data="demo", k=4, test_limit=48).load()
    res = run_tuner(task, smollm2_backend, TuneConfig(intrinsic_dim=20, popsize=6, budget_calls=36, eval_every=36),
               progress=False)
    later = [r["train_loss"] for r in res.curve[1:]]
    assert min(later) < res.curve[0]["train_loss"]
    assert res.metrics["calls"] == 36 and res.metrics["p0"] == "cue" and res.metrics["test_n"] == 48
    assert res.metrics["gain_over_manual"] == pytest.approx(res.metrics["test_acc"] - res.metrics["manual_test_acc"])
    json.dumps(res.metrics)


class LimitedBackend(CountingBackend):
    """Raises BudgetExceeded once it has scored `limit` batches, like a remote backend at its request limit."""

    def __init__(self, inner, limit):
        super().__init__(inner)
        self.limit = limit

    def score(self, prompts, examples, fmt):
        from bbtune.errors import BudgetExceeded

        if len(self.batches) >= self.limit:
            raise BudgetExceeded("max_requests=3 reached")
        return super().score(prompts, examples, fmt)


def test_a_backend_hard_limit_ends_the_run_with_its_results_written(tiny_backend, tiny_task, tmp_path):
    # 6 batches: the manual prompt and p0 on train and dev, then two generations of 6 calls
    res = run_tuner(tiny_task, LimitedBackend(tiny_backend, limit=6), TuneConfig(budget_calls=60, **FAST), tmp_path / "r",
               progress=False)
    assert res.metrics["calls"] == 12 and "max_requests=3" in res.metrics["stopped_by"]
    assert "test_acc" not in res.metrics
    assert RunFolder(tmp_path / "r").read_json("metrics.json")["stopped_by"] == res.metrics["stopped_by"]


class QuadraticBackend(Backend):
    """A synthetic backend with a known optimum: the correct label's log-prob is -|p - target|^2 (scaled), the
    other label's 0, so the training loss falls exactly as a soft prompt approaches `target`."""

    name, capabilities = "quadratic", Capabilities(soft=True, hard=True)

    def __init__(self, inner, target):
        self.inner, self.target, self.stats = inner, target, inner.stats

    def score(self, prompts, examples, fmt):
        dist = np.array([float(((p.embeds - self.target) ** 2).sum()) if isinstance(p, SoftPrompt) else 1e3 for p in prompts])
        labels = fmt.label_ids(examples)
        out = np.zeros((len(prompts), len(examples), 2))
        out[:, np.arange(len(examples)), labels] = -dist[:, None] / float((self.target ** 2).sum())
        out[:, np.arange(len(examples)), 1 - labels] = -0.5
        return out

    def vocabulary(self):
        return self.inner.vocabulary()


class NoOpCMA:
    """CMA-ES that never learns: `tell` is ignored, so it keeps sampling around p0 with the initial step."""

    def __init__(self, inner):
        self.inner, self.popsize = inner, inner.popsize

    def ask(self):
        return self.inner.ask()

    def tell(self, candidates, losses):
        self.inner.es.ask()  # keep pycma's ask/tell pairing without updating the distribution

    def stop(self):
        return False

    def stop_reasons(self):
        return {}

    @property
    def best(self):
        return self.inner.best


def test_cma_es_reaches_a_loss_that_random_search_and_a_no_op_optimizer_do_not(tiny_backend, tiny_task, monkeypatch):
    import bbtune.runs.tuner as tuner_module
    from bbtune.search.optimizers import make_optimizer

    cfg = dict(prompt_tokens=3, intrinsic_dim=10, popsize=8, eval_every=400, budget_calls=400, calibrate=False, p0="vocab",
               keep_manual=False, seed=0)
    vocab = tiny_backend.vocabulary()
    sub = Subspace.build(vocab, SubspaceConfig(prompt_tokens=3, intrinsic_dim=10), seed=0,
                         allowed=Discretizer(vocab).allowed)
    z_star = np.random.default_rng(1).standard_normal(10) * 1.5
    backend = QuadraticBackend(tiny_backend, sub.soft_prompt(z_star).embeds)
    finals = {}
    for name in ("cma", "random"):
        finals[name] = run_tuner(tiny_task, backend, TuneConfig(optimizer=name, **cfg), progress=False).metrics["best_train_loss"]
    monkeypatch.setattr(tuner_module, "make_optimizer", lambda c, dim, seed: NoOpCMA(make_optimizer(c, dim, seed)))
    finals["noop"] = run_tuner(tiny_task, backend, TuneConfig(**cfg), progress=False).metrics["best_train_loss"]
    optimum = float(-np.log(1 / (1 + np.exp(-0.5))))  # distance 0: gold log-prob 0 against the other's -0.5
    assert finals["cma"] < optimum + 0.01
    assert finals["random"] > optimum + 0.05 and finals["noop"] > optimum + 0.05


def test_p0_cue_starts_the_search_at_the_manual_prompt(tiny_backend, tiny_task):
    """--p0 cue: the prompt takes the place of the template's cue (' It was'), so z = 0 scores exactly like the
    manual prompt on the original template, and the run reports the manual prompt beside the tuned one."""
    from bbtune.search.evaluate import score_examples

    tuner = Tuner(tiny_task, tiny_backend, TuneConfig(**{**FAST, "p0": "cue", "prompt_tokens": 0}, budget_calls=12))
    res = tuner.run()
    assert tuner.task_.format.template.pattern == "{text}{label}" and tuner.subspace_.n_tokens == 2
    assert tuner.task is tiny_task and tiny_task.format.template.pattern == "{text} It was{label}"  # input untouched
    start = score_examples(tiny_backend, tuner.prompt(np.zeros(tuner.subspace_.dim)), tiny_task.dev, tuner.task_.format)
    manual = score_examples(tiny_backend, HardPrompt((), ""), tiny_task.dev, tiny_task.format)
    assert np.allclose(start, manual, atol=1e-5)
    assert res.metrics["manual_dev_acc"] == pytest.approx(float((manual[0].argmax(1) == tiny_task.format.label_ids(tiny_task.dev)).mean()))


def test_p0_cue_in_hard_mode_starts_from_the_cue_tokens_themselves(tiny_backend, tiny_task):
    tuner = Tuner(tiny_task, tiny_backend, TuneConfig(**{**FAST, "p0": "cue", "prompt_tokens": 0}, mode="hard", vocab_filter="words", budget_calls=12))
    tuner.run()
    cue_ids = tuple(tiny_backend.tokenizer.encode(" It was", add_special_tokens=False))
    assert tuner.manual_.token_ids == cue_ids
    assert tuner.prompt(np.zeros(tuner.subspace_.dim)).token_ids == cue_ids


def test_p0_cue_with_more_prompt_tokens_puts_copies_of_the_cues_first_token_before_it(tiny_backend, tiny_task):
    """The generalization matrix's lever "more prompt tokens": the start reads as the manual prompt after blank
    lines, the manual prompt the run compares against stays the cue itself."""
    cue_ids = tuple(tiny_backend.tokenizer.encode(" It was", add_special_tokens=False))
    padded = (cue_ids[0],) * 3 + cue_ids
    hard = Tuner(tiny_task, tiny_backend, TuneConfig(**{**FAST, "p0": "cue", "prompt_tokens": len(padded)},
                                                     mode="hard", vocab_filter="words", budget_calls=12))
    hard.run()
    assert hard.subspace_.n_tokens == len(padded) and hard.manual_.token_ids == cue_ids
    assert hard.prompt(np.zeros(hard.subspace_.dim)).token_ids == padded
    soft = Tuner(tiny_task, tiny_backend, TuneConfig(**{**FAST, "p0": "cue", "prompt_tokens": len(padded)},
                                                     budget_calls=12))
    metrics = soft.run().metrics
    embeddings = tiny_backend.vocabulary().embeddings.float()
    assert torch.equal(soft.subspace_.p0, embeddings[list(padded)]) and metrics["prompt_tokens_used"] == len(padded)


def test_p0_auto_is_the_cue_where_the_prompt_can_take_its_place_else_random_words(tiny_backend, tiny_task):
    from bbtune.tasks import Template

    auto = {**FAST, "p0": "auto", "prompt_tokens": 0, "budget_calls": 12}
    assert run_tuner(tiny_task, tiny_backend, TuneConfig(**auto), progress=False).metrics["p0"] == "cue"
    asked_for_three = run_tuner(tiny_task, tiny_backend, TuneConfig(**{**auto, "prompt_tokens": 3}), progress=False).metrics
    assert asked_for_three["p0"] == "vocab" and asked_for_three["prompt_tokens_used"] == 3
    prefix = run_tuner(tiny_task.with_placement("prefix"), tiny_backend, TuneConfig(**auto), progress=False).metrics
    assert prefix["p0"] == "vocab" and prefix["prompt_tokens_used"] == CPU_PROMPT_TOKENS
    from bbtune.runs.cue import resolve_p0

    no_cue = tiny_task.with_template(Template("{text}{label}"))
    assert resolve_p0(TuneConfig(**auto), no_cue, tiny_backend.vocabulary()).value == "vocab"


def test_p0_cue_needs_cue_words_and_suffix_placement(tiny_backend, tiny_task):
    from bbtune.tasks import Template

    no_cue = tiny_task.with_template(Template("{text}{label}"))
    with pytest.raises(ConfigError, match="no cue words"):
        run_tuner(no_cue, tiny_backend, TuneConfig(**{**FAST, "p0": "cue", "prompt_tokens": 0}, budget_calls=12), progress=False)
    with pytest.raises(ConfigError, match="prompt_tokens=1 cannot hold it"):
        run_tuner(tiny_task, tiny_backend, TuneConfig(**{**FAST, "p0": "cue", "prompt_tokens": 1}, budget_calls=12),
             progress=False)
    with pytest.raises(ConfigError, match="placement=suffix"):
        run_tuner(tiny_task.with_placement("prefix"), tiny_backend, TuneConfig(**{**FAST, "p0": "cue", "prompt_tokens": 0}, budget_calls=12), progress=False)


class PromptsHurtBackend(QuadraticBackend):
    """The template alone classifies every example right; any tuned prompt scores at random."""

    def score(self, prompts, examples, fmt):
        labels = fmt.label_ids(examples)
        rng = np.random.default_rng(len(examples))
        out = rng.normal(size=(len(prompts), len(examples), 2))
        out[:, 0, labels[0]] = -9.0  # every tuned prompt gets the first example of a batch wrong
        for i, p in enumerate(prompts):
            if isinstance(p, HardPrompt) and not p.token_ids:
                out[i] = -2.0
                out[i, np.arange(len(examples)), labels] = 0.0
        return out


def test_the_result_is_never_worse_than_the_manual_prompt_on_dev_by_the_rule_that_chose_it(tiny_backend, tiny_task):
    backend = PromptsHurtBackend(tiny_backend, None)
    kept = run_tuner(tiny_task, backend, TuneConfig(budget_calls=24, **FAST), progress=False).metrics
    assert kept["selected"] == "manual" and kept["dev_acc"] == 1.0 and kept["test_acc"] == kept["manual_test_acc"] == 1.0
    forced = run_tuner(tiny_task, backend, TuneConfig(budget_calls=24, keep_manual=False, **FAST), progress=False).metrics
    assert forced["selected"] == "tuned" and forced["dev_acc"] < 1.0
