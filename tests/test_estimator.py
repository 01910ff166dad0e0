"""`PromptClassifier` keeps scikit-learn's contract: parameters checked in `fit` (one line naming the
parameter), `NotFittedError` before `fit`, empty inputs answered, and a budget below the population raised to it so
`cross_val_score` fits; the estimator checks that do not need numeric features pass."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score
from sklearn.utils import estimator_checks as checks

from bbtune import PromptClassifier
from bbtune.errors import ConfigError
from tests.conftest import NEG, POS

TEXTS, LABELS = POS + NEG, ["pos"] * len(POS) + ["neg"] * len(NEG)
SMALL = dict(model="tiny", template="{text} It was{label}", budget_calls=10, popsize=5, intrinsic_dim=8)


@pytest.mark.parametrize("check", [checks.check_no_attributes_set_in_init, checks.check_estimators_unfitted,
                                   checks.check_get_params_invariance, checks.check_set_params,
                                   checks.check_estimator_cloneable, checks.check_estimator_repr,
                                   checks.check_do_not_raise_errors_in_init_or_set_params],
                         ids=lambda check: check.__name__)
def test_the_scikit_learn_checks_that_apply(check):
    check("PromptClassifier", PromptClassifier(**SMALL))


def test_parameters_default_constructible():
    checks.check_parameters_default_constructible("PromptClassifier", PromptClassifier())


def test_predict_before_fit_raises_not_fitted():
    with pytest.raises(NotFittedError):
        PromptClassifier(**SMALL).predict(["a film"])


@pytest.mark.parametrize("params, words", [({"model": 42}, "model must be a str"),
                                           ({"budget_calls": "10"}, "budget_calls must be an int, got str"),
                                           ({"budget_calls": 10.7}, "budget_calls must be an int, got float"),
                                           ({"popsize": True}, "popsize must be an int"),
                                           ({"dev_fraction": 1.5}, "dev_fraction must be a number in (0, 1)"),
                                           ({"verbalizer": ["x"]}, "verbalizer must be a dict")])
def test_bad_parameters_are_refused_in_fit_in_one_line(params, words):
    clf = PromptClassifier(**{**SMALL, **params})  # stored untouched
    with pytest.raises(ConfigError) as info:
        clf.fit(TEXTS, LABELS)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_budget_below_the_population_is_raised_and_cross_val_score_fits():
    clf = PromptClassifier(**{**SMALL, "budget_calls": 3})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = cross_val_score(clf, TEXTS, LABELS, cv=2, error_score="raise")
    assert len(scores) == 2 and np.all(np.isfinite(scores))
    assert any("raised to 5" in str(w.message) for w in caught)


def test_predict_on_no_inputs_answers_nothing():
    clf = PromptClassifier(**SMALL).fit(TEXTS, LABELS)
    assert clf.budget_calls_ == 10
    assert clf.predict([]).shape == (0,) and clf.predict_proba([]).shape == (0, 2)
