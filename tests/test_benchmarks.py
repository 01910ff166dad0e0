"""The benchmark scripts' own logic that needs no model: merging per-seed outputs into one table."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def row(seed: int, method: str, test_acc: float, manual: float) -> dict:
    return {"seed": seed, "placement": "suffix", "method": method, "dev_acc": 0.8, "test_acc": test_acc,
            "gain": test_acc - manual, "calls": 300, "wall_s": 10.0, "total_s": 12.0}


@pytest.fixture()
def sst2_bbt(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their shared task_args
    sys.modules.pop("sst2_bbt_script", None)
    return runpy.run_path(str(BENCH / "sst2_bbt.py"), run_name="sst2_bbt_script")


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
