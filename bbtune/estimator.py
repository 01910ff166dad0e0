"""A scikit-learn classifier over bbtune, so `cross_val_score`, `GridSearchCV` and pipelines tune prompts.

`fit(texts, labels)` splits the examples into train and dev (stratified, seeded), tunes a prompt with BBT and
keeps the run; `predict`, `predict_proba` and `score` classify through it. Parameters are stored untouched by
`__init__` and checked in `fit` (scikit-learn's rule), so `clone` and `set_params` work; `predict` before `fit`
raises `NotFittedError`. Loaded models are shared between clones: a grid search over 20 settings loads the model
once.

    >>> from bbtune import PromptClassifier
    >>> clf = PromptClassifier(model="tiny", template="{text} It was{label}", budget_calls=20, popsize=10)
    >>> clf.fit(["a great film", "awful", "I love it", "boring", "wonderful", "bad"] * 2, ["pos", "neg"] * 6)
    PromptClassifier(...)
    >>> clf.predict(["a lovely story"]).shape
    (1,)
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from bbtune.backends.base import Backend
from bbtune.constants import CPU_BUDGET_CALLS, CPU_INTRINSIC_DIM, CPU_POPSIZE
from bbtune.errors import ConfigError
from bbtune.runs.load import TunedRun, tuned_run
from bbtune.runs.tuner import Mode, TuneConfig, Tuner
from bbtune.tasks import Example, Task, TaskFormat, Template


@lru_cache(maxsize=2)
def _shared_backend(model: str, device: str) -> Backend:
    from bbtune.api import backend_for

    return backend_for(model, device=device)


class PromptClassifier(ClassifierMixin, BaseEstimator):
    """BBT prompt tuning as a scikit-learn classifier.

    `verbalizer` maps each label (as a string) to its label word; None uses " <label>" for every label, which
    may be several tokens (scored as their sum). `dev_fraction` of the fit examples select the prompt.
    """

    def __init__(self, model: str = "smollm2", template: str = "{text}\nAnswer:{label}",
                 verbalizer: dict[str, str] | None = None, mode: str = "soft", budget_calls: int = CPU_BUDGET_CALLS,
                 popsize: int = CPU_POPSIZE, intrinsic_dim: int = CPU_INTRINSIC_DIM, dev_fraction: float = 0.5, random_state: int = 0,
                 device: str = "auto", progress: bool = False):
        self.model = model
        self.template = template
        self.verbalizer = verbalizer
        self.mode = mode
        self.budget_calls = budget_calls
        self.popsize = popsize
        self.intrinsic_dim = intrinsic_dim
        self.dev_fraction = dev_fraction
        self.random_state = random_state
        self.device = device
        self.progress = progress

    def fit(self, X: Sequence[str], y: Sequence[Any]) -> "PromptClassifier":
        """Tune on (X, y). A `budget_calls` below one generation is raised to `popsize` (`budget_calls_`, with a
        warning), so a small budget in a grid or `cross_val_score` still fits."""
        self._check_params()
        texts, labels = _texts(X), np.asarray(y)
        if len(texts) != len(labels):
            raise ConfigError(f"fit got {len(texts)} texts and {len(labels)} labels; give one label per text")
        self.classes_ = np.unique(labels)
        if len(self.classes_) < 2:
            raise ConfigError(f"fit needs at least 2 classes, got {list(self.classes_)}")
        words = self.verbalizer or {str(c): f" {c}" for c in self.classes_}
        fmt = TaskFormat(Template(self.template), {str(c): words[str(c)] for c in self.classes_})
        train_x, dev_x, train_y, dev_y = train_test_split(texts, labels, test_size=self.dev_fraction,
                                                          stratify=labels, random_state=self.random_state)
        task = Task("fit", fmt, _examples(train_x, train_y), _examples(dev_x, dev_y))
        self.budget_calls_ = max(self.budget_calls, self.popsize)
        if self.budget_calls_ != self.budget_calls:
            warnings.warn(f"budget_calls={self.budget_calls} is below one generation (popsize={self.popsize}): "
                          f"raised to {self.budget_calls_}", UserWarning, stacklevel=2)
        config = TuneConfig(mode=Mode(self.mode), budget_calls=self.budget_calls_, popsize=self.popsize,
                            intrinsic_dim=self.intrinsic_dim, seed=self.random_state)
        backend = _shared_backend(self.model, self.device)
        tuner = Tuner(task, backend, config, progress=self.progress)
        self.run_: TunedRun = tuned_run(tuner.run(), tuner.task_.format, backend)
        return self

    def _check_params(self) -> None:
        """scikit-learn checks parameters in `fit`, not `__init__`: one line naming the parameter."""
        for name, kind in (("model", str), ("template", str), ("mode", str), ("device", str)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        for name in ("budget_calls", "popsize", "intrinsic_dim", "random_state"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        if self.verbalizer is not None and not isinstance(self.verbalizer, dict):
            raise ConfigError(f"verbalizer must be a dict label -> word or None, got {type(self.verbalizer).__name__}")
        if not (isinstance(self.dev_fraction, numbers.Real) and 0 < self.dev_fraction < 1):
            raise ConfigError(f"dev_fraction must be a number in (0, 1), got {self.dev_fraction!r}")

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """(n, classes) calibrated probabilities over the label words, columns in `classes_` order."""
        check_is_fitted(self, "run_")
        texts = _texts(X)
        if not texts:
            return np.zeros((0, len(self.classes_)))
        predictions = self.run_.predict(texts)
        return np.array([[p.probs[str(c)] for c in self.classes_] for p in predictions])

    def predict(self, X: Sequence[str]) -> np.ndarray:
        check_is_fitted(self, "run_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _texts(X: Sequence[str]) -> list[str]:
    texts = list(np.asarray(X, dtype=object).ravel()) if not isinstance(X, list) else X
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ConfigError(f"inputs must be strings; row {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


def _examples(texts: Sequence[str], labels: Sequence[Any]) -> tuple[Example, ...]:
    return tuple(Example(t, str(label)) for t, label in zip(texts, labels))
