"""compare: every method x seed lands in the table, the JSON and the plot; hard prompts transfer to other backends."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bbtune.app.cli import CompareConfig, run_compare
from bbtune.app.compare import METHODS, compare, retokenize, transfer_scores
from bbtune.app.comparison import MethodSettings, summarize
from bbtune.app.report import PLOT_PNG, REPORT_MD, RESULTS_JSON, _step_value, read_report, write_report
from bbtune.backends.factory import LocalConfig
from bbtune.backends.local import LocalBackend
from bbtune.backends.models import build_tiny_model
from bbtune.baselines import Measurement, MethodResult
from bbtune.core.prompts import HardPrompt
from bbtune.errors import ConfigError
from bbtune.runs.tuner import TuneConfig
from bbtune.tasks import TaskConfig

SEEDS = (1, 2)
TUNE = TuneConfig(budget_calls=8, popsize=4, intrinsic_dim=4, prompt_tokens=3, eval_every=4)
SMALL = CompareConfig(grad_steps=4, grad_batch_size=4, seeds=SEEDS).settings(TUNE)


@pytest.fixture(scope="module")
def other_model() -> LocalBackend:
    """Another tiny model (other weights, same tokenizer): a target for transfer."""
    model, tok = build_tiny_model(seed=1)
    return LocalBackend(model, tok)


@pytest.fixture(scope="module")
def report(tiny_backend, tiny_task, other_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return compare(tiny_task, tiny_backend, METHODS, SEEDS, SMALL, out, transfer_to=other_model, progress=False)


def test_every_method_and_seed_is_in_the_table_json_and_plot(report):
    assert sorted((r.method, r.seed) for r in report.results) == sorted((m, s) for m in METHODS for s in SEEDS)
    md = (report.out_dir / REPORT_MD).read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    for method in METHODS:
        assert any(line.startswith(f"| {method} ") for line in table), method
    data = json.loads((report.out_dir / RESULTS_JSON).read_text())
    assert [s["method"] for s in data["summary"]] == list(METHODS)
    assert all(s["seeds"] == list(SEEDS) for s in data["summary"])
    assert len(data["runs"]) == len(METHODS) * len(SEEDS)
    assert {"dev_acc", "test_acc", "calls", "forward_passes", "backward_passes", "wall_s", "peak_mem_mb",
            "curve"} <= set(data["runs"][0])
    png = (report.out_dir / PLOT_PNG).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert f"]({PLOT_PNG})" in md


def test_a_report_folder_reads_back_and_rewrites(report, tmp_path):
    again = read_report(report.out_dir)
    assert [(r.method, r.seed, r.dev_acc, r.cost, r.curve, r.prompt_text) for r in again.results] == \
        [(r.method, r.seed, r.dev_acc, r.cost, r.curve, r.prompt_text) for r in report.results]
    assert again.summary() == report.summary() and again.transfer == report.transfer
    write_report(replace(again, out_dir=tmp_path))
    assert (tmp_path / PLOT_PNG).exists() and (tmp_path / REPORT_MD).read_text() == (report.out_dir / REPORT_MD).read_text()


def test_costs_are_counted_per_kind_of_method(report):
    by = {(r.method, r.seed): r for r in report.results}
    for seed in SEEDS:
        assert by["manual", seed].train_calls == 0 and by["manual", seed].cost.backward_passes == 0
        for grad in ("prompt_tuning", "pez"):
            assert by[grad, seed].train_calls == 4 and by[grad, seed].cost.backward_passes == 4
        for bbt in ("bbt_soft", "bbt_hard", "random_search"):
            assert by[bbt, seed].train_calls == 8 and by[bbt, seed].cost.backward_passes == 0
        assert by["bbt_discrete", seed].cost == by["bbt_soft", seed].cost  # one search, two records


def test_seeds_reach_the_methods(tiny_backend, tiny_task, monkeypatch):
    """Each method runs with the seed of its row: the config it is handed carries it (and the record says so)."""
    import bbtune.app.compare as compare_module

    seen: list[tuple[str, int]] = []

    def spy(name, real):
        def run(task, backend, config, *rest):
            seen.append((name, config.seed))
            return real(task, backend, config, *rest)
        return run

    for name in ("run_bbt", "run_in_context", "run_prompt_tuning", "run_pez"):
        monkeypatch.setattr(compare_module, name, spy(name, getattr(compare_module, name)))
    small = replace(SMALL, prompt_tuning=replace(SMALL.prompt_tuning, steps=1, eval_every=1),
                    pez=replace(SMALL.pez, steps=1, eval_every=1))
    result = compare(tiny_task, tiny_backend, ("in_context", "prompt_tuning", "pez", "bbt_soft"), (5, 6), small,
                     progress=False)
    expected = {(runner, seed) for seed in (5, 6)
                for runner in ("run_in_context", "run_prompt_tuning", "run_pez", "run_bbt")}
    assert set(seen) == expected and len(seen) == len(expected)
    assert sorted((r.method, r.seed) for r in result.results) == sorted(
        (m, s) for m in ("in_context", "prompt_tuning", "pez", "bbt_soft") for s in (5, 6))


def test_hard_prompts_transfer_to_another_backend(report, other_model):
    hard = {(r.method, r.seed) for r in report.results if isinstance(r.best, HardPrompt)}
    assert {(t["method"], t["seed"]) for t in report.transfer} == hard
    assert {"manual", "manual_calibrated", "in_context", "in_context_calibrated", "in_context_train", "pez",
            "bbt_discrete", "bbt_hard"} == {m for m, _ in hard}
    assert all(t["target"] == other_model.name and 0 <= t["target_acc"] <= 1 for t in report.transfer)
    assert "## Transfer of hard prompts" in (report.out_dir / REPORT_MD).read_text()


def test_transfer_through_the_remote_backend_against_the_mock_server(report, tiny_task, tiny_backend):
    from bbtune.backends.remote import RemoteConfig
    from mock_server.config import ServerConfig
    from mock_server.server import MockServer

    hard = [r for r in report.results if isinstance(r.best, HardPrompt) and r.seed == 1]
    with MockServer(ServerConfig(model="tiny", port=0)) as server:
        # local_model: the label token ids let the probe put logit_bias on them, so no label goes missing
        with RemoteConfig(base_url=server.url, model="tiny", local_model="tiny").build() as remote:
            rows = transfer_scores(hard, tiny_task, tiny_backend, remote, limit=3)
    assert [r["method"] for r in rows] == [r.method for r in hard]
    assert all(r["target"].startswith("remote:") and r["n"] == 3 and 0 <= r["target_acc"] <= 1 for r in rows)
    assert all(r["target_labels_missing"] == 0 for r in rows)


def test_retokenize_uses_the_target_tokenizer(tiny_backend):
    prompt = HardPrompt((1, 2, 3), " great film")
    again = retokenize(prompt, tiny_backend)
    assert again.text == prompt.text
    assert list(again.token_ids) == tiny_backend.tokenizer.encode(" great film", add_special_tokens=False)


def test_summary_is_mean_and_sample_std():
    cost = Measurement(calls=10, forward_passes=4, backward_passes=2, wall_s=1.0, peak_mem_mb=100.0, mem_kind="rss_peak")
    runs = [MethodResult("m", s, "suffix", dev, test, 5, cost) for s, dev, test in ((1, 0.5, 0.6), (2, 0.7, 0.8))]
    row = summarize("m", runs)
    assert row["dev_acc_mean"] == pytest.approx(0.6) and row["dev_acc_std"] == pytest.approx(0.1414, abs=1e-4)
    assert row["test_acc_mean"] == pytest.approx(0.7) and row["calls"] == 10 and row["seeds"] == [1, 2]
    assert summarize("m", runs[:1])["dev_acc_std"] == 0.0


def test_step_value_reads_a_best_so_far_curve():
    curve = ((0, 0.5), (10, 0.6), (20, 0.8))
    assert [_step_value(curve, x) for x in (0, 5, 10, 25)] == [0.5, 0.5, 0.6, 0.8]


def test_run_compare_builds_task_and_backend_from_configs(tmp_path):
    config = CompareConfig(methods=("manual", "bbt_hard"), seeds=(3,), out=str(tmp_path / "r"), grad_steps=2)
    report = run_compare(config, TaskConfig(data="demo", k=4), LocalConfig(model="tiny", device="cpu"),
                         replace(TUNE, seed=99), progress=False)
    assert [(r.method, r.seed) for r in report.results] == [("manual", 3), ("bbt_hard", 3)]
    data = json.loads((tmp_path / "r" / RESULTS_JSON).read_text())
    assert data["config"]["compare"]["methods"] == ["manual", "bbt_hard"] and data["config"]["task"]["k"] == 4
    assert (tmp_path / "r" / PLOT_PNG).exists()


@pytest.mark.parametrize("kwargs, field", [
    ({"methods": ("manual", "gpt4")}, "methods"),
    ({"methods": ()}, "methods"),
    ({"seeds": ()}, "seeds"),
    ({"grad_steps": 0}, "steps"),
    ({"shots_per_class": 0}, "shots_per_class"),
    ({"transfer_model": "tiny", "transfer_url": "http://x/v1"}, "transfer"),
])
def test_compare_config_names_the_bad_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        CompareConfig(**kwargs)


def test_compare_config_fields_do_not_clash_with_the_other_cli_groups():
    """`bbtune compare` puts task, backend, tune and compare flags in one namespace."""
    from dataclasses import fields

    names = [f.name for cls in (TaskConfig, LocalConfig, TuneConfig, CompareConfig) for f in fields(cls)]
    assert len(names) == len(set(names))


def test_settings_share_prompt_length_and_vocabulary_with_bbt():
    tune = TuneConfig(prompt_tokens=7, eval_every=30, vocab_filter="printable", block_list=("bad",))
    s: MethodSettings = CompareConfig().settings(tune)
    assert s.bbt is tune
    assert s.prompt_tuning.prompt_tokens == s.pez.prompt_tokens == 7 and s.pez.eval_every == 30
    assert s.pez.vocab_filter == "printable" and s.pez.block_list == ("bad",)
