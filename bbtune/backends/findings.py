"""What the probe found about a server (`ProbeReport`), and how requests are built because of it (`Settings`).

The probe returns a report; the backend applies it (`ProbeReport.applied`). Nothing else changes a backend's
settings, so a probe that fails halfway leaves the backend as it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from bbtune.constants import MAX_ANSWERS_PER_REQUEST


@dataclass(frozen=True)
class Settings:
    """How requests are built right now: the configured values until a probe's report is applied."""

    top_k: int  # log-probs asked per position
    batch_size: int  # prompts per request (1 where lists are refused, and on /chat/completions)
    logit_bias: float = 0.0  # the bias on every label token (0 = none)
    answers_per_request: int = MAX_ANSWERS_PER_REQUEST  # answers one request may ask through ``n``


@dataclass
class ProbeReport:
    """What the probe found and decided; saved in the run folder (config/metrics) with the backend's stats."""

    mode: str
    top_k: int  # the deepest k the server accepted (asked for first: the configured one)
    batch_size: int  # 1 when lists of prompts were refused or answered differently
    logit_bias: float = 0.0  # the bias added to every label token (0 = none)
    top_k_returned: int | None = None
    sample_missing_rate: float | None = None  # labels missing on the probe's sample of the task, as run
    sample_unparsed_rate: float | None = None  # text mode: answers on the sample that named no label
    answers_per_request: int | None = None  # text mode: answers one request carries (the server's `n`)
    models: list[str] | None = None
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_refused: bool = False  # text mode: the server refused ``n`` answers in one request

    @classmethod
    def start(cls, mode: str, settings: Settings) -> "ProbeReport":
        """A report before any finding: the settings the probe starts from."""
        return cls(mode=mode, top_k=settings.top_k, batch_size=settings.batch_size)

    def applied(self, before: Settings) -> Settings:
        """`before` with what the probe found: depth, list size, bias, and one answer per request where ``n`` was
        refused."""
        return replace(before, top_k=self.top_k, batch_size=self.batch_size, logit_bias=self.logit_bias,
                       answers_per_request=1 if self.n_refused else before.answers_per_request)
