"""Generation tasks: free-text labels, their two scorings (reference log-likelihood, metric on generated answers)
wired into the tuner (fake backend), the built-in set, and runs end to end on the tiny model."""
import importlib.util
import json

import numpy as np
import pytest
import torch

import bbtune
from bbtune.app.cli import main
from bbtune.backends.base import Backend, CallStats, Capabilities
from bbtune.core.prompts import HardPrompt, SoftPrompt
from bbtune.errors import CapabilityError, TaskError, VerbalizerError
from bbtune.runs.tuner import TuneConfig, run_tuner
from bbtune.search.losses import MISSING_LABEL_LOSS
from bbtune.search.objective import AnswerScoring, GenerationObjective
from bbtune.tasks import Example, Task, TaskConfig, TaskFormat, Template, answers_data_dir
from bbtune.tasks.answer_metrics import answer_metric

FMT = TaskFormat(Template("Question: {text}\nAnswer:{label}"), {}, kind="generate")
QA = [("capital of France?", "Paris"), ("plural of mouse?", "mice"), ("2 + 3?", "5"), ("past of go?", "went"),
      ("opposite of hot?", "cold"), ("capital of Peru?", "Lima"), ("plural of foot?", "feet"), ("4 + 4?", "8")]
FAST = dict(prompt_tokens=3, intrinsic_dim=20, popsize=6, eval_every=12, p0="vocab")


def _task(fmt=FMT) -> Task:
    ex = [Example(q, a) for q, a in QA]
    return Task("tiny-answers", fmt, tuple(ex[:4]), tuple(ex[4:6]), tuple(ex[6:]))


class AnswerBackend(Backend):
    """A fake model whose answers get better the more of a prompt's tokens are even ids (soft: the larger the
    prompt's mean): reference log-probs rise smoothly, and an answer is right where quality beats the example's bar.
    Records what it is asked."""

    def __init__(self, vocab_from, *, generate=True, logprobs=True, nan_rows=()):
        self.name, self.stats, self.vocab_from = "answers", CallStats(), vocab_from
        self.capabilities = Capabilities(soft=True, hard=True, generate=generate, logprobs=logprobs)
        self.continuations, self.generate_kwargs, self.nan_rows = [], [], set(nan_rows)

    @staticmethod
    def quality(prompt) -> float:
        if isinstance(prompt, SoftPrompt):
            return float(torch.sigmoid(prompt.embeds.mean() * 50))
        return float(np.mean([t % 2 == 0 for t in prompt.token_ids])) if prompt.token_ids else 0.0

    def continuation_logprobs(self, prompts, examples, fmt, continuations):
        self.continuations.append(continuations)
        self.stats.add(len(prompts), len(examples))
        out = np.array([[[-5.0 * (1 - self.quality(p)) - 0.1 * b] for b in range(len(examples))] for p in prompts])
        for b in self.nan_rows:
            out[:, b] = np.nan
        return out

    def generate(self, prompts, examples, fmt, *, max_tokens=16, n=1, temperature=0.0, stop=("\n",)):
        self.generate_kwargs.append(dict(max_tokens=max_tokens, n=n, temperature=temperature, stop=stop))
        self.stats.add(len(prompts), len(examples))
        return [[[("\n " + ex.label + ("\nmore words" if self.quality(p) > (b + 1) / (len(examples) + 1) else " maybe"))]
                 for b, ex in enumerate(examples)] for p in prompts]

    def score(self, prompts, examples, fmt):
        raise AssertionError("a generation task never asks for label-word scores")

    def vocabulary(self):
        return self.vocab_from.vocabulary()


# ---------------------------------------------------------------- the task kind


def test_a_generation_task_refuses_a_verbalizer():
    with pytest.raises(VerbalizerError, match="takes no verbalizer"):
        TaskFormat(Template("Q: {text}\nA:{label}"), {"paris": " Paris"}, kind="generate")
    for given in ('{"a": " b"}', "names"):
        with pytest.raises(VerbalizerError, match="takes no verbalizer"):
            TaskConfig(data="demo-answers", preset="answer", verbalizer=given).load()


def test_a_generation_task_has_no_label_indices_and_needs_every_answer():
    with pytest.raises(TaskError, match="no label set"):
        FMT.label_ids([Example("q", "a")])
    with pytest.raises(TaskError, match="has no answer"):
        Task("t", FMT, (Example("q", "a"),), (Example("q2", "  "),))


def test_the_reference_follows_the_cue_as_a_model_writes_it():
    assert FMT.answer(Example("q", " Paris ")) == " Paris"
    assert TaskFormat(Template("{text}\nA: {label}"), {}, kind="generate").answer(Example("q", "Paris")) == "Paris"


def test_built_in_answers_load_as_a_generation_task_with_k_examples_per_split():
    task = TaskConfig(data="demo-answers", preset="answer", k=8, data_seed=3).load()
    assert task.format.is_generation and task.name == "demo-answers"
    assert len(task.train) == len(task.dev) == 8 and len(task.test) == 63
    assert not {e.text for e in task.train} & {e.text for e in task.dev}
    with pytest.raises(TaskError, match="need 130"):
        TaskConfig(data="demo-answers", preset="answer", k=65).load()


def test_built_in_answers_are_what_the_script_writes_balanced_and_disjoint():
    spec = importlib.util.spec_from_file_location("generate_answers", answers_data_dir().parent / "generate_answers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    pool, test = module.build()
    for name, rows in (("train.jsonl", pool), ("test.jsonl", test)):
        assert [json.loads(line) for line in (answers_data_dir() / name).read_text().splitlines()] == rows
    assert (len(pool), len(test)) == (64, 63)
    assert all(r["label"].strip() and r["text"].strip() for r in pool + test)
    assert not {r["text"] for r in pool} & {r["text"] for r in test}
    facts = [(r["kind"], r["label"], r["text"].split(" ")[-1]) for r in pool + test]
    assert len(facts) == len({(r["kind"], r["text"]) for r in pool + test})  # every question once
    kinds = {r["kind"] for r in pool}
    assert len(kinds) == 5 and all(sum(r["kind"] == k for r in pool) >= 10 for k in kinds)
    assert module.build() == (pool, test) and module.build(seed=1) != (pool, test)


# ---------------------------------------------------------------- the loss wiring (fake backend)


def test_reference_scoring_is_the_mean_nll_of_each_examples_own_answer(tiny_backend):
    backend, task = AnswerBackend(tiny_backend), _task()
    objective = GenerationObjective(backend, FMT, "reference", answer_metric("exact"))
    good, bad = HardPrompt((2, 4), "good"), HardPrompt((1, 3), "bad")
    scores = objective.train_scores([good, bad], task.train)
    assert backend.continuations[-1] == [[" Paris"], [" mice"], [" 5"], [" went"]]
    assert np.allclose(scores, [[0.0, 0.1, 0.2, 0.3], [5.0, 5.1, 5.2, 5.3]])
    assert np.allclose(objective.losses(scores, objective.biases(scores)), [0.15, 5.15])
    assert objective.biases(scores) is None and not objective.calibrates


def test_a_reference_the_server_could_not_score_costs_at_least_the_worst_scored_one(tiny_backend):
    backend = AnswerBackend(tiny_backend, nan_rows=[1])
    objective = GenerationObjective(backend, FMT, "reference", answer_metric("exact"))
    scores = objective.train_scores([HardPrompt((1, 3), "bad")], _task().train)
    assert scores[0, 1] == pytest.approx(max(MISSING_LABEL_LOSS, 5.3)) and np.isfinite(scores).all()


@pytest.mark.parametrize("metric, wrong", [("exact", 1.0), ("f1", 1 - 2 / 3)])  # "went maybe" for "went"
def test_metric_scoring_is_one_minus_the_metric_of_the_greedy_answer(tiny_backend, metric, wrong):
    backend, task = AnswerBackend(tiny_backend), _task()
    objective = GenerationObjective(backend, FMT, AnswerScoring.METRIC, answer_metric(metric), max_tokens=5)
    half = HardPrompt((2, 1), "half")  # quality 0.5: right on the first two of four examples (bars 0.2, 0.4)
    scores = objective.train_scores([half], task.train)
    assert np.allclose(scores, [[0.0, 0.0, wrong, wrong]])
    assert backend.generate_kwargs[-1] == dict(max_tokens=5, n=1, temperature=0.0, stop=())
    assert backend.continuations == []  # metric scoring needs no log-probs


def test_evaluation_reports_the_metric_and_the_scorings_loss(tiny_backend):
    task = _task()
    half = HardPrompt((2, 1), "half")
    for scoring, loss in (("reference", np.mean([2.5, 2.6, 2.7, 2.8])), ("metric", 0.5)):
        objective = GenerationObjective(AnswerBackend(tiny_backend), FMT, scoring, answer_metric("exact"))
        ev = objective.evaluation(objective.eval_scores(half, task.train), task.train, None)
        assert ev.accuracy == 0.5 and ev.loss == pytest.approx(loss) and ev.n == 4
        assert ev.example_correct == (True, True, False, False)


def test_backends_that_cannot_generate_or_give_logprobs_are_refused_by_name(tiny_backend):
    with pytest.raises(CapabilityError, match="cannot generate text"):
        GenerationObjective(AnswerBackend(tiny_backend, generate=False), FMT, "metric", answer_metric("exact"))
    with pytest.raises(CapabilityError, match="cannot give log-probs.*answer_scoring=metric"):
        GenerationObjective(AnswerBackend(tiny_backend, logprobs=False), FMT, "reference", answer_metric("exact"))
    GenerationObjective(AnswerBackend(tiny_backend, logprobs=False), FMT, "metric", answer_metric("exact"))


@pytest.mark.parametrize("mode, scoring", [("hard", "reference"), ("hard", "metric"), ("soft", "reference")])
def test_the_tuner_minimises_the_generation_loss_and_reports_the_metric(tiny_backend, mode, scoring):
    backend = AnswerBackend(tiny_backend)
    res = run_tuner(_task(), backend, TuneConfig(mode=mode, answer_scoring=scoring, budget_calls=36, seed=3, **FAST),
               progress=False)
    m = res.metrics
    assert m["task_kind"] == "generate" and m["answer_scoring"] == scoring and m["answer_metric"] == "exact"
    assert m["best_train_loss"] <= m["initial_train_loss"]
    assert m["answer_scores"]["manual"]["dev"] == m["manual_dev_acc"] == 0.0  # the template alone: quality 0
    assert 0.0 <= m["answer_scores"]["tuned"]["test"] <= 1.0 and m["test_n"] == 2
    assert "label_bias" not in m and "manual_calibrated_test_acc" not in m
    assert m["skipped"] == ["label calibration (TuneConfig.calibrate): a generation task has no label words to bias"]
    assert m["answer_scores"]["returned"] == m["selected"]
    assert m["dev_acc"] == (m["tuned_dev_acc"] if m["selected"] == "tuned" else m["manual_dev_acc"])


def test_the_tuner_finds_better_answers_than_the_manual_prompt_on_the_fake_model(tiny_backend):
    res = run_tuner(_task(), AnswerBackend(tiny_backend), TuneConfig(mode="hard", answer_scoring="metric", budget_calls=60,
                                                                seed=0, **FAST), progress=False)
    assert res.metrics["tuned_dev_acc"] > res.metrics["manual_dev_acc"]
    assert res.metrics["best_train_loss"] < 1.0


# ---------------------------------------------------------------- the tiny model, end to end


@pytest.fixture(scope="module")
def sharp_tiny():
    """The tiny model with its layers' weights scaled up: at their initial scale its answers ignore the input (it
    repeats the last token), so a decoding bug would go unseen; scaled, every row writes a text of its own."""
    from bbtune.backends.local import LocalBackend
    from bbtune.backends.models import build_tiny_model

    model, tok = build_tiny_model(seed=0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2 and "embed" not in name:
                weight.mul_(25)
    return LocalBackend(model, tok)


def test_local_greedy_generation_matches_argmax_over_full_forwards(sharp_tiny):
    """The cached, left-padded decoding loop writes what step-by-step whole-sequence argmax writes."""
    ex = [Example("capital of France?", "Paris"), Example("a much longer question about plurals?", "mice")]
    prompt = HardPrompt((), " Reply:")
    got = sharp_tiny.generate([prompt], ex, FMT, max_tokens=4, stop=("\n",))
    assert got[0][0] != got[0][1]
    tok, model = sharp_tiny.tokenizer, sharp_tiny.model
    for e, (texts,) in zip(ex, got[0]):
        ids = sharp_tiny.encoder.text_ids(prompt, [e], FMT)[0]
        new: list[int] = []
        for _ in range(4):
            with torch.no_grad():
                new.append(int(model(torch.tensor([ids + new])).logits[0, -1].argmax()))
        expected = tok.decode([t for t in new if t != tok.eos_token_id], skip_special_tokens=True).split("\n")[0]
        assert texts == expected


@pytest.mark.parametrize("placement", ["suffix", "prefix"])
def test_local_soft_prompt_generation_and_reference_scores_agree_with_its_hard_twin(sharp_tiny, placement):
    """A soft prompt holding a hard prompt's token embeddings generates and scores the same, in its place."""
    from dataclasses import replace

    fmt = replace(FMT, placement=placement)
    ex = [Example("capital of France?", "Paris"), Example("2 + 3?", "5")]
    ids = tuple(sharp_tiny.tokenizer.encode(" Reply now", add_special_tokens=False))
    hard = HardPrompt(ids, " Reply now")
    soft = SoftPrompt(sharp_tiny.model.get_input_embeddings().weight[list(ids)].detach().clone())
    conts = [[fmt.answer(e)] for e in ex]
    assert sharp_tiny.generate([soft], ex, fmt, max_tokens=3) == sharp_tiny.generate([hard], ex, fmt, max_tokens=3)
    assert np.allclose(sharp_tiny.continuation_logprobs([soft], ex, fmt, conts),
                       sharp_tiny.continuation_logprobs([hard], ex, fmt, conts), atol=1e-4)


def test_cli_tunes_a_generation_task_on_the_tiny_model_and_says_what_it_skipped(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["tune", "--data", "demo-answers", "--preset", "answer", "--model", "tiny", "--mode", "hard",
                 "--k", "4", "--test-limit", "4", "--budget-calls", "12", "--popsize", "6", "--eval-every", "6",
                 "--answer-metric", "f1", "--run-dir", str(run), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "| dev f1 " in out and "test f1" in out and "manual prompt (template alone)" in out
    assert "skipped for this generation task: label calibration" in err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["answer_metric"] == "f1" and metrics["test_n"] == 4
    config = json.loads((run / "config.json").read_text())
    assert config["task"]["kind"] == "generate" and config["task"]["verbalizer"] == {}
    with pytest.raises(TaskError, match="generation task"):
        bbtune.load_run(run).predict(["capital of Peru?"])


def test_api_tunes_a_generation_task_on_the_tiny_model_with_soft_prompts_and_metric_scoring():
    task = bbtune.load_task("demo-answers", preset="answer", k=4, seed=1, test_limit=3)
    run = bbtune.tune(task, model="tiny", mode="soft", answer_scoring="metric", budget_calls=12, popsize=6,
                      prompt_tokens=3, intrinsic_dim=20, progress=False)
    assert run.metrics["answer_scoring"] == "metric" and run.metrics["mode"] == "soft"
    assert set(run.metrics["answer_scores"]["tuned"]) == {"dev", "test"}
    assert "hard_test_acc" in run.metrics  # the soft prompt's nearest tokens, judged on answers too


def test_compare_refuses_a_generation_task_by_name(tiny_backend):
    from bbtune.app.compare import compare
    from bbtune.errors import ConfigError

    with pytest.raises(ConfigError, match="generation task.*bbtune tune"):
        compare(_task(), AnswerBackend(tiny_backend), methods=["manual"], seeds=[1], progress=False)


def test_dry_run_of_a_generation_task_says_it_is_not_built(capsys):
    code = main(["tune", "--data", "demo-answers", "--preset", "answer", "--dry-run"])
    assert code == 2 and "generation task" in capsys.readouterr().err


class Interrupted(Exception):
    pass


def test_a_killed_generation_run_resumes_to_the_uninterrupted_result(tiny_backend, tmp_path):
    cfg = TuneConfig(mode="hard", answer_scoring="reference", budget_calls=30, seed=5, **FAST)
    whole = run_tuner(_task(), AnswerBackend(tiny_backend), cfg, tmp_path / "whole", progress=False)
    dying = AnswerBackend(tiny_backend)
    calls = {"n": 0}
    original = dying.continuation_logprobs

    def die_on_the_fifth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # past the manual prompt, p0 and a couple of generations
            raise Interrupted
        return original(*args, **kwargs)

    dying.continuation_logprobs = die_on_the_fifth
    with pytest.raises(Interrupted):
        run_tuner(_task(), dying, cfg, tmp_path / "killed", progress=False)
    resumed = run_tuner(_task(), AnswerBackend(tiny_backend), cfg, tmp_path / "killed", progress=False, resume=True)
    assert resumed.curve == whole.curve
    assert resumed.metrics["answer_scores"] == whole.metrics["answer_scores"]


@pytest.mark.parametrize("scoring", ["reference", "metric"])
def test_a_generation_task_tunes_hard_prompts_through_the_mock_server(tmp_path, capsys, scoring):
    """Projection in the loop through an OpenAI-compatible server: references by echo, answers as completions."""
    from mock_server import MockServer, ServerConfig, shared_scorer

    with MockServer(ServerConfig(model="tiny", port=0), scorer=shared_scorer("tiny")) as server:
        code = main(["tune", "--data", "demo-answers", "--preset", "answer", "--k", "4", "--test-limit", "4",
                     "--mode", "hard", "--budget-calls", "12", "--popsize", "6", "--eval-every", "6",
                     "--answer-scoring", scoring, "--backend", "remote", "--remote-base-url", server.url,
                     "--remote-local-model", "tiny", "--remote-mode", "echo", "--run-dir", str(tmp_path / "r"),
                     "--no-progress"])
    out, err = capsys.readouterr()
    # the tiny model never answers right, so exact match is flat: that run ends "flat" (exit 4), said as such
    assert code == (0 if scoring == "reference" else 4), err
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["answer_scoring"] == scoring and metrics["backend"].startswith("remote")
    assert metrics["backend_stats"]["requests"] > 0
    assert scoring == "reference" or "try --answer-scoring reference" in err
    assert set(metrics["answer_scores"]["manual"]) == {"dev", "test"} and "| dev exact " in out
