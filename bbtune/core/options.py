"""Config fields that hold several strings, taken the same way everywhere; a dataclass's fields out of a saved
dict that may hold more (a newer or older file)."""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


def string_tuple(value: str | Iterable[T]) -> tuple[str | T, ...]:
    """A lone string is one entry: ``block_list="spam"`` blocks the word, not the letters s, p, a, m."""
    return (value,) if isinstance(value, str) else tuple(value)


def known_fields(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `values` that name a field of dataclass `cls`: ``cls(**known_fields(cls, saved))`` reads a
    file written by another version without failing over a key."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def options_doc(cls: type, indent: str = "") -> str:
    """One line per field of a config dataclass: its name, default and help (the field's ``metadata["help"]``),
    so `help()` and the API reference show every option's meaning, not only its name."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING and callable(f.default_factory) else f.default
        shown = default.value if isinstance(default, enum.Enum) else list(default) if isinstance(default, tuple) else default
        lines.append(f"{indent}- `{f.name}` (default `{shown!r}`): {f.metadata.get('help', '')}")
    return "\n".join(lines)


C = TypeVar("C", bound=type)


def documented(cls: C) -> C:
    """Append `options_doc` to a config dataclass's docstring (a decorator, above ``@dataclass``)."""
    cls.__doc__ = f"{(cls.__doc__ or '').rstrip()}\n\n    Fields:\n\n{options_doc(cls, indent='    ')}\n"
    return cls
