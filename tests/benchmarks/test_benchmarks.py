"""The benchmark scripts' own logic that needs no model: merging per-seed outputs into one table."""
from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(monkeypatch, name: str) -> dict:
    """A benchmark script's namespace, run fresh (the scripts import their shared task_args from benchmarks/)."""
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop(f"{name}_script", None)
    return runpy.run_path(str(BENCH / f"{name}.py"), run_name=f"{name}_script")


def row(seed: int, method: str, test_acc: float, manual: float) -> dict:
    return {"seed": seed, "placement": "suffix", "method": method, "dev_acc": 0.8, "test_acc": test_acc,
            "gain": test_acc - manual, "calls": 300, "wall_s": 10.0, "total_s": 12.0}


@pytest.fixture()
def sst2_bbt(monkeypatch):
    return load_script(monkeypatch, "sst2_bbt")


def test_merge_joins_per_seed_outputs_into_one_table(sst2_bbt, tmp_path, capsys):
    for seed, soft in ((13, 0.82), (42, 0.80), (100, 0.84)):
        runs = [row(seed, "manual", 0.78, 0.78), row(seed, "bbt_soft", soft, 0.78)]
        (tmp_path / f"s{seed}.json").write_text(json.dumps({"runs": runs}))
    out = tmp_path / "merged.json"
    sst2_bbt["main"](["--merge", *(str(tmp_path / f"s{s}.json") for s in (13, 42, 100)), "--out", str(out)])
    merged = json.loads(out.read_text())
    assert [r["seed"] for r in merged["runs"] if r["method"] == "bbt_soft"] == [13, 42, 100]
    soft = next(r for r in merged["summary"] if r["method"] == "bbt_soft")
    assert soft["test_acc mean"] == pytest.approx(82.0) and soft["test std"] == pytest.approx(2.0)  # sample std
    assert soft["gain per seed"] == "+4.0 +2.0 +6.0"
    assert "| suffix    | bbt_soft" in capsys.readouterr().out


def test_compare_merge_joins_per_seed_report_folders(monkeypatch, tmp_path):
    from bbtune.app.comparison import Comparison, MethodSettings
    from bbtune.app.report import write_report
    from bbtune.baselines import Measurement, MethodResult

    monkeypatch.syspath_prepend(str(BENCH))
    script = runpy.run_path(str(BENCH / "compare_sst2.py"), run_name="compare_sst2_script")
    for seed, acc in ((13, 0.7), (42, 0.9)):
        result = MethodResult("manual", seed, "suffix", acc, acc, 0, Measurement(calls=2), curve=((0, acc),))
        write_report(Comparison("sst2", "local:tiny", ("manual",), (seed,), MethodSettings(), [result],
                                out_dir=tmp_path / f"s{seed}"), plot=False)
    merged = script["merge_reports"]([str(tmp_path / "s13"), str(tmp_path / "s42")], str(tmp_path / "all"))
    assert merged.seeds == (13, 42)
    summary = json.loads((tmp_path / "all" / "results.json").read_text())["summary"][0]
    assert summary["seeds"] == [13, 42] and summary["test_acc_mean"] == pytest.approx(0.8)


@pytest.mark.parametrize("name, jobs", [("sst2_bbt", 12), ("agnews_bbt", 12), ("compare_sst2", 24)])
def test_the_sweep_specs_replace_the_merge_loops(name, jobs):
    from bbtune.app.sweepspec import SweepSpec

    spec = SweepSpec.load(BENCH / "specs" / f"{name}.toml")
    assert len(spec.jobs) == jobs and {job.seed for job in spec.jobs} == {13, 42, 100}
    assert spec.config.out == f"sweeps/{name}"


def test_matrix_summarizes_a_sweep(tmp_path, monkeypatch):
    """The matrix's methods on the tiny model, two tasks, as sweep job folders (run in this process: the pool is
    the sweep's own test): one row per finished job, gains over the calibrated manual prompt per cell, goal lines,
    the wall-time table, the unfinished job named, files."""
    from bbtune.app.sweep import job_folder, run_job
    from bbtune.app.sweepspec import SweepSpec

    methods = ["manual", "manual_calibrated", "in_context_calibrated", "bbt_soft", "prompt_tuning"]
    tasks = [{"name": name, "data": "demo", "k": 2, "test_limit": 8} for name in ("a", "b")]
    grid = {"methods": methods, "seeds": [1], "models": ["tiny"], "tasks": tasks}
    spec = SweepSpec.from_dict({"sweep": {"out": str(tmp_path / "sweep")}, "grid": grid,
                                "settings": {"budget_calls": 10, "popsize": 10, "intrinsic_dim": 4, "grad_steps": 1,
                                             "grad_batch_size": 0}}, name="m")
    (tmp_path / "m.toml").write_text(f"[grid]\nmethods = {json.dumps(methods)}\nseeds = [1]\nmodels = [\"tiny\"]\n" +
                                     "".join(f'[[grid.tasks]]\nname = "{t["name"]}"\n' for t in tasks))
    for job in spec.jobs:
        folder = job_folder(tmp_path / "sweep", job.name)
        folder.mkdir(parents=True)
        (folder / "job.json").write_text(json.dumps(job.as_dict()))
        if job is not spec.jobs[-1]:  # the last job stays unfinished, as in a partial sweep
            assert run_job(job.as_dict(), str(folder))["ok"]
    matrix = load_script(monkeypatch, "matrix")
    matrix["main"]([str(tmp_path / "sweep"), "--out", str(tmp_path / "out"), "--spec", str(tmp_path / "m.toml")])
    data = json.loads((tmp_path / "out" / "matrix.json").read_text())
    assert len(data["rows"]) == 2 * len(methods) - 1
    last = spec.jobs[-1].as_dict()["coords"]
    assert data["unfinished"] == [f"{last['task']}-tiny-{last['method']}-s1"]
    cell = {(r["task"], r["method"]): r["test_acc"] for r in data["rows"]}
    assert len(data["gains"]) == 2 * (len(methods) - 1) - 1
    for g in data["gains"]:
        assert g["gain"] == pytest.approx(cell[(g["task"], g["method"])] - cell[(g["task"], "manual_calibrated")])
    assert (tmp_path / "out" / "matrix.png").stat().st_size > 0
    md = (tmp_path / "out" / "matrix.md").read_text()
    assert md.startswith("| task | model | manual ") and "safety" in md and "BBT soft >= prompt tuning: " in md
    assert "| all methods, one seed |" in md and f"Cells of the grid not measured yet: 1 ({last['method']} 1;" in md


def test_matrix_takes_rows_from_a_selection_study_and_an_earlier_matrix(tmp_path, monkeypatch):
    """selection.py's test columns become matrix rows (its dev_acc pick behind the agree guard is BBT soft at the
    defaults, behind the paired guard bbt_soft_paired; demos_lever.py's columns in_context_train and
    bbt_soft_or_demos); an earlier matrix.json's rows join them, the study winning a duplicate's accuracy and the
    earlier row keeping the wall time the study lacks."""
    run = {"data": "sst2", "model": "/models/smollm2", "seed": 13, "calibrate": "on", "heldout_acc": {},
           "search_wall_s": 90.0,
           "test_acc": {"manual": 0.70, "manual_calibrated": 0.75, "dev_acc": 0.81, "demos": 0.79,
                        "default|demos": 0.81},
           "decisions": {"dev_acc": {"dev_acc_margin": 0.0625, "wins": 2, "losses": 0, "loss_p_value": 0.3,
                                     "loss_worse_p_value": 0.7, "reason": "..."}}}  # agree passes, paired does not
    (tmp_path / "sel.json").write_text(json.dumps({"runs": [run]}))
    earlier = [{"task": "sst2", "model": "smollm2", "seed": 13, "method": "bbt_hard", "test_acc": 77.0, "wall_s": 60.0},
               {"task": "sst2", "model": "smollm2", "seed": 13, "method": "manual", "test_acc": 71.0, "wall_s": 5.0}]
    (tmp_path / "old.json").write_text(json.dumps({"rows": earlier}))
    matrix = load_script(monkeypatch, "matrix")
    matrix["main"](["--selection", str(tmp_path / "sel.json"), "--rows", str(tmp_path / "old.json"),
                    "--out", str(tmp_path / "out")])
    data = json.loads((tmp_path / "out" / "matrix.json").read_text())
    acc = {r["method"]: r["test_acc"] for r in data["rows"]}
    assert acc == pytest.approx({"manual": 70.0, "manual_calibrated": 75.0, "bbt_soft": 81.0, "bbt_soft_paired": 75.0,
                                 "in_context_train": 79.0, "bbt_soft_or_demos": 81.0, "bbt_hard": 77.0})
    walls = {r["method"]: r["wall_s"] for r in data["rows"]}
    assert walls == {"manual": 5.0, "manual_calibrated": None, "bbt_soft": 90.0, "bbt_soft_paired": None,
                     "in_context_train": None, "bbt_soft_or_demos": None,
                     "bbt_hard": 60.0}  # the study times BBT soft's search only; manual's from the earlier row
    md = re.sub(" +", " ", (tmp_path / "out" / "matrix.md").read_text())
    assert "| sst2 | smollm2 | 0.1 | 1.5 | 1.0 | 2.6 |" in md  # minutes: manual, bbt_soft, bbt_hard, their sum
    gains = {g["method"]: g["gain"] for g in data["gains"]}
    assert gains["bbt_soft"] == pytest.approx(6.0) and gains["bbt_soft_paired"] == pytest.approx(0.0)
    assert "sst2-smollm2-prompt_tuning-s13" in data["unfinished"]


def test_matrix_takes_other_studies_rows_and_checks_each_hosted_readout(tmp_path, monkeypatch):
    """--runs joins rows in the matrix's format (search_readout.py, boosting.py); the hosted-API goals are checked
    for the top-20 readout with and without the label words lifted by a second request."""
    cell = {"task": "trec", "model": "smollm2", "seed": 13, "wall_s": None}
    earlier = [{**cell, "method": "manual", "test_acc": 20.0}, {**cell, "method": "manual_calibrated", "test_acc": 40.0}]
    hosted = [{**cell, "method": "manual_readout_top20", "test_acc": 38.0, "choice": {}},
              {**cell, "method": "manual_readout_top20_labels", "test_acc": 50.0, "choice": {}}]
    studies = [{**cell, "method": "bbt_hard_fold_top20", "test_acc": 55.0, "wall_s": 600.0, "run": {"calls": 300}}]
    for name, rows in (("old", earlier), ("readouts", hosted), ("runs", studies)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"rows": rows}))
    matrix = load_script(monkeypatch, "matrix")
    matrix["main"](["--rows", str(tmp_path / "old.json"), "--readouts", str(tmp_path / "readouts.json"),
                    "--runs", str(tmp_path / "runs.json"), "--out", str(tmp_path / "out")])
    data = json.loads((tmp_path / "out" / "matrix.json").read_text())
    acc = {r["method"]: r["test_acc"] for r in data["rows"]}
    assert acc["bbt_hard_fold_top20"] == 55.0 and acc["manual_readout_top20_labels"] == 50.0
    assert all("run" not in r for r in data["rows"])  # a study's own evidence stays in its file
    goals = data["goals"]  # name -> [met, detail]
    below = [name for name in goals if "no cell below" in name]
    assert sorted(below) == ["hosted API (manual_readout_top20): no cell below max(manual, calibrated) - 1.0",
                             "hosted API (manual_readout_top20_labels): no cell below max(manual, calibrated) - 1.0"]


@pytest.fixture()
def selection(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("selection", None)
    import selection as module  # demos_lever.py imports it by this name
    return module


def study_run(replaced: bool) -> dict:
    """A selection run whose dev_acc pick (dev 0.75, CE 0.50) passed or failed the agree guard against the
    calibrated manual prompt (dev 0.6875, CE 0.55)."""
    decision = {"dev_acc_margin": 0.0625, "dev_loss_margin": 0.05, "wins": 3, "losses": 1, "loss_p_value": 0.2,
                "loss_worse_p_value": 0.8 if replaced else 0.05, "reason": "..."}
    return {"data": "sst2", "model": "smollm2", "seed": 13, "calibrate": "on",
            "dev": {"dev_acc": {"acc": 0.75, "loss": 0.50, "train_ce": 0.4}}, "decisions": {"dev_acc": decision},
            "heldout_acc": {"manual": 0.70, "manual_calibrated": 0.72, "dev_acc": 0.80},
            "test_acc": {"manual": 0.71, "manual_calibrated": 0.73, "dev_acc": 0.79}}


def test_what_a_run_returns_by_default_is_read_from_its_decision(selection):
    assert selection.returned_by_default(study_run(True), 0.1) == {"acc": 0.75, "loss": 0.50}
    refused = selection.returned_by_default(study_run(False), 0.1)  # the calibrated manual prompt, from the margins
    assert refused == pytest.approx({"acc": 0.6875, "loss": 0.55})


@pytest.mark.parametrize("replaced, demos_dev, takes, takes_by_acc", [
    (True, {"acc": 0.78, "loss": 0.49}, True, True),     # beats the tuned pick on both
    (True, {"acc": 0.78, "loss": 0.51}, False, True),    # more right, but the CE says otherwise
    (True, {"acc": 0.75, "loss": 0.40}, False, False),   # a tie in accuracy keeps the run's answer
    (False, {"acc": 0.72, "loss": 0.54}, True, True),    # the run kept the calibrated manual prompt: the bar is lower
])
def test_demonstrations_replace_the_default_answer_only_where_their_rule_says(
        selection, replaced, demos_dev, takes, takes_by_acc):
    demos_lever = runpy.run_path(str(BENCH / "demos_lever.py"), run_name="demos_lever_script")
    demos = {"dev": demos_dev, "heldout_acc": 0.90, "test_acc": 0.88}
    run = demos_lever["with_demos"](study_run(replaced), demos)
    default_heldout, default_test = (0.80, 0.79) if replaced else (0.72, 0.73)
    assert run["demos"]["replaces_default"] == {"default|demos": takes, "default|demos_acc": takes_by_acc}
    assert run["heldout_acc"]["demos"] == 0.90 and run["test_acc"]["demos"] == 0.88
    for rule, took in run["demos"]["replaces_default"].items():
        assert run["heldout_acc"][rule] == (0.90 if took else default_heldout)
        assert run["test_acc"][rule] == (0.88 if took else default_test)
    again = demos_lever["with_demos"](run, run["demos"])  # --tables decides them again from the record
    assert again["demos"]["replaces_default"] == run["demos"]["replaces_default"]


def test_the_selection_tables_carry_the_columns_other_scripts_add(selection):
    runs = [{**study_run(True), "heldout_acc": {**study_run(True)["heldout_acc"], "demos": 0.9, "default|demos": 0.9}}]
    _, overall = selection.summary([selection.with_guards(r, 0.1) for r in runs])
    gains = {line["rule"]: line["gain over calibrated"] for line in overall}
    assert gains["demos"] == pytest.approx(18.0) and gains["default|demos"] == pytest.approx(18.0)
    assert list(gains)[-2:] == ["demos", "default|demos"]  # after the rules selection.py knows


def test_the_demos_tables_cover_every_study_with_or_without_the_demonstrations(selection, tmp_path):
    demos_lever = runpy.run_path(str(BENCH / "demos_lever.py"), run_name="demos_lever_script")
    scored = demos_lever["with_demos"](study_run(True), {"dev": {"acc": 0.9, "loss": 0.3}, "heldout_acc": 0.9,
                                                         "test_acc": 0.9})
    (tmp_path / "a.json").write_text(json.dumps({"runs": [scored]}))
    (tmp_path / "b.json").write_text(json.dumps({"runs": [{**study_run(False), "seed": 42}]}))
    demos_lever["main"]([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--tables", "--out", str(tmp_path / "t.json")])
    overall = {line["rule"]: line for line in json.loads((tmp_path / "t.json").read_text())["overall"]}
    assert overall["manual_calibrated"]["runs"] == 2 and overall["dev_acc+agree"]["runs"] == 2
    assert overall["default|demos"]["runs"] == 1 and overall["default|demos"]["held-out acc"] == pytest.approx(90.0)


def write_toy_sentiment(folder: Path) -> None:
    """A two-label set the tiny model can tune on: 60 sentences, each its label's word, as train and test."""
    words = {"positive": "good fine great nice", "negative": "bad awful poor dull"}
    lines = [json.dumps({"text": f"{words[label].split()[i % 4]} film number {i}", "label": label})
             for i in range(30) for label in words]
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def test_cross_validation_lever_scores_each_rule_on_what_it_returns(monkeypatch, tmp_path):
    """Two folds on the tiny model: each rule's held-out number is its candidate's (the pick behind its guard, else
    the calibrated manual prompt), and the out-of-fold accuracy covers both folds' examples."""
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("selection", None)
    write_toy_sentiment(tmp_path)
    cv = runpy.run_path(str(BENCH / "cv_lever.py"), run_name="cv_lever_script")
    out = tmp_path / "cv.json"
    cv["main"](["--data", str(tmp_path), "--model", "tiny", "--k", "4", "--seeds", "13", "--budget", "20",
                "--heldout", "12", "--test-limit", "10", "--out", str(out)])
    run = json.loads(out.read_text())["runs"][0]
    returned, decisions = run["returned"], run["decisions"]
    assert returned["default"] == ("pick_a" if run["default_replaces"] else "manual_calibrated")
    for rule in ("cv_agree", "cv_paired"):
        assert returned[rule] == ("pick_a" if decisions[rule]["replace"] else "manual_calibrated")
    for rule, pick in (("cv_agree_b64", "pick_a_b64"), ("cv_mean_b64", "mean_b64")):
        assert returned[rule] == (pick if decisions["cv_agree"]["replace"] else "manual_b64")
    assert returned["default|demos_agree"] == ("demos" if decisions["demos"]["replace"] else returned["default"])
    for split in ("heldout_acc", "test_acc"):  # a rule's number is its candidate's
        acc = run[split]
        assert acc["default"] == acc[returned["default"]] and acc["cv_paired"] == acc[returned["cv_paired"]]
        assert acc["default|demos_agree"] == acc[returned["default|demos_agree"]]
    oof = run["out_of_fold"]
    assert oof["tuned"][0] == pytest.approx((oof["pick_a"] + oof["pick_b"]) / 2)  # 8 examples per fold, each half
    assert run["n_test"] == 10


def test_selection_study_searches_the_subspace_it_is_given(selection, tmp_path):
    """`--intrinsic-dim` reaches the tuner: the run records the dimension its search had, and each rule's pick
    is scored on held-out pool examples beside the calibrated manual prompt."""
    write_toy_sentiment(tmp_path)
    out = tmp_path / "sel.json"
    selection.main(["--data", str(tmp_path), "--model", "tiny", "--k", "4", "--seeds", "13", "--budget", "20",
                    "--heldout", "12", "--intrinsic-dim", "7", "--out", str(out)])
    run = json.loads(out.read_text())["runs"][0]
    assert run["intrinsic_dim"] == 7
    assert {"dev_acc", "manual_calibrated", "dev_acc+agree"} <= set(run["heldout_acc"])
    assert "test_acc" not in run  # --test-limit defaults to no test scoring


@pytest.fixture()
def readouts_script(monkeypatch):
    return load_script(monkeypatch, "readouts")


def test_a_shallower_api_is_the_deep_list_cut_and_its_labels_below_the_cut_go_missing(readouts_script):
    import numpy as np

    from bbtune.core.topk import AnswerTopK
    from bbtune.search.answers import Answers

    deep = Answers(np.array([[-0.5, -4.0]]), AnswerTopK.from_pairs([[("a", -0.5), ("b", -1.0), ("c", -4.0)]], k=3))
    cut = readouts_script["at_depth"](deep, 2)
    assert cut.topk.tokens == (("a", "b"),)
    assert cut.labels[0, 0] == -0.5 and np.isnan(cut.labels[0, 1])  # -4.0 is below the 2nd listed value
    asked = readouts_script["at_depth"](deep, 2, labels_asked=True)  # a second request lifts them (logit_bias)
    assert asked.topk.tokens == (("a", "b"),) and asked.labels.tolist() == [[-0.5, -4.0]]
    assert readouts_script["missing_labels"](deep, 2).tolist() == [[False, True]]


def test_a_lift_row_is_the_runs_lifted_readout_and_prices_its_requests(readouts_script, tmp_path):
    """The row reads the template as a run's readout does (the model itself, lifted tokens included) and prices
    one request per input, one more where a label word is below the list, and one per 19 lifted tokens; the
    answers it read are stored, and a second row is refitted from them without the model."""
    import bbtune
    import numpy as np

    from bbtune.backends.local import LocalBackend
    from bbtune.core.prompts import MANUAL_PROMPT
    from bbtune.search.readouts.fitted import fit_run_readout

    task, backend = bbtune.load_task("demo", k=8, test_limit=24), LocalBackend("tiny")
    test = readouts_script["answers_on"](backend, MANUAL_PROMPT, list(task.test), task.format, 40)
    pool = list(task.train) + list(task.dev)
    pool_deep = readouts_script["answers_on"](backend, MANUAL_PROMPT, pool, task.format, 40)
    store = readouts_script["LiftedStore"](tmp_path / "lifted.jsonl")
    row = readouts_script["lift_rows"](task, "tiny", 0, backend, pool_deep, test, 20, 20, store)[0]
    fitted = fit_run_readout(backend, MANUAL_PROMPT, pool, task.format, "auto", 20, 0, 20)
    answers = fitted.answers(backend, MANUAL_PROMPT, list(task.test), task.format)
    assert row["test_acc"] == 100 * np.mean(fitted.log_scores(answers).argmax(axis=1)
                                            == task.format.label_ids(task.test))
    missing = float(readouts_script["missing_labels"](test, 20).any(axis=1).mean())
    assert row["lifted"] == len(fitted.lift) and row["method"] == "manual_readout_top20_lift20"
    assert row["calls_per_input"] == round(1 + missing + (-(-len(fitted.lift) // 19)), 3)
    # the pool: one request per input, one more where a label word is below the list, one per 19 lifted tokens
    missing_pool = int(readouts_script["missing_labels"](pool_deep, 20).any(axis=1).sum())
    assert row["requests_per_run"] == len(pool) * (1 + 2) + missing_pool  # 20 lifted tokens: two rounds of 19

    class NoModel(LocalBackend):
        def score_topk(self, *args, **kwargs):
            raise AssertionError("the stored answers should have been used")

    again = readouts_script["LiftedStore"](tmp_path / "lifted.jsonl")
    assert readouts_script["lift_rows"](task, "tiny", 0, NoModel("tiny"), pool_deep, test, 20, 20, again)[0] == row


def test_a_label_below_a_short_list_is_missing(readouts_script):
    """A top-20 request may list fewer texts than 20 (token ids whose texts merge): a label below its last value
    is not listed and costs a second request, as below a full list's 20th."""
    import numpy as np

    from bbtune.core.topk import AnswerTopK
    from bbtune.search.answers import Answers

    short = Answers(np.array([[-1.0, -3.0], [-0.2, -2.5]]),
                    AnswerTopK.from_pairs([[("a", -0.5), ("b", -2.0)], [("a", -0.2), ("b", -3.5)]], k=20))
    assert readouts_script["missing_labels"](short, 20).tolist() == [[False, True], [False, False]]


def test_only_the_out_of_fold_rows_join_the_matrix(readouts_script, tmp_path):
    rows = [{"method": "manual_logistic_top20", "test_acc": 50.0},
            {"method": "manual_readout_top20", "test_acc": 55.0, "choice": {"kind": "logistic"}}]
    (tmp_path / "r.json").write_text(json.dumps({"rows": rows}))
    assert [r["method"] for r in readouts_script["rows_to_matrix"](tmp_path / "r.json")] == ["manual_readout_top20"]


@pytest.fixture()
def boosting_script(monkeypatch):
    return load_script(monkeypatch, "boosting")


def test_the_boosting_pool_is_the_manual_cue_and_the_cells_own_search_prompts(boosting_script):
    runs = [{"task": "trec", "model": "m", "seed": 13, "run": {"hard_prompt": " Question kind"}},
            {"task": "trec", "model": "m", "seed": 13, "run": {"hard_prompt": " Type:"}},  # kept the manual cue
            {"task": "trec", "model": "m", "seed": 13, "run": {"hard_prompt": " Question kind"}},  # counted once
            {"task": "trec", "model": "m", "seed": 42, "run": {"hard_prompt": " another seed"}},
            {"task": "sst2", "model": "m", "seed": 13, "run": {"hard_prompt": " another task"}}]
    assert boosting_script["pool_texts"](runs, "trec", "m", 13, " Type:") == [" Type:", " Question kind"]


def test_the_boosted_row_reads_each_member_prompt_once_per_input(boosting_script, tiny_backend, tiny_task):
    texts = [" It was", " great film", " bad"]  # in place of the template's cue
    best, boosted = boosting_script["cell_rows"](tiny_task, "tiny", 13, tiny_backend, texts, 5, 3)
    assert (best["method"], boosted["method"]) == ("best_prompt_readout_top5", "boosted_top5")
    members = {m["prompt"] for m in boosted["ensemble"]["members"]}
    assert boosted["calls_per_input"] == len(members) and members <= {0, 1, 2}
    assert [s["prompt"] for s in boosted["singles"]] == texts
    assert all(0 <= r["test_acc"] <= 100 for r in [best, boosted, *boosted["singles"]])
    chosen = max(boosted["singles"], key=lambda s: s["out_of_fold"])  # chosen on the pool, out of fold, not test
    assert (best["prompt"], best["test_acc"]) == (chosen["prompt"], chosen["test_acc"])


def test_either_row_keeps_the_template_unless_the_other_is_better_held_out_beyond_noise(readouts_script):
    def row(method, seed, held_out, test):
        return {"task": "trec", "model": "m", "seed": seed, "method": method, "test_acc": test, "calls_per_run": 2,
                "requests_per_run": 100, "calls_per_input": 1.0, "wall_s": 1.0,
                "choice": {"kind": "residual", "scores": [{"kind": "bias", "accuracy": 0.99},
                                                          {"kind": "residual", "accuracy": held_out}]}}

    rows = [row("a", 1, 0.8, 60.0), row("b", 1, 0.7, 90.0),  # b better on test, worse held out: a is kept
            row("a", 2, 0.6, 60.0), row("b", 2, 0.7, 50.0),  # b better held out beyond noise: kept, worse on test
            row("a", 3, 0.7, 60.0), row("b", 3, 0.7, 70.0),  # a tie keeps the first
            row("a", 5, 0.6, 60.0), row("b", 5, 0.7, 70.0),  # better held out, but within noise: a is kept
            row("a", 4, 0.9, 60.0)]  # one of the two only: no row
    p_values = {("trec", "m", s): p for s, p in ((1, 0.01), (2, 0.05), (3, 0.01), (5, 0.3))}
    either = {r["seed"]: r for r in readouts_script["either_rows"](rows, "a", "b", "a_or_b", p_values)}
    assert {s: r["kept"] for s, r in either.items()} == {1: "a", 2: "b", 3: "a", 5: "a"}
    assert [either[s]["test_acc"] for s in (1, 2, 3, 5)] == [60.0, 50.0, 60.0, 60.0]
    assert all(r["method"] == "a_or_b" and r["requests_per_run"] == 200 and r["calls_per_run"] == 4
               for r in either.values())
    anyway = {r["seed"]: r["kept"] for r in readouts_script["either_rows"](rows, "a", "b", "x", p_values, alpha=1.0)}
    assert anyway == {1: "a", 2: "b", 3: "a", 5: "b"}  # more accurate held out is enough


def test_the_paired_test_reads_the_pool_examples_both_prompts_read(readouts_script):
    """The demonstrations' pool lacks the examples shown; the test pairs the others by their text."""
    import numpy as np

    from bbtune.search.answers import Answers
    from bbtune.tasks import Example

    pool = [Example(f"x{i}", "ab"[i % 2]) for i in range(40)]
    y = np.array([i % 2 for i in range(40)])
    right_scores, noise = np.where(np.eye(2)[y] > 0, -0.1, -3.0), np.zeros((40, 2))
    good, blind = Answers(right_scores), Answers(noise + np.arange(2)[None] * 0.1)  # blind: always "b"
    y_of = lambda examples: np.array(["ab".index(ex.label) for ex in examples])  # noqa: E731
    p_better = readouts_script["paired_p_value"]((pool, blind, "raw"), (pool[4:], good.select(range(4, 40)), "raw"),
                                                 y_of, 0)
    p_worse = readouts_script["paired_p_value"]((pool, good, "raw"), (pool[4:], blind.select(range(4, 40)), "raw"),
                                                y_of, 0)
    assert p_better < 1e-4 and p_worse == 1.0


def test_the_deep_answers_of_a_template_with_demonstrations_are_kept_per_seed(readouts_script, tmp_path):
    """They are keyed by example text, and each seed draws other demonstrations: one file would hand seed 42 the
    answers seed 13's template gave on the shared test set."""
    cache_file = readouts_script["cache_file"]
    assert cache_file(tmp_path, "m", 2, seed=13) != cache_file(tmp_path, "m", 2, seed=42)
    assert cache_file(tmp_path, "m", 0, seed=13) == cache_file(tmp_path, "m", 0, seed=42) == tmp_path / "m.jsonl"
    assert cache_file(tmp_path, "m", 2, lifted=True) == tmp_path / "lifted-demos2-m.jsonl"  # its keys name the seed
