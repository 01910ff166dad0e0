"""Deciding, per request, whether to misbehave: seeded, counted, thread-safe.

Requests are numbered 1, 2, ... as they arrive; rule `every=N` fires on numbers divisible by N, rule
`prob=p` draws from one seeded generator (one draw per request per such rule, in rule order), so the same
seed and the same request order give the same faults.
"""
from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass

from .config import FaultConfig, FaultKind


@dataclass(frozen=True)
class Decision:
    """What to do with one request: the fault (None = answer normally) and the latency to add first."""

    fault: FaultKind | None
    delay_s: float


class FaultInjector:
    def __init__(self, config: FaultConfig):
        self.config = config
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._seen = 0
        self.fired: Counter[str] = Counter()

    def decide(self) -> Decision:
        with self._lock:
            self._seen += 1
            fault = None
            for rule in self.config.rules:
                drawn = self._rng.random() if rule.prob > 0 else 1.0
                hit = (rule.every > 0 and self._seen % rule.every == 0) or drawn < rule.prob
                if fault is None and hit and (rule.limit is None or self.fired[rule.kind.value] < rule.limit):
                    fault = rule.kind
            if fault is not None:
                self.fired[fault.value] += 1
            jitter = self._rng.random() * self.config.jitter_s if self.config.jitter_s else 0.0
            return Decision(fault, self.config.latency_s + jitter)
