"""The package's shape is a contract: layers import only downwards, no import circles, no private names
across modules. Read from the source with `ast`, lazy imports inside functions included.

Layers, lowest first (a module may import its own layer and those below it):
errors, constants -> core -> tasks -> backends -> search -> runs -> baselines -> app -> the public face.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bbtune"
LAYERS = [("bbtune.errors", "bbtune.constants"), ("bbtune.core",), ("bbtune.tasks",), ("bbtune.backends",),
          ("bbtune.search",), ("bbtune.runs",), ("bbtune.baselines",), ("bbtune.app",),
          ("bbtune.api", "bbtune.estimator", "bbtune.__init__", "bbtune.__main__", "bbtune.data")]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)


def layer_of(name: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{name} is in no layer: add its package to LAYERS in {__file__}")


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported bbtune module, names taken from it, line) for every import in the file, lazy ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bbtune"):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; bbtune imports by absolute name"
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("bbtune")]
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(module: str, names: list[str]) -> list[str]:
    """The modules an import reaches: `from bbtune.search import losses` reaches bbtune.search.losses."""
    subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    return subs or [module]


def graph() -> dict[str, set[str]]:
    return {name: {m for mod, names, _ in imports(path) for m in resolve(mod, names) if m != name}
            for name, path in MODULES.items()}


def test_every_module_is_in_a_layer():
    for name in MODULES:
        layer_of(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_layers(name):
    for mod, names, line in imports(MODULES[name]):
        for target in resolve(mod, names):
            assert layer_of(target) <= layer_of(name), (
                f"{MODULES[name]}:{line} imports {target}, a higher layer ({LAYERS[layer_of(target)][0]} above "
                f"{LAYERS[layer_of(name)][0]}): move the shared piece down, or invert the call")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_names_across_modules(name):
    for mod, names, line in imports(MODULES[name]):
        private = [n for n in names if n.startswith("_") and mod != name]
        assert not private, f"{MODULES[name]}:{line} takes private {private} from {mod}: make it public or move it"


def test_no_import_circles():
    edges, cycles = graph(), []

    def visit(node: str, path: list[str], done: set[str]) -> None:
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith("bbtune.") and not nxt.endswith("__init__"):
                visit(nxt, path + [node], done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(edges):
        if start != "bbtune" and not MODULES[start].name == "__init__.py":
            visit(start, [], done)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_contract_can_fail(tmp_path):
    """The checks above see what they claim to: a lazy upward import and a private name are both found."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from bbtune.app.cli import _private\n")
    (mod, names, _), = imports(src)
    assert layer_of(mod) > layer_of("bbtune.core.vocab") and names == ["_private"]
