"""Metrics on a generated answer against its reference, for generation tasks: exact match, token F1 (both after
SQuAD's normalization: lower case, no punctuation, no articles, single spaces) or a user's function.

A metric is ``(prediction: str, reference: str) -> float`` in [0, 1]. A user's own is named
``package.module:function`` (``--answer-metric``); `answer_metric` imports it, and every value it returns is
checked (a bool, NaN or a number outside [0, 1] is an error naming the function), so a broken metric stops a run
instead of steering it.

    >>> exact_match("The Paris.", "paris"), round(token_f1("new york city", "New York"), 2)
    (1.0, 0.8)
"""
from __future__ import annotations

import importlib
import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from bbtune.errors import ConfigError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, punctuation and articles removed, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalized prediction equals the normalized reference, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 of the normalized answers (two empty answers agree: 1.0)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


BUILT_IN_METRICS: dict[str, Callable[[str, str], float]] = {"exact": exact_match, "f1": token_f1}


@dataclass(frozen=True)
class AnswerMetric:
    """A named metric whose every value is checked to be a number in [0, 1]."""

    name: str
    function: Callable[[str, str], float]

    def __call__(self, prediction: str, reference: str) -> float:
        value = self.function(prediction, reference)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0 \
                or math.isnan(value):
            raise ConfigError(f"answer metric {self.name} returned {value!r} for prediction {prediction[:40]!r} and "
                              f"reference {reference[:40]!r}; a metric must return a float in [0, 1]")
        return float(value)


def answer_metric(spec: str) -> AnswerMetric:
    """`exact`, `f1`, or a user's function as ``package.module:function``; a name that cannot be imported or is
    not callable is a `ConfigError` saying what to fix.

    >>> answer_metric("f1")("Paris", "paris")
    1.0
    """
    if spec in BUILT_IN_METRICS:
        return AnswerMetric(spec, BUILT_IN_METRICS[spec])
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"answer_metric={spec!r}: give exact, f1, or a function as package.module:function "
                          "taking (prediction, reference) and returning a float in [0, 1]")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"answer_metric={spec!r}: module {module_name!r} cannot be imported ({err}); check the "
                          "name and that its folder is on PYTHONPATH") from err
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(f"answer_metric={spec!r}: module {module_name!r} has no function {attr!r}"
                          + ("" if function is None else f" (it is a {type(function).__name__})"))
    return AnswerMetric(spec, function)
