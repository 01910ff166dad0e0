"""The wheel is complete: built from a copy of the sources, installed into a fresh venv, it loads the demo task
from outside the repository (an editable install hides missing package data; this test does not)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOAD_DEMO = """
import json, bbtune
from bbtune.tasks import TaskConfig, demo_data_dir
task = TaskConfig(data="demo", k=4).load()
print(json.dumps({"module": bbtune.__file__, "data": str(demo_data_dir()), "train": len(task.train),
                  "test": len(task.test)}))
"""


def run(*args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def build_wheel(dest: Path) -> Path:
    """Build from a copy of the sources (no build/ folder in the repo; offline: this env's setuptools)."""
    src = dest / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("bbtune", "mock_server"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(src),
        cwd=dest)
    return next(dest.glob("bbtune-*.whl"))


def fresh_venv(path: Path) -> Path:
    """A new venv that sees this env's dependencies (torch, numpy, ...) but not its editable bbtune: a .pth
    line adds a folder to sys.path without running the .pth files inside it (the editable finder is one)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    site = run(str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
               cwd=path).strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path / "bin" / "python"


@pytest.mark.slow  # 9-15 s: builds a wheel and a venv (make test-all runs it)
def test_the_wheel_installs_into_a_fresh_venv_and_loads_the_demo_task(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    demo = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "bbtune" / "data").rglob("*.jsonl"))
    assert demo and set(demo) <= set(zipfile.ZipFile(wheel).namelist())
    python = fresh_venv(tmp_path / "venv")
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel),
        cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    got = json.loads(run(str(python), "-c", LOAD_DEMO, cwd=elsewhere).strip().splitlines()[-1])
    assert Path(got["module"]).is_relative_to(tmp_path / "venv") and Path(got["data"]).is_relative_to(tmp_path / "venv")
    assert got["train"] == 8 and got["test"] > 0  # k=4 per class, two classes


NON_NATIVE = ("-DGGML_NATIVE=OFF", "-DGGML_AVX512=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_TILE=OFF",
              "-DGGML_AMX_BF16=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON")


def test_make_server_builds_llama_cpp_python_without_native_flags() -> None:
    """A native llama.cpp build segfaults on AVX-512/AMX machines: `make server` builds for AVX2, and the docs and the
    real-server test's skip message send the user there (nothing is built here: `make -n` only prints)."""
    if shutil.which("make") is None:
        import pytest

        pytest.skip("no make")
    plan = run("make", "-n", "server", cwd=ROOT)
    install = [line for line in plan.splitlines() if "llama-cpp-python[server]" in line and "install" in line]
    assert len(install) == 1 and all(flag in install[0] for flag in NON_NATIVE), plan
    assert install[0].startswith('CMAKE_ARGS="') and "--no-cache-dir" in install[0]
    assert "`make server`" in (ROOT / "docs" / "guide" / "remote.md").read_text()
    assert "`make server`" in (ROOT / "tests" / "backends" / "test_real_server.py").read_text()
