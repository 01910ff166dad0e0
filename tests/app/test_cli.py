import json


from bbtune.app.cli import build_parser, from_args, main
from bbtune.runs.tuner import TuneConfig


def test_every_config_field_is_a_flag_with_its_default():
    ns = build_parser().parse_args(["tune"])
    assert from_args(TuneConfig, ns) == TuneConfig()
    ns = build_parser().parse_args(["tune", "--intrinsic-dim", "7", "--mode", "hard", "--block-list", "bad", "ugly"])
    cfg = from_args(TuneConfig, ns)
    assert (cfg.intrinsic_dim, cfg.mode.value, cfg.block_list) == (7, "hard", ("bad", "ugly"))
    from bbtune.app.cli import CompareConfig

    assert from_args(CompareConfig, build_parser().parse_args(["compare", "--seeds", "3", "4"])).seeds == (3, 4)


def test_bad_input_exits_2_with_a_message(capsys, tmp_path):
    assert main(["tune", "--data", str(tmp_path / "nowhere"), "--model", "tiny", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bbtune: error:" in err and "nowhere" in err


def test_tune_writes_a_run_folder_and_prints_the_table(capsys, tmp_path):
    code = main(["tune", "--data", "demo", "--k", "4", "--model", "tiny", "--prompt-tokens", "2", "--intrinsic-dim", "8",
                 "--popsize", "4", "--budget-calls", "8", "--mode", "hard", "--run-dir", str(tmp_path / "r"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "| bbtune hard" in out and "test acc" in out
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["cli"]["tune"]["mode"] == "hard" and saved["cli"]["backend"]["model"] == "tiny"


def test_resume_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    assert main(["tune", "--resume", str(tmp_path)]) == 2
    assert "config.json is missing" in capsys.readouterr().err


def test_demo_runs_on_the_tiny_model(capsys, tmp_path):
    assert main(["demo", "--model", "tiny", "--budget-calls", "20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("manual prompt", "BBT soft", "nearest tokens", "BBT hard", "240 test reviews"):
        assert name in out
    for mode in ("soft", "hard"):  # the gain, credited to calibration and to the search separately
        run = json.loads((tmp_path / mode / "metrics.json").read_text())
        gain = 100 * run["gain_over_manual"]
        if run["selected"] == "manual":
            assert f"BBT {mode} returned the calibrated template: {gain:+.1f} points on test, all of it calibration" in out
        else:
            calibration = 100 * (run["manual_calibrated_test_acc"] - run["manual_test_acc"])
            assert (f"the manual prompt: {gain:+.1f} points on test, {calibration:+.1f} from calibration and "
                    f"{gain - calibration:+.1f} from the search.") in out
    assert (tmp_path / "summary.md").read_text().strip() in out


def test_the_demo_credits_calibration_and_the_search_separately():
    """A run that returned the calibrated template owes its whole gain to calibration, and says so."""
    from types import SimpleNamespace

    from bbtune.app.demo import verdict

    from bbtune.runs.metrics import RunMetrics

    def result(selected: str, test: float) -> SimpleNamespace:
        return SimpleNamespace(metrics=RunMetrics(selected=selected, manual_test_acc=0.6, manual_calibrated_test_acc=0.8,
                                                  test_acc=test, gain_over_manual=test - 0.6))

    lines = verdict([[("BBT soft", result("tuned", 0.85)), ("BBT hard", result("manual", 0.8))]]).splitlines()
    assert lines[0] == ("BBT soft beat the manual prompt: +25.0 points on test, +20.0 from calibration and +5.0 "
                        "from the search.")
    assert lines[1].startswith("BBT hard returned the calibrated template: +20.0 points on test, all of it calibration")


def test_compare_command_writes_a_report(capsys, tmp_path):
    code = main(["compare", "--data", "demo", "--k", "4", "--model", "tiny", "--prompt-tokens", "2", "--intrinsic-dim", "8",
                 "--popsize", "4", "--budget-calls", "8", "--methods", "manual", "bbt_soft", "--seeds", "1", "2",
                 "--grad-steps", "2", "--out", str(tmp_path / "rep")])
    assert code == 0
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    runs = {(r["method"], r["seed"]) for r in results["runs"]}
    assert runs == {("manual", 1), ("manual", 2), ("bbt_soft", 1), ("bbt_soft", 2)}  # every method on every seed
    assert all(0 <= r["test_acc"] <= 1 for r in results["runs"])
    report = (tmp_path / "rep" / "report.md").read_text()
    for s in results["summary"]:  # the table shows what the JSON holds, for each method
        assert f"| {s['method']}" in report and f"{100 * s['test_acc_mean']:.1f}" in report
    out = capsys.readouterr().out
    assert "manual" in out and "bbt_soft" in out
