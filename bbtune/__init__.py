"""bbtune: black-box prompt tuning for language models you can only query.

    >>> # import bbtune; bbtune.load_run("runs/x").predict(["a fine film"])
"""
from typing import Any


def __getattr__(name: str) -> Any:
    """`bbtune.load_run` without importing torch on `import bbtune`."""
    if name == "load_run":
        from .runs import load_run

        return load_run
    raise AttributeError(f"module 'bbtune' has no attribute {name!r}")
