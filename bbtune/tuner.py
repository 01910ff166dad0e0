"""The one loop of Black-Box Tuning: ask z -> build prompts p = A z + p0 -> score -> loss -> tell.

Two search modes share the loop:
- ``soft``: candidates are continuous prompts (needs a backend that accepts embeddings);
- ``hard`` (projection in the loop): every candidate is projected to its nearest tokens *before* scoring,
  so the search optimizes a text prompt directly; this is what a text-only API can use. At BBT's scale a
  step of sigma barely moves a prompt vector off p0's tokens, so ``A`` is rescaled until about
  ``hard_change`` of the tokens of a typical candidate differ from p0's (see `calibrate_hard_scale`).

Budget counts model calls (one candidate scored on the training batch), never optimizer steps; dev
evaluations are counted apart (``eval_calls``). After every generation a checkpoint is written, so a killed
run resumes exactly where it stopped.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backends.base import Backend
from .constants import CPU_BUDGET_CALLS
from .discretize import Discretizer, Metric
from .errors import BudgetExceeded, CheckpointError, ConfigError
from .evaluate import Evaluation, evaluate
from .losses import Loss, per_prompt_loss
from .optimizers import OptimizerConfig, make_optimizer
from .prompts import HardPrompt, Prompt, SoftPrompt, distinct_prompts
from .results import RunFolder, to_jsonable
from .subspace import Subspace, SubspaceConfig
from .tasks import Task


class Mode(str, Enum):
    SOFT = "soft"
    HARD = "hard"


@dataclass(frozen=True)
class TuneConfig(SubspaceConfig, OptimizerConfig):
    """Everything about one tuning run; subspace and optimizer fields are inherited (one flat CLI)."""

    mode: Mode = field(default=Mode.SOFT, metadata={"help": "soft (continuous prompt) or hard (projection in the loop)"})
    loss: Loss = field(default=Loss.CE, metadata={"help": "ce, hinge or neg_acc over the label words"})
    budget_calls: int = field(default=CPU_BUDGET_CALLS, metadata={"help": "model calls (candidates scored on train)"})
    eval_every: int = field(default=50, metadata={"help": "evaluate the generation's best on dev every N calls"})
    seed: int = field(default=42, metadata={"help": "seed of A, p0 and the optimizer"})
    metric: Metric = field(default=Metric.COSINE, metadata={"help": "nearest-token metric: cosine or dot"})
    vocab_filter: str = field(default="words", metadata={"help": "tokens a hard prompt may use: words, printable, all"})
    block_list: tuple[str, ...] = field(default=(), metadata={"help": "words a hard prompt must never use"})
    hard_change: float = field(default=0.4, metadata={"help": "hard mode: share of tokens a step of sigma0 changes"})

    def __post_init__(self) -> None:
        SubspaceConfig.__post_init__(self)
        OptimizerConfig.__post_init__(self)
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "loss", Loss(self.loss))
        object.__setattr__(self, "metric", Metric(self.metric))
        object.__setattr__(self, "block_list", tuple(self.block_list))
        if self.budget_calls < self.popsize:
            raise ConfigError(f"budget_calls={self.budget_calls} is below one generation (popsize={self.popsize})")
        if self.eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1 call, got {self.eval_every}")
        if not 0 < self.hard_change < 1:
            raise ConfigError(f"hard_change must be in (0, 1), got {self.hard_change}")
        if self.vocab_filter not in ("words", "printable", "all"):
            raise ConfigError(f"vocab_filter must be words, printable or all, got {self.vocab_filter!r}")


@dataclass
class TuneResult:
    best_prompt: Prompt  # what the search optimized (soft in soft mode, hard in hard mode)
    hard_prompt: HardPrompt  # the text prompt (discretized soft prompt, or the searched one)
    soft_prompt: SoftPrompt | None
    best_z: np.ndarray
    metrics: dict[str, Any]
    curve: list[dict[str, Any]]
    run_dir: Path | None = None


@dataclass
class _State:
    """Everything that changes during a run; pickled into the checkpoint with the optimizer."""

    generation: int = 0
    calls: int = 0
    eval_calls: int = 0
    next_eval: int = 0
    best_z: np.ndarray | None = None
    best_dev: tuple[float, float] = (-math.inf, math.inf)  # (acc, loss)
    best_train_loss: float = math.inf
    curve: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    converged: bool = False
    stopped_by: str = ""  # why the run ended before its call budget (a remote hard limit), if it did


class Tuner:
    """Runs BBT on `task` through `backend`. Constructor stores; `run()` works (scikit-learn style).

    >>> # result = Tuner(task, LocalBackend("smollm2"), TuneConfig(mode="hard"), run_dir="runs/x").run()
    """

    def __init__(self, task: Task, backend: Backend, config: TuneConfig = TuneConfig(), run_dir: str | Path | None = None,
                 *, progress: bool = True, extra_config: dict[str, Any] | None = None):
        self.task, self.backend, self.config = task, backend, config
        self.folder = RunFolder(run_dir) if run_dir else None
        self.progress = progress
        self.extra_config = extra_config or {}

    # ------------------------------------------------------------------ setup

    def _setup(self) -> None:
        cfg = self.config
        self.backend.capabilities.require(cfg.mode.value, self.backend.name)
        vocab = self.backend.vocabulary()
        self.discretizer_ = Discretizer(vocab, cfg.metric, cfg.vocab_filter, cfg.block_list)
        self.subspace_ = Subspace.build(vocab, cfg, cfg.seed, allowed=self.discretizer_.allowed)
        self.hard_scale_, self.hard_change_ = 1.0, None
        if cfg.mode is Mode.HARD:
            self.hard_scale_, self.hard_change_ = calibrate_hard_scale(
                self.subspace_, self.discretizer_, cfg.sigma0, cfg.hard_change, cfg.seed)
            self.subspace_ = self.subspace_.rescaled(self.hard_scale_)
        self.optimizer_ = make_optimizer(cfg, self.subspace_.dim, cfg.seed)
        self.train_labels_ = self.task.format.label_ids(self.task.train)

    def _prompts(self, Z: np.ndarray) -> list[Prompt]:
        embeds = self.subspace_.embeds(Z)
        if self.config.mode is Mode.SOFT:
            return [SoftPrompt(e) for e in embeds]
        return [self.discretizer_.to_prompt(ids) for ids in self.discretizer_.ids(embeds).tolist()]

    # ------------------------------------------------------------------ the loop

    def run(self, resume: bool = False) -> TuneResult:
        self._setup()
        state = self._resume() if resume else _State()
        if not resume:
            self._write_config()
            self._start_point(state)
            state.next_eval = self.config.eval_every
        bar = _progress(self.config.budget_calls, state.calls, self.progress)
        try:
            while state.calls + self.config.popsize <= self.config.budget_calls and not state.converged:
                started = time.perf_counter()
                try:
                    self._generation(state)
                except BudgetExceeded as err:  # a backend's own hard limit: keep what is finished
                    state.stopped_by = str(err)
                    break
                state.elapsed_s += time.perf_counter() - started
                self._checkpoint(state)
                bar.update(self.config.popsize)
                bar.set_postfix(loss=f"{state.best_train_loss:.3f}", dev=f"{state.best_dev[0]:.3f}")
        finally:
            bar.close()
        return self._finish(state)

    def _generation(self, state: _State) -> None:
        cfg = self.config
        Z = self.optimizer_.ask()
        prompts = self._prompts(Z)
        scores = self._score_unique(prompts)
        losses = per_prompt_loss(scores, self.train_labels_, cfg.loss)
        self.optimizer_.tell(Z, losses)
        state.generation += 1
        state.calls += len(prompts)
        best = int(np.argmin(losses))
        state.best_train_loss = min(state.best_train_loss, float(losses[best]))
        state.converged = self.optimizer_.stop()
        row: dict[str, Any] = {"generation": state.generation, "calls": state.calls, "train_loss": float(losses[best]),
                               "train_loss_mean": float(losses.mean()), "best_train_loss": state.best_train_loss,
                               "sigma": float(getattr(self.optimizer_, "sigma", cfg.sigma0))}
        if cfg.mode is Mode.HARD:
            row["distinct_prompts"] = len({p.token_ids for p in prompts})  # type: ignore[union-attr]
        if state.calls >= state.next_eval or state.converged or state.calls + cfg.popsize > cfg.budget_calls:
            self._eval_point(state, Z[best], row)
            state.next_eval = state.calls + cfg.eval_every
        state.curve.append(row)

    def _score_unique(self, prompts: list[Prompt]) -> np.ndarray:
        """Score a population; identical hard candidates are scored once (common late in a hard search).
        The budget still counts every candidate, as BBT counts calls, so runs stay comparable."""
        unique, where = distinct_prompts(prompts)
        return self.backend.score(unique, self.task.train, self.task.format)[where]

    def _start_point(self, state: _State) -> None:
        """Curve row for p0 (z = 0), where every search starts: its train loss and dev accuracy."""
        z = np.zeros(self.subspace_.dim)
        scores = self.backend.score(self._prompts(z[None]), self.task.train, self.task.format)
        state.eval_calls += 1
        loss = float(per_prompt_loss(scores, self.train_labels_, self.config.loss)[0])
        row: dict[str, Any] = {"generation": 0, "calls": 0, "train_loss": loss, "best_train_loss": loss}
        state.best_train_loss = loss
        self._eval_point(state, z, row)
        state.curve.append(row)

    def _eval_point(self, state: _State, z: np.ndarray, row: dict[str, Any]) -> None:
        dev = evaluate(self.backend, self._prompts(z[None])[0], self.task.dev, self.task.format)
        state.eval_calls += math.ceil(len(self.task.dev) / 64)
        if (dev.accuracy, -dev.loss) > (state.best_dev[0], -state.best_dev[1]):
            state.best_dev, state.best_z = (dev.accuracy, dev.loss), np.array(z)
        row.update(dev_acc=dev.accuracy, dev_loss=dev.loss, best_dev_acc=state.best_dev[0])

    # ------------------------------------------------------------------ persistence

    def _write_config(self) -> None:
        if self.folder:
            self.folder.write_json("config.json", {
                "tune": asdict(self.config), "task": _describe_task(self.task), "backend": self.backend.name,
                **self.extra_config})

    def _checkpoint(self, state: _State) -> None:
        if not self.folder:
            return
        self.folder.save_checkpoint({"fingerprint": self.subspace_.fingerprint(), "config": to_jsonable(asdict(self.config)),
                                     "optimizer": self.optimizer_, "state": state, "backend_stats": _stats(self.backend)})
        self.folder.write_curve(state.curve)

    def _resume(self) -> _State:
        if not self.folder:
            raise CheckpointError("resume needs a run_dir")
        ckpt = self.folder.load_checkpoint()
        if ckpt["config"] != to_jsonable(asdict(self.config)):
            raise CheckpointError(f"{self.folder.path} was made with another config; resume with the same one")
        if ckpt["fingerprint"] != self.subspace_.fingerprint():
            raise CheckpointError("the rebuilt subspace differs from the checkpoint's (another model or vocabulary?)")
        self.optimizer_ = ckpt["optimizer"]
        for name, value in ckpt["backend_stats"].items():
            if hasattr(self.backend.stats, name):
                setattr(self.backend.stats, name, value)
        return ckpt["state"]

    # ------------------------------------------------------------------ final numbers

    def _finish(self, state: _State) -> TuneResult:
        task, fmt = self.task, self.task.format
        z = state.best_z if state.best_z is not None else self.optimizer_.best[0]
        best = self._prompts(z[None])[0]
        soft = self.subspace_.soft_prompt(z) if self.config.mode is Mode.SOFT else None
        hard = best if isinstance(best, HardPrompt) else self.discretizer_.project(best.embeds)
        round_trip = self.discretizer_.round_trip(hard)
        metrics: dict[str, Any] = {
            "mode": self.config.mode.value, "seed": self.config.seed, "calls": state.calls, "eval_calls": state.eval_calls,
            "generations": state.generation, "converged": state.converged, "wall_s": round(state.elapsed_s, 2),
            "initial_train_loss": state.curve[0]["train_loss"], "best_train_loss": state.best_train_loss, "dev_acc": state.best_dev[0], "dev_loss": state.best_dev[1],
            "hard_prompt": hard.text, "hard_round_trip_ok": round_trip.ok, "hard_scale": self.hard_scale_,
            "hard_change_at_sigma0": self.hard_change_, "backend": self.backend.name,
        }
        evals: list[tuple[str, Prompt, Any]] = [("test", best, task.test)]
        if soft is not None:
            evals += [("hard_dev", hard, task.dev), ("hard_test", hard, task.test)]
        for name, prompt, examples in evals:
            if examples and not state.stopped_by:
                try:
                    metrics.update(evaluate(self.backend, prompt, examples, fmt).as_dict(name))
                except BudgetExceeded as err:
                    state.stopped_by = str(err)
        if state.stopped_by:
            metrics["stopped_by"] = state.stopped_by
        metrics["backend_stats"] = _stats(self.backend)
        result = TuneResult(best, hard, soft, z, metrics, state.curve, self.folder.path if self.folder else None)
        if self.folder:
            self._write_results(result, round_trip.reencoded)
        return result

    def _write_results(self, result: TuneResult, reencoded: tuple[int, ...]) -> None:
        assert self.folder is not None
        tensors = {"z": torch.as_tensor(result.best_z)}
        if result.soft_prompt is not None:
            tensors["soft_prompt"] = result.soft_prompt.embeds
        self.folder.save_tensors("best_prompt.safetensors", tensors)
        hp = result.hard_prompt
        self.folder.write_json("hard_prompt.json", {"text": hp.text, "token_ids": hp.token_ids, "tokens": hp.tokens,
                                                    "round_trip_ok": reencoded == hp.token_ids, "reencoded_ids": reencoded})
        self.folder.write_json("metrics.json", result.metrics)
        self.folder.write_curve(result.curve)


def tune(task: Task, backend: Backend, config: TuneConfig = TuneConfig(), run_dir: str | Path | None = None, *,
         progress: bool = True, resume: bool = False, extra_config: dict[str, Any] | None = None) -> TuneResult:
    """Run BBT and return the result; see `Tuner`."""
    return Tuner(task, backend, config, run_dir, progress=progress, extra_config=extra_config).run(resume=resume)


def calibrate_hard_scale(subspace: Subspace, discretizer: Discretizer, sigma0: float, target: float, seed: int,
                         samples: int = 16, steps: int = 18) -> tuple[float, float]:
    """Factor for A such that candidates z ~ N(0, sigma0^2 I) change about `target` of p0's nearest tokens.

    The share of changed tokens grows monotonically with the scale, so a bisection in log-scale finds it.
    Returns (factor, share reached).
    """
    Z = np.random.default_rng(seed + 1).standard_normal((samples, subspace.dim)) * sigma0
    start = discretizer.ids(subspace.p0)
    moves = (torch.as_tensor(Z, dtype=subspace.A.dtype) @ subspace.A.T).view(samples, *subspace.p0.shape)

    def share(scale: float) -> float:
        return float((discretizer.ids(subspace.p0 + scale * moves) != start).float().mean())

    lo, hi = 1e-2, 1e3
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if share(mid) < target else (lo, mid)
    return hi, share(hi)


def _describe_task(task: Task) -> dict[str, Any]:
    fmt = task.format
    return {"name": task.name, "template": fmt.template.pattern, "verbalizer": dict(fmt.verbalizer),
            "placement": fmt.placement.value, "n_train": len(task.train), "n_dev": len(task.dev), "n_test": len(task.test)}


def _stats(backend: Backend) -> dict[str, Any]:
    stats = backend.stats
    return stats.as_dict() if hasattr(stats, "as_dict") else dict(vars(stats))


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, done: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="call", desc="bbtune", dynamic_ncols=True)
