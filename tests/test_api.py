"""The public API (`import bbtune`), the scikit-learn estimator and the examples (run on the tiny model through
their own flags and environment variables). The README's and the guide's code blocks run in tests/docs/test_docs.py.
"""
from __future__ import annotations

import dataclasses
import inspect
import pydoc
import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score

import bbtune
from bbtune.runs.tuner import Tuner

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(budget_calls=12, popsize=6, intrinsic_dim=10, progress=False)


def test_help_shows_the_api():
    text = pydoc.render_doc(bbtune, renderer=pydoc.plaintext)
    for name in ("tune(", "load_task(", "load_run(", "compare(", "PromptClassifier", "TuneConfig", "VERSION"):
        assert name in text, name
    assert set(bbtune.__all__) <= set(dir(bbtune))
    assert "Any" not in bbtune.__all__ and not hasattr(bbtune, "Any")
    assert re.match(r"\d+\.\d+", bbtune.__version__)
    assert (ROOT / "bbtune" / "py.typed").exists()


def test_a_text_servers_answer_rules_are_public(tiny_task):
    rules = bbtune.RemoteConfig(answer_synonyms="positive=great").answer_rules(tiny_task.format)
    assert isinstance(rules, bbtune.AnswerRules)
    assert rules.label("Great!") == "positive" and rules.label("no idea") is None


def test_a_lone_string_is_one_entry_of_a_several_strings_field():
    """`block_list="spam"` once blocked the letters s, p, a, m without a word of warning."""
    from bbtune.app.compare import check_methods
    from bbtune.baselines import PEZConfig

    assert bbtune.TuneConfig(block_list="spam").block_list == ("spam",)
    assert PEZConfig(block_list="spam").block_list == ("spam",)
    assert check_methods("manual") == ("manual",)
    assert bbtune.RemoteConfig(extra_headers="X-Team: a").extra_headers == ("X-Team:a",)


def test_tune_then_predict_in_memory_and_from_the_folder(tiny_task, tmp_path):
    in_memory = bbtune.tune(tiny_task, model="tiny", seed=3, **SMALL)
    saved = bbtune.tune(tiny_task, model="tiny", seed=3, run_dir=tmp_path / "run", **SMALL)
    texts = ["a great film", "I hate it"]
    assert in_memory.metrics["test_acc"] == saved.metrics["test_acc"]
    assert in_memory.predict(texts) == saved.predict(texts) == bbtune.load_run(tmp_path / "run").predict(texts)
    assert in_memory.path is None and saved.path == tmp_path / "run"


def test_help_lists_every_option_with_its_meaning():
    tune_help = pydoc.render_doc(bbtune.tune, renderer=pydoc.plaintext)
    config_help = pydoc.render_doc(bbtune.TuneConfig, renderer=pydoc.plaintext)
    for f in dataclasses.fields(bbtune.TuneConfig):
        line = f"`{f.name}` (default"
        assert line in tune_help and line in config_help, f.name
    assert "`budget_calls` (default `300`): model calls (candidates scored on train)" in tune_help
    assert "`data_seed` (default `13`)" in pydoc.render_doc(bbtune.TaskConfig, renderer=pydoc.plaintext)


def test_one_load_task_with_one_default_seed():
    from bbtune.tasks import TaskConfig, load_task

    assert bbtune.load_task is load_task
    assert inspect.signature(load_task).parameters["seed"].default == TaskConfig().data_seed
    assert bbtune.load_task("demo", k=2).train == TaskConfig(data="demo", k=2).load().train
    words = {"negative": " bad", "positive": " good"}
    assert dict(bbtune.load_task("demo", k=2, verbalizer=words).format.verbalizer) == words


def test_the_run_has_its_curve_and_decision_in_memory_and_from_the_folder(tiny_task, tmp_path):
    run = bbtune.tune(tiny_task, model="tiny", seed=3, run_dir=tmp_path / "run", **SMALL)
    again = bbtune.load_run(tmp_path / "run")
    assert run.curve and [row["calls"] for row in again.curve] == [row["calls"] for row in run.curve]
    assert isinstance(again.curve[-1]["train_loss"], float)
    assert run.decision == again.decision and run.decision is not None and run.decision.reason


def test_tune_takes_a_remote_config_and_keeps_its_backend_open_for_predict(tiny_task):
    from mock_server import MockServer, ServerConfig

    with MockServer(ServerConfig(model="tiny", port=0)) as server:
        api = bbtune.RemoteConfig(base_url=server.url, model="tiny", local_model="tiny", mode="echo")
        with bbtune.tune(tiny_task, backend=api, mode="hard", **SMALL) as run:
            assert isinstance(run.backend, bbtune.RemoteBackend)
            assert run.predict(["a great film"])[0].label in tiny_task.format.labels


def test_a_dry_run_sweep_is_a_sweep_result_too(tmp_path):
    spec = {"grid": {"methods": ["manual"], "seeds": [1], "models": ["tiny"],
                     "tasks": [{"name": "demo", "data": "demo", "k": 2}]}}
    result = bbtune.sweep(spec, out=tmp_path / "sweep", dry_run=True)
    assert isinstance(result, bbtune.SweepResult) and "dry run" in result.plan and not result.ran
    assert not (tmp_path / "sweep").exists()


def test_tune_options_are_config_fields(tiny_task):
    with pytest.raises(TypeError, match="budget"):
        bbtune.tune(tiny_task, model="tiny", budget=12)  # a typo is refused, not ignored


def test_the_tuner_can_run_twice_and_never_changes_its_task(tiny_backend):
    task = bbtune.load_task("demo", k=2, seed=1, template="Review: {text}\nSentiment:{label}")
    before = task.format.template.pattern
    tuner = Tuner(task, tiny_backend, bbtune.TuneConfig(budget_calls=12, popsize=6, intrinsic_dim=10, p0="cue"),
                  progress=False)
    first, second = tuner.run(), tuner.run()
    assert tuner.task is task and task.format.template.pattern == before
    assert first.metrics["test_acc"] == second.metrics["test_acc"] and first.curve == second.curve


def test_load_task_and_compare_by_name():
    report = bbtune.compare(lambda seed: bbtune.load_task("demo", k=2, seed=seed, test_limit=8), model="tiny",
                            methods=["manual", "bbt_soft"], seeds=(1,), progress=False,
                            settings=bbtune.MethodSettings(bbt=bbtune.TuneConfig(budget_calls=12, popsize=6)))
    assert [r.method for r in report.results] == ["manual", "bbt_soft"]
    assert all(r.test_acc is not None for r in report.results)


# ---------------------------------------------------------------- the scikit-learn estimator

TEXTS = ["a great film", "I love it", "wonderful acting", "an excellent story", "good fun for everyone",
         "the story is great", "a terrible film", "I hate it", "bad acting", "a boring movie", "the ending is awful",
         "an awful film"]
LABELS = [1] * 6 + [0] * 6


def classifier(**kw) -> bbtune.PromptClassifier:
    params = dict(model="tiny", template="{text} It was{label}", verbalizer={"0": " terrible", "1": " great"},
                  budget_calls=12, popsize=6, intrinsic_dim=10)
    return bbtune.PromptClassifier(**{**params, **kw})


def test_estimator_fit_predict_proba_score():
    clf = classifier().fit(TEXTS, LABELS)
    proba = clf.predict_proba(TEXTS)
    assert proba.shape == (12, 2) and np.allclose(proba.sum(axis=1), 1)
    assert list(clf.classes_) == [0, 1]
    assert set(clf.predict(TEXTS)) <= {0, 1} and clf.predict(TEXTS).dtype == np.asarray(LABELS).dtype
    assert np.array_equal(clf.predict(TEXTS), clf.classes_[proba.argmax(axis=1)])
    assert clf.score(TEXTS, LABELS) == np.mean(clf.predict(TEXTS) == np.asarray(LABELS))


def test_estimator_params_clone_and_model_selection():
    clf = classifier()
    assert clf.get_params()["budget_calls"] == 12
    assert clone(clf.set_params(budget_calls=18)).get_params()["budget_calls"] == 18
    assert len(cross_val_score(classifier(), TEXTS, LABELS, cv=2)) == 2
    search = GridSearchCV(classifier(), {"random_state": [0, 1]}, cv=2).fit(TEXTS, LABELS)
    assert search.best_params_["random_state"] in (0, 1)


def test_estimator_refuses_bad_input():
    with pytest.raises(bbtune.BBTuneError, match="one label per text"):
        classifier().fit(TEXTS, LABELS[:-1])
    with pytest.raises(bbtune.BBTuneError, match="row 0"):
        classifier().fit([3] + TEXTS[1:], LABELS)


# ---------------------------------------------------------------- examples


def test_the_notebook_example_runs(capsys):
    sys.modules.pop("notebook_example", None)
    runpy.run_path(str(ROOT / "examples" / "notebook.py"), run_name="notebook_example")["main"](
        ["--model", "tiny", "--budget", "12"])
    out = capsys.readouterr().out
    assert "returned the" in out and "2-fold accuracy" in out


def test_the_mock_example_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "mock_offline.py"), run_name="mock_example")["main"](
        ["--model", "tiny", "--budget", "12", "--k", "2"])
    out = capsys.readouterr().out
    assert "same result with and without faults: True" in out and "cache hits" in out


def test_the_remote_example_runs_against_the_mock(monkeypatch, tmp_path, capsys):
    from mock_server import MockServer, ServerConfig

    with MockServer(ServerConfig(model="tiny", port=0, max_logprobs=20)) as server:
        for name, value in {"BBTUNE_BASE_URL": server.url, "BBTUNE_MODEL": "tiny", "BBTUNE_LOCAL_MODEL": "tiny",
                            "BBTUNE_MODE": "echo", "BBTUNE_BUDGET": "12", "BBTUNE_RUN_DIR": str(tmp_path / "run"),
                            "BBTUNE_CACHE": str(tmp_path / "cache")}.items():
            monkeypatch.setenv(name, value)
        assert runpy.run_path(str(ROOT / "examples" / "remote_openai.py"), run_name="remote_example")["main"]() == 0
    assert "test acc" in capsys.readouterr().out


def test_every_example_is_run_by_a_test():
    """A new script in examples/ must get its own run above (this lists what the tests above run)."""
    run_here = {"notebook.py", "mock_offline.py", "remote_openai.py"}
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == run_here
