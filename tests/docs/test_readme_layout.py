"""The README is a pitch: the two fresh-machine commands first, at most 250 lines, no work-item numbers, and its
results table is the one `docs/gen_benchmarks.py --readme` generates from benchmarks/results/matrix.json (its
code blocks run in tests/docs/test_docs.py)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
WORK_ITEMS = re.compile(r"issue (?:[0-9]+|#)|lent to this\s+task", re.I)


def generator():  # docs/gen_benchmarks.py is a script and a MkDocs hook, not a package module
    spec = importlib.util.spec_from_file_location("gen_benchmarks", ROOT / "docs" / "gen_benchmarks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_opens_with_the_two_fresh_machine_commands():
    first_block = re.search(r"```\w*\n(.*?)```", README, re.S).group(1)
    assert README.index("```") < 300  # within the first lines
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]


def test_the_readme_is_a_pitch():
    assert len(README.splitlines()) <= 250
    assert not WORK_ITEMS.search(README)
    assert "pip install" in README and "RemoteConfig" in README and "docs/guide/" in README


def test_the_readme_tables_are_generated_from_the_result_files():
    gen = generator()
    for name, block in gen.readme_blocks().items():
        assert gen.readme_block(name) == block, \
            f"README.md's {name} is stale: run `python docs/gen_benchmarks.py --readme`"


def test_the_servers_table_shows_each_server_and_what_its_probe_refused():
    gen = generator()
    servers = {"setup": {"k": 4, "budget_calls": 12, "test_limit": 32}, "rows": [
        {"server": "real", "mode": "top_logprobs", "probe": "top-k 1000, lists", "margin gap max": 2.5e-5,
         "argmax agree": 1.0},
        {"server": "real", "mode": "echo", "probe_error": "echo gave -10.5, top-k -1.3: the server's echoed "
                                                          "log-probs are misaligned; use --remote-mode top_logprobs"}]}
    runs = {"trec": {"vllm": {"calls": 300, "best_train_loss": 0.5, "test_acc": 0.61, "requests": 900,
                              "missing_rate": 0.0},
                     "local": {"best_train_loss": 0.5, "test_acc": 0.6}, "max gap": {"train_loss": 1e-6},
                     "generations": [{"generation": 0, "train_loss gap": 1e-6}]},
            "sst2": {"vllm": {"calls": 300, "best_train_loss": 0.2, "test_acc": 0.8, "requests": 900,
                              "missing_rate": 0.1},
                     "local": {"best_train_loss": 0.3, "test_acc": 0.8}, "max gap": {"train_loss": 0.04},
                     "generations": [{"generation": 0, "train_loss gap": 1e-6},
                                     {"generation": 3, "train_loss gap": 0.04}]}}
    lines = gen.servers_table(servers).splitlines() + gen.same_run_table(runs).splitlines()
    assert lines[2] == "| real | `top_logprobs` | top-k 1000, lists | 2.5e-05 | 100% |"
    assert lines[3] == "| real | `echo` | refused: the server's echoed log-probs are misaligned | - | - |"
    assert "| TREC | 300 | 0.5000 / 0.5000 | 1.0e-06 | 61.0 / 60.0 | 900 | 0.0% |" in lines
    assert "SST-2 from generation 3, with 10.0% of its label scores missing" in lines[-1]
    assert "TREC from" not in lines[-1]


def test_the_table_follows_whatever_the_matrix_holds():
    """New methods and rows appear without editing the generator; calls show where rows record them."""
    gen = generator()
    rows = [{"task": "sst2", "model": "m", "seed": 1, "method": "manual_calibrated", "test_acc": 80.0},
            {"task": "sst2", "model": "m", "seed": 1, "method": "zz_new", "test_acc": 82.0, "calls": 300,
             "calls_per_input": 2},
            {"task": "sst2", "model": "m", "seed": 1, "method": "bbt_soft", "test_acc": 81.0},
            {"task": "sst2", "model": "m", "seed": 2, "method": "bbt_soft", "test_acc": 79.0}]
    lines = gen.results_table({"rows": rows}).splitlines()
    assert "calls per run / per test input" in lines[0]
    order = [line.split("|")[1].strip() for line in lines[2:5]]
    assert order == ["`manual_calibrated`", "`bbt_soft`", "`zz_new`"]  # the listed order, then new ones
    assert lines[4].rstrip(" |").endswith("+2.0 | 1 | 300 / 2")  # gain, cells it covers, calls
    assert lines[3].rstrip(" |").endswith("+1.0 | 2 | -")  # two seeds; the one with a baseline gives the gain
    readme = gen.results_table({"rows": rows}, every_cell=True)  # only the methods run on both cells
    assert "`bbt_soft`" in readme and "`zz_new`" not in readme and "`manual_calibrated`" not in readme


def test_the_benchmark_pages_cover_every_result_file_and_name_no_work_items():
    gen = generator()
    pages = gen.benchmark_pages()
    text = "\n".join(pages.values())
    for path in gen.result_files():
        assert f"`{path.name}`" in text, path.name
    assert not WORK_ITEMS.search(text)
