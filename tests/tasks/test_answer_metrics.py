import math
import sys
import types

import pytest

from bbtune.errors import ConfigError
from bbtune.runs.tuner import TuneConfig
from bbtune.tasks.answer_metrics import answer_metric, exact_match, normalize_answer, token_f1


@pytest.mark.parametrize("prediction, reference, expected", [
    ("Paris", "Paris", 1.0), ("  the Paris. ", "paris", 1.0), ("Paris, France", "Paris", 0.0), ("", "Paris", 0.0),
    ("Lyon", "Paris", 0.0), ("New  York", "new york", 1.0),
])
def test_exact_match_compares_normalized_answers(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected


def test_normalization_is_squads():
    assert normalize_answer("The  Quick, brown FOX!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"


@pytest.mark.parametrize("prediction, reference, expected", [
    ("Paris", "Paris", 1.0), ("Paris France", "Paris", 2 * 0.5 * 1 / 1.5), ("New York City", "New York", 0.8),
    ("Lyon", "Paris", 0.0), ("", "", 1.0), ("", "Paris", 0.0), ("the", "Paris", 0.0),
])
def test_token_f1_gives_partial_credit(prediction, reference, expected):
    assert token_f1(prediction, reference) == pytest.approx(expected)


def _module(name, **functions):
    module = types.ModuleType(name)
    module.__dict__.update(functions)
    sys.modules[name] = module
    return module


def test_user_metric_is_imported_and_called():
    _module("bbtune_test_metrics_ok", first_letter=lambda p, r: float(p[:1].lower() == r[:1].lower()))
    metric = answer_metric("bbtune_test_metrics_ok:first_letter")
    assert (metric("Paris", "prague"), metric("Lyon", "Paris")) == (1.0, 0.0)
    assert TuneConfig(answer_metric="bbtune_test_metrics_ok:first_letter").answer_metric.endswith("first_letter")


@pytest.mark.parametrize("spec, message", [
    ("no_such_package_xyz.metrics:f", "cannot be imported"),
    ("bbtune.tasks.answer_metrics:no_such_function", "has no function 'no_such_function'"),
    ("bbtune.tasks.answer_metrics:BUILT_IN_METRICS", "is a dict"),
    ("exactly", "package.module:function"),
    ("module_only:", "package.module:function"),
])
def test_a_metric_that_cannot_be_loaded_is_a_clear_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        answer_metric(spec)
    with pytest.raises(ConfigError, match=message):  # before any model call: when the config is built
        TuneConfig(answer_metric=spec)


@pytest.mark.parametrize("value", [1.5, -0.1, math.nan, "1", None, True, [1.0]])
def test_a_metric_returning_something_else_than_a_number_in_0_1_is_an_error(value):
    _module("bbtune_test_metrics_bad", bad=lambda p, r: value)
    metric = answer_metric("bbtune_test_metrics_bad:bad")
    with pytest.raises(ConfigError, match="must return a float in \\[0, 1\\]"):
        metric("Paris", "Paris")


def test_an_int_0_or_1_is_a_valid_metric_value():
    _module("bbtune_test_metrics_int", hit=lambda p, r: int(p == r))
    assert answer_metric("bbtune_test_metrics_int:hit")("a", "a") == 1.0
