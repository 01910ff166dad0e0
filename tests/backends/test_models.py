"""Built-in models: Gemma 3 270M from its PyPI chunk package, assembled once into the cache."""
from __future__ import annotations

import sys
import types

import pytest

from bbtune.backends import models
from bbtune.errors import ConfigError


def test_gemma_without_its_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models, "GEMMA_PACKAGE", "no_such_gemma_package")
    with pytest.raises(ConfigError, match=r"pip install 'bbtune\[gemma\]'"):
        models.load_model("gemma3-270m")


def test_gemma_is_assembled_once_into_the_cache(monkeypatch, tmp_path):
    calls = []

    def assemble(target):
        calls.append(target)
        target.write_bytes(b"GGUF")
        return target

    monkeypatch.setitem(sys.modules, "fake_gemma_chunks", types.SimpleNamespace(assemble=assemble))
    monkeypatch.setattr(models, "GEMMA_PACKAGE", "fake_gemma_chunks")
    monkeypatch.setenv("BBTUNE_CACHE_DIR", str(tmp_path))
    first, again = models.gemma_gguf(), models.gemma_gguf()
    assert first == again == tmp_path / "gemma-3-270m-q4_k_m.gguf" and first.read_bytes() == b"GGUF"
    assert len(calls) == 1
