import pickle

import numpy as np
import pytest

from bbtune.errors import ConfigError
from bbtune.optimizers import OptimizerConfig, make_optimizer


@pytest.mark.parametrize("name", ["cma", "random"])
def test_ask_tell_shapes_and_progress_on_a_sphere(name):
    opt = make_optimizer(OptimizerConfig(optimizer=name, popsize=8, sigma0=0.5), dim=5, seed=0)
    first = None
    for _ in range(40):
        X = opt.ask()
        assert X.shape == (8, 5)
        f = ((X - 1.0) ** 2).sum(axis=1)
        opt.tell(X, f)
        first = first if first is not None else f.min()
    assert opt.best[1] < first
    assert opt.best[1] == pytest.approx(((opt.best[0] - 1.0) ** 2).sum())


def test_cma_beats_random_search_on_a_sphere():
    finals = {}
    for name in ("cma", "random"):
        opt = make_optimizer(OptimizerConfig(optimizer=name, popsize=8), dim=10, seed=3)
        for _ in range(60):
            X = opt.ask()
            opt.tell(X, ((X - 0.5) ** 2).sum(axis=1))
        finals[name] = opt.best[1]
    assert finals["cma"] < finals["random"] / 10


@pytest.mark.parametrize("name", ["cma", "random"])
def test_same_seed_same_candidates_and_pickle_resumes_exactly(name):
    cfg = OptimizerConfig(optimizer=name, popsize=4)
    a, b = make_optimizer(cfg, 3, seed=7), make_optimizer(cfg, 3, seed=7)
    X = a.ask()
    assert np.array_equal(X, b.ask())
    a.tell(X, X.sum(1))
    saved = pickle.dumps(a)
    np.random.seed(123)  # the global RNG must not matter
    after = a.ask()
    restored = pickle.loads(saved)
    np.random.seed(999)
    assert np.array_equal(after, restored.ask())


def test_bound_is_respected():
    opt = make_optimizer(OptimizerConfig(optimizer="cma", popsize=6, sigma0=5.0, bound=1.0), dim=4, seed=0)
    X = opt.ask()
    assert np.all(np.abs(X) <= 1.0 + 1e-9)


@pytest.mark.parametrize("field, value", [("popsize", 1), ("sigma0", 0.0), ("bound", -1.0)])
def test_bad_optimizer_config(field, value):
    with pytest.raises(ConfigError, match=field):
        OptimizerConfig(**{field: value})
