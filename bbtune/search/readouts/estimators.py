"""The readouts: how a prompt's answers become class scores, from one bias per label to a classifier on the top-k.

Every readout is fitted on training answers and returns (B, L) class log-probs (normalized over the classes):

| readout | reads | fitted |
|---|---|---|
| ``raw`` | label log-probs | nothing: the label words as the model ranks them |
| ``bias`` | label log-probs | one bias per label (today's calibration, `bbtune.search.calibration`) |
| ``affine`` | label log-probs | a multinomial logistic regression on them (a full L x L map, not only a shift) |
| ``verbalizer`` | top-k | one token per class chosen from the training lists (PromptBoosting's learned verbalizer), then a bias |
| ``logistic`` | top-k | a multinomial logistic regression on sparse top-k features, C by stratified CV |
| ``residual`` | label log-probs and top-k | calibration plus a logistic regression on the top-k for what it leaves |
| ``knn`` | top-k | nearest training distributions by cosine (kNN prompting) |

A fitted readout is plain numbers (`state`), saved as JSON beside a run's prompt and rebuilt by `from_state`:
nothing in a run folder is code. scikit-learn fits the models; prediction uses the saved arrays alone.

    >>> import numpy as np
    >>> answers = Answers(np.log([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.5, 0.5]]))
    >>> y = np.array([0, 0, 1, 1])
    >>> make_readout("raw").fit(answers, y).predict(answers).tolist()
    [0, 0, 0, 0]
    >>> make_readout("bias").fit(answers, y).predict(answers).tolist()
    [0, 0, 1, 1]
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import numpy as np
from scipy import sparse
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from bbtune.errors import ConfigError
from bbtune.search.calibration import fit_label_bias
from bbtune.search.losses import label_log_softmax
from bbtune.search.answers import Answers
from bbtune.search.readouts.features import TokenColumns

LOGISTIC_C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength, chosen by inner CV on the training answers
RESIDUAL_C_GRID = (0.001, 0.01, 0.1, 1.0)  # the same for the departure from calibration, smallest first
NEGLIGIBLE_NATS = 1e-3  # held-out cross-entropy per example below which a larger C is not better
NEIGHBOURS = 5
SMOOTHING = 1e-3  # a class with no neighbour keeps a finite score


class ReadoutKind(str, Enum):
    """The readouts, simplest first: a tie out of fold goes to the earlier one."""

    RAW = "raw"
    BIAS = "bias"
    AFFINE = "affine"
    VERBALIZER = "verbalizer"
    LOGISTIC = "logistic"
    RESIDUAL = "residual"
    KNN = "knn"

    @property
    def needs_topk(self) -> bool:
        return self in (ReadoutKind.VERBALIZER, ReadoutKind.LOGISTIC, ReadoutKind.RESIDUAL, ReadoutKind.KNN)


class Readout(ABC):
    """Answers -> (B, L) class log-probs. `fit` learns from training answers; `state` is the fit as JSON."""

    kind: ClassVar[ReadoutKind]
    n_labels: int = 0

    def fit(self, answers: Answers, y: np.ndarray) -> "Readout":
        if self.kind.needs_topk and answers.topk is None:
            raise ConfigError(f"readout {self.kind.value!r} reads the top-k log-probs, which this backend did not "
                              "return; use readout 'bias' or 'affine', or a backend that returns top_logprobs")
        self.n_labels = answers.labels.shape[1]
        self._fit(answers, np.asarray(y, dtype=int))
        return self

    @abstractmethod
    def _fit(self, answers: Answers, y: np.ndarray) -> None: ...

    @abstractmethod
    def log_scores(self, answers: Answers) -> np.ndarray:
        """(B, L) class log-probs."""

    def predict(self, answers: Answers) -> np.ndarray:
        return self.log_scores(answers).argmax(axis=1)

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """The fitted numbers, JSON-ready."""

    @abstractmethod
    def _load(self, state: dict[str, Any]) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "n_labels": self.n_labels, "state": self.state()}


def make_readout(kind: ReadoutKind | str, quick: bool = False) -> Readout:
    """A new, unfitted readout of `kind`; `quick`: without inner searches (the logistic regression at C = 1), for
    fits repeated fold after fold."""
    try:
        kind = ReadoutKind(kind)
    except ValueError:
        raise ConfigError(f"unknown readout {kind!r}; choose from {', '.join(k.value for k in ReadoutKind)}") from None
    return TopKLogistic(grid=(1.0,)) if quick and kind is ReadoutKind.LOGISTIC else _CLASSES[kind]()


def load_readout(saved: dict[str, Any]) -> Readout:
    """A readout rebuilt from `Readout.describe()`'s JSON."""
    readout = make_readout(saved["kind"])
    readout.n_labels = int(saved["n_labels"])
    readout._load(saved["state"])
    return readout


@dataclass
class Linear:
    """A fitted multinomial linear model as arrays: class log-probs for any row, with unseen classes at -inf."""

    coef: np.ndarray  # (classes or 1, features)
    intercept: np.ndarray
    classes: np.ndarray

    @classmethod
    def of(cls, model: LogisticRegression) -> "Linear":
        return cls(np.asarray(model.coef_, float), np.asarray(model.intercept_, float), np.asarray(model.classes_, int))

    def log_scores(self, X: Any, n_labels: int, offset: np.ndarray | float = 0.0) -> np.ndarray:
        """(B, L) class log-probs of rows `X`, with fixed logits `offset` (B, L) added where a model has them."""
        logits = np.asarray(X @ self.coef.T) + self.intercept
        if self.coef.shape[0] == 1:  # scikit-learn's binary form: one column for the second class
            logits = np.hstack([np.zeros_like(logits), logits])
        out = np.full((logits.shape[0], n_labels), -np.inf)
        out[:, self.classes] = logits
        return label_log_softmax(out + offset)

    def state(self) -> dict[str, Any]:
        return {"coef": self.coef.tolist(), "intercept": self.intercept.tolist(), "classes": self.classes.tolist()}

    @classmethod
    def load(cls, state: dict[str, Any]) -> "Linear":
        return cls(np.asarray(state["coef"], float), np.asarray(state["intercept"], float),
                   np.asarray(state["classes"], int))


def fit_logistic(X: Any, y: np.ndarray, grid: tuple[float, ...] = (1.0,), seed: int = 0) -> tuple[Linear, float]:
    """A multinomial logistic regression, C from `grid` by stratified CV where there is more than one and every
    class has at least 2 examples; returns the model and its C."""
    model = LogisticRegression(C=grid[0], max_iter=2000)
    folds = min(4, int(np.bincount(y).min())) if len(np.unique(y)) > 1 else 0
    if len(np.unique(y)) < 2:  # one class seen: predict it (a fold of a tiny set)
        return Linear(np.zeros((1, X.shape[1])), np.zeros(1), np.unique(y)[:1]), grid[0]
    if len(grid) > 1 and folds >= 2:
        search = GridSearchCV(model, {"C": list(grid)}, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
        model = search.fit(X, y).best_estimator_
    else:
        model.fit(X, y)
    return Linear.of(model), float(model.C)


class RawLabels(Readout):
    kind = ReadoutKind.RAW

    def _fit(self, answers: Answers, y: np.ndarray) -> None:
        return None

    def log_scores(self, answers: Answers) -> np.ndarray:
        return label_log_softmax(answers.filled_labels())

    def state(self) -> dict[str, Any]:
        return {}

    def _load(self, state: dict[str, Any]) -> None:
        return None


class LabelBias(Readout):
    kind = ReadoutKind.BIAS
    bias: np.ndarray

    def _fit(self, answers: Answers, y: np.ndarray) -> None:
        self.bias = fit_label_bias(answers.filled_labels(), y)

    def log_scores(self, answers: Answers) -> np.ndarray:
        return label_log_softmax(answers.filled_labels() + self.bias)

    def state(self) -> dict[str, Any]:
        return {"bias": self.bias.tolist()}

    def _load(self, state: dict[str, Any]) -> None:
        self.bias = np.asarray(state["bias"], float)


class AffineCalibration(Readout):
    kind = ReadoutKind.AFFINE
    model: Linear

    def _fit(self, answers: Answers, y: np.ndarray) -> None:
        self.model = fit_logistic(label_log_softmax(answers.filled_labels()), y)[0]

    def log_scores(self, answers: Answers) -> np.ndarray:
        return self.model.log_scores(label_log_softmax(answers.filled_labels()), self.n_labels)

    def state(self) -> dict[str, Any]:
        return self.model.state()

    def _load(self, state: dict[str, Any]) -> None:
        self.model = Linear.load(state)


class LearnedVerbalizer(Readout):
    """Per class, the training-list token whose log-prob is highest in that class against the others (distinct
    tokens, the classes with the clearest token choosing first), then one bias per class."""

    kind = ReadoutKind.VERBALIZER
    words: tuple[str, ...]
    bias: np.ndarray

    def _fit(self, answers: Answers, y: np.ndarray) -> None:
        assert answers.topk is not None
        columns = TokenColumns.fit(answers.topk)
        table = columns.dense(answers.topk)
        margin = np.stack([table[y == c].mean(axis=0) - table[y != c].mean(axis=0) if np.any(y == c) else
                           np.full(table.shape[1], -np.inf) for c in range(self.n_labels)])
        chosen: dict[int, int] = {}
        for c in np.argsort(-margin.max(axis=1)):  # clearest class first
            ranked = [t for t in np.argsort(-margin[c]) if t not in chosen.values()]
            chosen[int(c)] = int(ranked[0]) if ranked else 0
        self.words = tuple(columns.tokens[chosen[c]] for c in range(self.n_labels))
        self.bias = fit_label_bias(self._scores(answers), y)

    def _scores(self, answers: Answers) -> np.ndarray:
        assert answers.topk is not None
        return TokenColumns(self.words).dense(answers.topk)

    def log_scores(self, answers: Answers) -> np.ndarray:
        return label_log_softmax(self._scores(answers) + self.bias)

    def state(self) -> dict[str, Any]:
        return {"words": list(self.words), "bias": self.bias.tolist()}

    def _load(self, state: dict[str, Any]) -> None:
        self.words, self.bias = tuple(state["words"]), np.asarray(state["bias"], float)


class TopKLogistic(Readout):
    kind = ReadoutKind.LOGISTIC
    columns: TokenColumns
    model: Linear
    C: float

    def __init__(self, grid: tuple[float, ...] = LOGISTIC_C_GRID):
        self.grid = grid

    def _fit(self, answers: Answers, y: np.ndarray) -> None:
        assert answers.topk is not None
        self.columns = TokenColumns.fit(answers.topk)
        self.model, self.C = fit_logistic(self.columns.linear(answers.topk), y, self.grid)

    def log_scores(self, answers: Answers) -> np.ndarray:
        assert answers.topk is not None, "a top-k readout needs the top-k lists"
        return self.model.log_scores(self.columns.linear(answers.topk), self.n_labels)

    def state(self) -> dict[str, Any]:
        return {"tokens": list(self.columns.tokens), "C": self.C, **self.model.state()}

    def _load(self, state: dict[str, Any]) -> None:
        self.columns, self.C, self.model = TokenColumns(tuple(state["tokens"])), float(state["C"]), Linear.load(state)


class CalibratedResidual(Readout):
    """Calibration's class log-probs as a fixed offset, plus a multinomial logistic regression on the top-k
    features: the L2 penalty pulls the weights toward calibration rather than toward uniform scores, so with few
    examples or little in the lists it *is* calibration and it departs from it only as far as the data carry
    (C, the inverse strength, by held-out cross-entropy on the training answers)."""

    kind = ReadoutKind.RESIDUAL
    bias: np.ndarray
    columns: TokenColumns
    model: Linear
    C: float

    def __init__(self, grid: tuple[float, ...] = RESIDUAL_C_GRID):
        self.grid = grid

    def _offset(self, answers: Answers) -> np.ndarray:
        return label_log_softmax(answers.filled_labels() + self.bias)

    def _fit(self, answers: Answers, y: np.ndarray) -> None:
        assert answers.topk is not None
        self.bias = fit_label_bias(answers.filled_labels(), y)
        self.columns = TokenColumns.fit(answers.topk)
        X, offset = self.columns.linear(answers.topk), self._offset(answers)
        self.C = _held_out_best_C(X, offset, y, self.n_labels, self.grid)
        self.model = fit_offset_logistic(X, offset, y, self.n_labels, self.C)

    def log_scores(self, answers: Answers) -> np.ndarray:
        assert answers.topk is not None, "a top-k readout needs the top-k lists"
        return self.model.log_scores(self.columns.linear(answers.topk), self.n_labels, self._offset(answers))

    def state(self) -> dict[str, Any]:
        return {"bias": self.bias.tolist(), "tokens": list(self.columns.tokens), "C": self.C, **self.model.state()}

    def _load(self, state: dict[str, Any]) -> None:
        self.bias, self.C = np.asarray(state["bias"], float), float(state["C"])
        self.columns, self.model = TokenColumns(tuple(state["tokens"])), Linear.load(state)


def fit_offset_logistic(X: Any, offset: np.ndarray, y: np.ndarray, n_labels: int, C: float,
                        start: Linear | None = None) -> Linear:
    """Multinomial logistic regression with fixed per-row logits `offset` (B, L): weights (L, F) under an L2
    penalty ``|W|^2 / 2C`` (scikit-learn's scaling), an unpenalised intercept; L-BFGS on the exact gradient, from
    `start` (the fit at the next smaller C of a path: fewer steps than from zero) or from zero."""
    X = X.toarray() if sparse.issparse(X) else np.asarray(X)  # a few hundred rows: dense products are faster
    n_features = X.shape[1]
    onehot = np.eye(n_labels)[y]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[:-n_labels].reshape(n_labels, n_features), theta[-n_labels:]
        logp = label_log_softmax(offset + X @ W.T + b)
        error = np.exp(logp) - onehot
        grad_W = error.T @ X + W / C
        return (float(-(logp * onehot).sum() + 0.5 * np.sum(W * W) / C),
                np.concatenate([grad_W.ravel(), error.sum(axis=0)]))

    theta0 = (np.concatenate([start.coef.ravel(), start.intercept]) if start is not None
              else np.zeros(n_labels * (n_features + 1)))
    theta = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500}).x
    return Linear(theta[:-n_labels].reshape(n_labels, n_features), theta[-n_labels:], np.arange(n_labels))


def _held_out_best_C(X: Any, offset: np.ndarray, y: np.ndarray, n_labels: int, grid: tuple[float, ...]) -> float:
    """The smallest C of `grid` (the nearest to calibration) whose held-out cross-entropy is within
    `NEGLIGIBLE_NATS` per example of the lowest (stratified folds); the first C where a class has fewer than two
    examples."""
    present = np.bincount(y, minlength=n_labels)
    folds = min(4, int(present[present > 0].min()))
    if len(grid) == 1 or folds < 2 or np.count_nonzero(present) < 2:
        return grid[0]
    losses = np.zeros(len(grid))
    for fit_rows, held in StratifiedKFold(folds, shuffle=True, random_state=0).split(np.zeros(len(y)), y):
        model = None
        for i, C in enumerate(grid):
            model = fit_offset_logistic(X[fit_rows], offset[fit_rows], y[fit_rows], n_labels, C, start=model)
            logp = model.log_scores(X[held], n_labels, offset[held])
            losses[i] -= logp[np.arange(len(held)), y[held]].sum()
    near_best = losses <= losses.min() + NEGLIGIBLE_NATS * len(y)  # the optimiser's noise is not a better C
    return float(grid[int(np.argmax(near_best))])


class TopKNeighbours(Readout):
    """Class shares among the `NEIGHBOURS` training rows whose top-k distributions are most alike (cosine),
    weighted by that similarity."""

    kind = ReadoutKind.KNN
    columns: TokenColumns
    memory: sparse.csr_matrix
    labels: np.ndarray

    def _fit(self, answers: Answers, y: np.ndarray) -> None:
        assert answers.topk is not None
        self.columns = TokenColumns.fit(answers.topk)
        self.memory, self.labels = _unit_rows(self.columns.probabilities(answers.topk)), y

    def log_scores(self, answers: Answers) -> np.ndarray:
        assert answers.topk is not None, "a top-k readout needs the top-k lists"
        similar = np.asarray((_unit_rows(self.columns.probabilities(answers.topk)) @ self.memory.T).todense())
        k = min(NEIGHBOURS, similar.shape[1])
        nearest = np.argsort(-similar, axis=1)[:, :k]
        votes = np.full((len(similar), self.n_labels), SMOOTHING)
        for row, idx in enumerate(nearest):
            np.add.at(votes[row], self.labels[idx], np.maximum(similar[row, idx], 0.0) + SMOOTHING)
        return np.log(votes / votes.sum(axis=1, keepdims=True))

    def state(self) -> dict[str, Any]:
        m = self.memory
        return {"tokens": list(self.columns.tokens), "labels": self.labels.tolist(), "indptr": m.indptr.tolist(),
                "indices": m.indices.tolist(), "data": m.data.tolist()}

    def _load(self, state: dict[str, Any]) -> None:
        self.columns, self.labels = TokenColumns(tuple(state["tokens"])), np.asarray(state["labels"], int)
        shape = (len(self.labels), len(self.columns.tokens))
        self.memory = sparse.csr_matrix((state["data"], state["indices"], state["indptr"]), shape=shape)


def _unit_rows(m: sparse.csr_matrix) -> sparse.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sparse.csr_matrix(sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ m)


_CLASSES: dict[ReadoutKind, type[Readout]] = {c.kind: c for c in (RawLabels, LabelBias, AffineCalibration,
                                                                   LearnedVerbalizer, TopKLogistic, CalibratedResidual,
                                                                   TopKNeighbours)}
