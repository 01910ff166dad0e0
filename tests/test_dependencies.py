"""Dependencies earn their place: every package pyproject declares is imported by the code it ships (or is
listed below with the reason it is needed without an import), and every third-party package the code imports
is declared."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAME = {"scikit-learn": "sklearn", "huggingface-hub": "huggingface_hub"}
NEEDED_WITHOUT_IMPORT = {"gguf": "transformers reads .gguf files (the embedded SmolLM2) through it"}
SHIPPED = ("bbtune", "mock_server")


def declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in deps}


@lru_cache(maxsize=1)
def imported() -> frozenset[str]:
    found = set()
    for package in SHIPPED:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return frozenset(name for name in found if name not in sys.stdlib_module_names and name not in SHIPPED)


def test_every_declared_dependency_is_used():
    unused = {d for d in declared() - set(NEEDED_WITHOUT_IMPORT) if IMPORT_NAME.get(d, d.replace("-", "_")) not in imported()}
    assert not unused, f"declared but never imported by {SHIPPED}: {sorted(unused)}; drop them or say why they are needed"


def test_every_imported_package_is_declared():
    names = {IMPORT_NAME.get(d, d.replace("-", "_")) for d in declared()}
    optional = {"peft", "datasets", "llama_cpp", "ray", "mlflow", "tensorboard"} & imported()  # the extras, imported where they serve
    undeclared = imported() - names - optional
    assert not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"
