"""What a finished run found, typed: `RunMetrics` and its parts, written as ``metrics.json`` with a schema version.

The file keeps the keys it always had (tables, sweeps, benchmark scripts and the docs' generated pages read
them); ``schema_version`` says which shape a file has. A file without it (version 1) is the plain dict the tuner
wrote before this type existed: `RunMetrics.from_json` converts it, and keeps keys it does not know in `extra`
(written back as they were), so an old or a newer run folder never fails to load over a key.

    >>> m = RunMetrics(mode="hard", calls=30, test_acc=0.8)
    >>> RunMetrics.from_json(m.to_json()) == m
    True
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping

from bbtune.backends.accounting import RemoteStats
from bbtune.backends.base import CallStats
from bbtune.backends.wire import ProbeReport
from bbtune.core.options import known_fields
from bbtune.errors import CheckpointError
from bbtune.runs.endings import Ending
from bbtune.search.selection import Decision

SCHEMA_VERSION = 2  # 1: the untyped dict (no schema_version key)
SCHEMA_KEY = "schema_version"
ALWAYS_WRITTEN = frozenset({"discretized_prompt", "hard_change_at_sigma0"})  # null in the file where None
DERIVED = frozenset({"missing_rate", SCHEMA_KEY})  # written for readers, computed again on load


@dataclass
class ReadoutSummary:
    """The returned prompt's readout in brief (the whole fitted estimator is in ``readout.json``)."""

    kind: str
    k: int | None = None  # top-k depth it reads (0 or None: the label scores alone)
    reason: str = ""
    out_of_fold: dict[str, float] = field(default_factory=dict)  # each candidate readout's out-of-fold accuracy
    lifted: int = 0  # tokens it reads below the top-k list

    @property
    def held_out_accuracy(self) -> float | None:
        """The chosen readout's out-of-fold accuracy on the training pool: how two runs' prompts (say, with and
        without demonstrations) compare without looking at test."""
        return self.out_of_fold.get(self.kind)


@dataclass
class SplitScores:
    dev: float | None = None
    test: float | None = None


@dataclass
class AnswerScores:
    """A generation run's answer metric under its own name (the same numbers as ``manual_dev_acc``,
    ``tuned_dev_acc``, ... which tables and sweeps read)."""

    metric: str
    manual: SplitScores = field(default_factory=SplitScores)
    tuned: SplitScores = field(default_factory=SplitScores)
    returned: str = ""  # "manual" or "tuned"
    tuned_prompt: str | None = None


@dataclass
class RunMetrics:
    """Every number of a finished run. Fields without a value (None) are left out of the file unless listed in
    `ALWAYS_WRITTEN`; every field has a default, so a file from any version loads."""

    # the search
    mode: str = ""
    seed: int = 0
    calls: int = 0
    eval_calls: int = 0
    generations: int = 0
    converged: bool = False
    stop_reasons: dict[str, float] = field(default_factory=dict)  # the optimizer's termination criteria that held
    wall_s: float = 0.0
    initial_train_loss: float | None = None
    best_train_loss: float | None = None
    selected: str = "tuned"  # which prompt the run returned: "tuned" or "manual"
    select_rule: str = ""
    p0: str = ""
    prompt_tokens_used: int = 0
    dev_acc: float | None = None  # the returned prompt's
    dev_loss: float | None = None
    tuned_dev_acc: float | None = None
    hard_prompt: str | None = None  # the text a person pastes (a soft run: its nearest tokens)
    hard_round_trip_ok: bool | None = None
    discretized_prompt: str | None = None
    hard_scale: float = 1.0
    hard_change_at_sigma0: float | None = None
    backend: str = ""
    label_bias: dict[str, float] | list[float] | None = None  # the returned prompt's calibration (None: none)
    # generation tasks
    task_kind: str | None = None
    answer_scoring: str | None = None
    answer_metric: str | None = None
    skipped: list[str] | None = None
    # the manual prompt beside the result
    manual_readout: str | None = None  # how it competed: raw or bias
    manual_dev_acc: float | None = None
    manual_dev_loss: float | None = None
    manual_train_loss: float | None = None
    manual_calibrated_dev_acc: float | None = None
    readout: ReadoutSummary | None = None
    # test numbers (and the soft result's nearest tokens on dev and test)
    test_acc: float | None = None
    test_loss: float | None = None
    test_n: int | None = None
    test_acc_without_readout: float | None = None
    manual_test_acc: float | None = None
    manual_calibrated_test_acc: float | None = None
    gain_over_manual: float | None = None
    hard_dev_acc: float | None = None
    hard_dev_loss: float | None = None
    hard_dev_n: int | None = None
    hard_test_acc: float | None = None
    hard_test_loss: float | None = None
    hard_test_n: int | None = None
    stopped_by: str | None = None  # why the run ended before its budget (a limit), if it did
    tuned_test_acc: float | None = None  # the tuned prompt on test where the manual one was returned
    answer_scores: AnswerScores | None = None
    # how it went
    backend_stats: CallStats = field(default_factory=CallStats)
    probe: ProbeReport | None = None  # what the server supports, as the run used it
    decision: Decision | None = None  # tuned or manual, and why (None: no manual prompt was scored)
    ending: Ending = Ending.BUDGET
    config_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # keys this version does not know

    def __post_init__(self) -> None:
        self.ending = Ending(self.ending)

    @property
    def missing_rate(self) -> float:
        """Share of label scores that were missing (NaN) from the server's replies (`bbtune.search.losses`)."""
        return float(self.backend_stats.missing_rate)

    @property
    def kept_manual(self) -> bool:
        return self.selected == "manual"

    def to_json(self) -> dict[str, Any]:
        """The metrics.json object: the keys of every earlier version, ``schema_version`` first."""
        out: dict[str, Any] = {SCHEMA_KEY: SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and (value is not None or f.name in ALWAYS_WRITTEN):
                out[f.name] = _plain(value)
            if f.name == "backend_stats":
                out["missing_rate"] = self.missing_rate
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "RunMetrics":
        """A metrics.json object of any version (an older one is converted first); unknown keys go to `extra`."""
        version = data.get(SCHEMA_KEY, 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise CheckpointError(f"metrics.json has {SCHEMA_KEY} {version!r}, which this bbtune cannot read (it "
                                  f"reads up to {SCHEMA_VERSION}); upgrade bbtune")
        data = _from_version_1(data) if version == 1 else dict(data)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {name: _PARTS[name](data[name]) if name in _PARTS and data[name] is not None else data[name]
                  for name in known if name in data}
        return cls(**values, extra={k: v for k, v in data.items() if k not in known and k not in DERIVED})

    # A read-only view by metrics.json key, for scripts written against the file (``run.metrics["test_acc"]``);
    # bbtune's own modules read the fields.
    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.to_json()

    def keys(self) -> Any:
        return self.to_json().keys()

    def items(self) -> Any:
        return self.to_json().items()


def _from_version_1(data: Mapping[str, Any]) -> dict[str, Any]:
    """The dict the tuner wrote before `RunMetrics`: the same keys, but runs from before endings were recorded
    lack ``ending`` (derived here as the tuner did then: a limit, convergence, or the budget)."""
    out = dict(data)
    if "ending" not in out:
        out["ending"] = (Ending.LIMIT if out.get("stopped_by") else
                         Ending.CONVERGED if out.get("converged") else Ending.BUDGET).value
    return out


def _part(cls: type) -> Callable[[Mapping[str, Any]], Any]:
    """Reads a nested part, ignoring keys it does not have (a newer or older file)."""
    return lambda data: cls(**known_fields(cls, data))


def _stats(data: Mapping[str, Any]) -> CallStats:
    """A remote backend's counters where the file has any of them (requests, cost, ...), else the common ones."""
    remote_only = {f.name for f in dataclasses.fields(RemoteStats)} - {f.name for f in dataclasses.fields(CallStats)}
    stats: CallStats = _part(RemoteStats if remote_only & set(data) else CallStats)(data)
    return stats


def _answer_scores(data: Mapping[str, Any]) -> AnswerScores:
    parts = {name: _part(SplitScores)(data.get(name) or {}) for name in ("manual", "tuned")}
    scores: AnswerScores = _part(AnswerScores)({**data, **parts})
    return scores


_PARTS: dict[str, Callable[[Any], Any]] = {
    "decision": _part(Decision), "readout": _part(ReadoutSummary), "answer_scores": _answer_scores,
    "backend_stats": _stats, "probe": _part(ProbeReport), "ending": Ending, "stop_reasons": dict,
}


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
