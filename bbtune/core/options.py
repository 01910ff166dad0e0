"""Config fields that hold several strings, taken the same way everywhere."""
from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def string_tuple(value: str | Iterable[T]) -> tuple[str | T, ...]:
    """A lone string is one entry: ``block_list="spam"`` blocks the word, not the letters s, p, a, m."""
    return (value,) if isinstance(value, str) else tuple(value)
