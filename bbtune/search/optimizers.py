"""Derivative-free optimizers speaking ask/tell (pycma's OOOptimizer shape).

The tuner owns the loop, the budget and checkpoints; an optimizer only proposes points (`ask`) and learns
from their losses (`tell`). Each owns a `numpy.random.Generator`, never the global RNG, so pickling the
optimizer captures all its randomness and a resumed run continues with exactly the same candidates.

Example:
    >>> opt = make_optimizer(OptimizerConfig(popsize=4), dim=3, seed=0)
    >>> X = opt.ask(); opt.tell(X, (X ** 2).sum(axis=1)); X.shape
    (4, 3)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import cma
import numpy as np

from bbtune.constants import CPU_POPSIZE
from bbtune.errors import ConfigError


CMA_MIN_POPSIZE = 3  # pycma's two-point step-size adaptation injects two mirrored candidates per generation


class OptimizerName(str, Enum):
    CMA = "cma"
    RANDOM = "random"


@dataclass(frozen=True)
class OptimizerConfig:
    optimizer: OptimizerName = field(default=OptimizerName.CMA, metadata={"help": "cma (CMA-ES) or random (search)"})
    popsize: int = field(default=CPU_POPSIZE, metadata={"help": "candidates per generation"})
    sigma0: float = field(default=1.0, metadata={"help": "initial step size in z-space"})
    bound: float = field(default=0.0, metadata={"help": "box bound |z_i| <= bound; 0 means unbounded"})
    early_stop: bool = field(default=False, metadata={
        "help": "also stop at pycma's convergence tests (tolfun, tolx, flat fitness, stagnation); default: the budget ends a run"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", OptimizerName(self.optimizer))
        if self.popsize < 2:
            raise ConfigError(f"popsize must be >= 2, got {self.popsize}")
        if self.popsize < CMA_MIN_POPSIZE and self.optimizer is OptimizerName.CMA:  # else pycma fails in generation 2
            raise ConfigError(f"popsize={self.popsize} is too small for CMA-ES: its step-size adaptation in large "
                              f"dimensions needs >= {CMA_MIN_POPSIZE} candidates per generation (or use optimizer "
                              "random)")
        if not self.sigma0 > 0 or not math.isfinite(self.sigma0):  # NaN compares False: say it, do not pass it on
            raise ConfigError(f"sigma0 must be a finite number > 0, got {self.sigma0}")
        if not self.bound >= 0 or not math.isfinite(self.bound):
            raise ConfigError(f"bound must be >= 0 (0 = unbounded), got {self.bound}")


class Optimizer(Protocol):
    popsize: int

    def ask(self) -> np.ndarray:
        """(popsize, dim) candidates."""
        ...

    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None: ...

    def stop(self) -> bool:
        """True when the optimizer has converged and more calls would be wasted."""
        ...

    def stop_reasons(self) -> dict[str, float]:
        """Which termination criteria hold now (pycma's `es.stop()`), for the run's metrics."""
        ...

    @property
    def best(self) -> tuple[np.ndarray, float]:
        """Best point seen and its loss."""
        ...


class _Randn:
    """Picklable `randn(lam, N)` for cma, drawing from our own generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


# pycma's convergence tests, switched off so that the call budget ends a run: with few noisy evaluations
# (32 examples, hard prompts that often tie) they fire long before the budget is spent (tolflatfitness=1
# ended hard runs after 84 of 300 calls). The numerical safeguards (tolconditioncov, tolfacupx, tolupsigma) stay.
_BUDGET_ENDS_RUN = {"tolfun": 0.0, "tolfunhist": 0.0, "tolfunrel": 0.0, "tolx": 0.0, "tolflatfitness": 10**9,
                    "tolstagnation": 10**9, "tolxstagnation": False, "maxiter": math.inf}


class CMAES:
    """CMA-ES through `cma`, started at z = 0 (that is, at p0)."""

    def __init__(self, dim: int, config: OptimizerConfig, seed: int):
        opts: dict = {"popsize": config.popsize, "seed": math.nan, "randn": _Randn(np.random.default_rng(seed)),
                      "verbose": -9}
        if not config.early_stop:
            opts.update(_BUDGET_ENDS_RUN)
        if config.bound:
            opts["bounds"] = [-config.bound, config.bound]
        self.popsize = config.popsize
        self.es = cma.CMAEvolutionStrategy(np.zeros(dim), config.sigma0, opts)
        self._best = (np.zeros(dim), math.inf)

    def ask(self) -> np.ndarray:
        return np.asarray(self.es.ask())

    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        self.es.tell(list(candidates), [float(v) for v in losses])
        _keep_best(self, candidates, losses)

    def stop(self) -> bool:
        return bool(self.es.stop())

    def stop_reasons(self) -> dict[str, float]:
        return {str(k): _plain(v) for k, v in self.es.stop().items()}

    @property
    def best(self) -> tuple[np.ndarray, float]:
        return self._best

    @property
    def sigma(self) -> float:
        return float(self.es.sigma)


class RandomSearch:
    """Pure random search: z ~ N(0, sigma0^2 I), clipped to the bound. A floor any optimizer must beat."""

    def __init__(self, dim: int, config: OptimizerConfig, seed: int):
        # plain numbers, not the config: the checkpoint reads back only allow-listed types (runs/safepickle.py)
        self.popsize, self.dim, self.sigma0, self.bound = config.popsize, dim, config.sigma0, config.bound
        self.rng = np.random.default_rng(seed)
        self._best = (np.zeros(dim), math.inf)

    def ask(self) -> np.ndarray:
        X = self.rng.standard_normal((self.popsize, self.dim)) * self.sigma0
        return np.clip(X, -self.bound, self.bound) if self.bound else X

    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        _keep_best(self, candidates, losses)

    def stop(self) -> bool:
        return False

    def stop_reasons(self) -> dict[str, float]:
        return {}

    @property
    def best(self) -> tuple[np.ndarray, float]:
        return self._best

    @property
    def sigma(self) -> float:
        return self.sigma0


def _plain(value: object) -> float:
    """pycma reports a criterion's threshold as a number, list or array; metrics.json wants one number."""
    arr = np.asarray(value, dtype=float).ravel()
    return float(arr[0]) if arr.size else math.nan


def _keep_best(opt: CMAES | RandomSearch, candidates: np.ndarray, losses: np.ndarray) -> None:
    i = int(np.argmin(losses))
    if losses[i] < opt._best[1]:
        opt._best = (np.array(candidates[i]), float(losses[i]))


def make_optimizer(config: OptimizerConfig, dim: int, seed: int) -> Optimizer:
    if config.optimizer is OptimizerName.CMA:
        return CMAES(dim, config, seed)
    return RandomSearch(dim, config, seed)
