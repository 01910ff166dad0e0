"""Shared fixtures: the tiny in-process model (fast) and a tiny task; the real SmolLM2 only where marked."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# A gate that cannot fail by chance: `make test` replays the same examples on every run (derandomize, no example
# database, no deadline: a loaded machine changes nothing). `make fuzz` explores (HYPOTHESIS_PROFILE=fuzz): random
# draws, ten times the examples, failures kept in .hypothesis/; a crash it finds becomes an @example or a test.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=100,
                          suppress_health_check=_QUIET, print_blob=True)
settings.register_profile("fuzz", derandomize=False, deadline=None, max_examples=1000, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# One thread: on 2 shared cores torch's default oversubscribes and tiny forwards get ~100x slower.
torch.set_num_threads(1)

from bbtune.core import secrets
from bbtune.tasks import Example, Task, TaskFormat, Template

POS = ["a great film", "I love it", "an excellent and moving story", "good fun for everyone", "wonderful acting",
       "the story is great", "an excellent film", "I love the ending"]
NEG = ["a terrible film", "I hate it", "a boring movie with bad jokes", "the ending is awful", "bad acting",
       "the story is boring", "an awful film", "I hate the jokes"]


@pytest.fixture(autouse=True)
def _forget_secrets():
    """Values one test marked as secret are not redacted from the next test's output (no order dependence)."""
    yield
    secrets.forget()


@pytest.fixture(scope="session")
def tiny_backend():
    from bbtune.backends.local import LocalBackend

    return LocalBackend("tiny")


@pytest.fixture(scope="session")
def tiny_task() -> Task:
    fmt = TaskFormat(Template("{text} It was{label}"), {"negative": " terrible", "positive": " great"})
    ex = [Example(t, "positive") for t in POS] + [Example(t, "negative") for t in NEG]
    train = tuple(ex[0:4] + ex[8:12])
    dev = tuple(ex[4:6] + ex[12:14])
    test = tuple(ex[6:8] + ex[14:16])
    return Task("tiny-sentiment", fmt, train, dev, test)


@pytest.fixture(scope="session")
def smollm2_backend():
    from bbtune.backends.local import LocalBackend

    return LocalBackend("smollm2")
