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


def test_the_results_table_is_generated_from_the_matrix():
    gen = generator()
    matrix = gen.load(gen.RESULTS / "matrix.json")
    assert gen.readme_table() == gen.results_table(matrix, every_cell=True), \
        "README.md's results table is stale: run `python docs/gen_benchmarks.py --readme`"


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
