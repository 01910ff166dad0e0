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

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bbtune.backends.base import Backend
from bbtune.constants import EVAL_BATCH
from bbtune.core.progress import progress_bar
from bbtune.core.prompts import MANUAL_PROMPT, HardPrompt, Prompt, SoftPrompt, distinct_prompts
from bbtune.errors import BBTuneError, BudgetExceeded, CheckpointError
from bbtune.runs.cue import resolve_p0, start_from_cue
from bbtune.runs.config import READOUT_SETTINGS, Mode, TuneConfig, describe_task
from bbtune.runs.endings import ending_of
from bbtune.runs.final import FinalScoring, answer_scores
from bbtune.runs.folder import (BEST_PROMPT, HARD_PROMPT, LEDGER, METRICS, READOUT, REPLIES,
                                RunFolder, fingerprint, to_jsonable)
from bbtune.runs.manual import bias_row, manual_bias, manual_point
from bbtune.runs.metrics import RunMetrics
from bbtune.runs.store import RunStore
from bbtune.runs.tracking import Tracker, live_tracking, untracked
from bbtune.search.discretize import Discretizer
from bbtune.search.evaluate import Evaluation
from bbtune.search.fluency import prompt_nll, text_scorer, whole_words
from bbtune.search.hard_scale import calibrate_hard_scale
from bbtune.search.objective import GenerationObjective, LabelObjective, Objective, skipped_for_generation
from bbtune.search.optimizers import make_optimizer
from bbtune.search.readout_objective import SearchReadout, readout_objective
from bbtune.search.readouts.fitted import RunReadout
from bbtune.search.selection import selection_key
from bbtune.search.subspace import P0Init, Subspace, SubspaceConfig
from bbtune.tasks import Task
from bbtune.tasks.answer_metrics import answer_metric

__all__ = ["READOUT_SETTINGS", "Mode", "TuneConfig", "TuneResult", "Tuner", "calibrate_hard_scale", "run_tuner"]


@dataclass
class TuneResult:
    best_prompt: Prompt  # the returned prompt: the tuned one (soft or hard, by mode), or the manual one where kept
    hard_prompt: HardPrompt  # the text prompt (discretized soft prompt, or the searched one)
    soft_prompt: SoftPrompt | None
    best_z: np.ndarray
    metrics: RunMetrics  # every number of the run (metrics.json)
    curve: list[dict[str, Any]]
    run_dir: Path | None = None
    discretized: HardPrompt | None = None  # soft mode: nearest tokens of the tuned soft prompt (even if not selected)
    readout: RunReadout | None = None  # how the returned prompt's answers become labels (None: its label bias)


@dataclass
class _State:
    """Everything that changes during a run; pickled into the checkpoint with the optimizer (a field of a new
    class needs a line in `bbtune.runs.safepickle`'s allow-list; plain values do not)."""

    generation: int = 0
    calls: int = 0
    eval_calls: int = 0
    next_eval: int = 0
    best_z: np.ndarray | None = None
    best_bias: np.ndarray | None = None  # calibration of the selected point (None without --calibrate)
    best_key: tuple[float, ...] = (math.inf,)  # selection key of the selected point (lower wins)
    best_dev: tuple[float, float] = (-math.inf, math.inf)  # (acc, loss) of the selected point
    best_dev_eval: Evaluation | None = None  # its dev evaluation, per example (for the decision against manual)
    manual: dict[str, Any] = field(default_factory=dict)  # the manual prompt's train/dev numbers and key
    best_train_loss: float = math.inf
    curve: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    converged: bool = False
    stop_reasons: dict[str, float] = field(default_factory=dict)  # the optimizer's termination criteria that held
    stopped_by: str = ""  # why the run ended before its call budget (a remote hard limit), if it did


class Tuner:
    """Runs BBT on `task` through `backend`. Constructor stores; `run()` works (scikit-learn style).

    >>> # result = Tuner(task, LocalBackend("smollm2"), TuneConfig(mode="hard"), run_dir="runs/x").run()
    """

    def __init__(self, task: Task, backend: Backend, config: TuneConfig = TuneConfig(), run_dir: str | Path | None = None,
                 *, progress: bool = True, extra_config: dict[str, Any] | None = None, overwrite: bool = False,
                 settings: dict[str, Any] | None = None, tracker: Tracker | None = None):
        self.task, self.backend, self.config = task, backend, config
        self.tracker = tracker  # where the run is reported (default: the one config.track names, if any)
        self.folder = RunFolder(run_dir) if run_dir else None
        self.progress = progress
        self.extra_config = extra_config or {}  # saved and fingerprinted: --resume must rebuild the same
        self.settings = settings or {}  # saved, not fingerprinted: what --resume may change (limits, retries)
        self.overwrite = overwrite

    # ------------------------------------------------------------------ setup

    def _setup(self) -> None:
        cfg = self.config
        self.task_ = self.task  # what this run tunes (a cue start swaps its template); the input is never changed
        self.backend.capabilities.require(cfg.mode.value, self.backend.name)
        vocab = self.backend.vocabulary()
        self.manual_ = MANUAL_PROMPT
        self.p0_ = resolve_p0(cfg, self.task, vocab)
        space: SubspaceConfig = replace(cfg, p0=self.p0_)
        p0_ids: tuple[int, ...] = ()
        if self.p0_ is P0Init.CUE:
            space, p0_ids, self.task_, self.manual_ = start_from_cue(cfg, self.task_, vocab)
        self.scorer_ = text_scorer(self.backend) if cfg.fluency or cfg.vocab_filter == "common" else None
        within = (whole_words(self.scorer_, vocab.allowed_mask("common"))
                  if self.scorer_ is not None and cfg.vocab_filter == "common" else None)
        self.discretizer_ = Discretizer(vocab, cfg.metric, cfg.vocab_filter, cfg.block_list,
                                        also_allow=self.manual_.token_ids, within=within)
        self.subspace_ = Subspace.build(vocab, space, cfg.seed, allowed=self.discretizer_.allowed, sigma0=cfg.sigma0,
                                        p0_ids=p0_ids)
        self.hard_scale_, self.hard_change_ = 1.0, None
        if cfg.mode is Mode.HARD:
            self.hard_scale_, self.hard_change_ = calibrate_hard_scale(
                self.subspace_, self.discretizer_, cfg.sigma0, cfg.hard_change, cfg.seed)
            self.subspace_ = self.subspace_.rescaled(self.hard_scale_)
        self.optimizer_ = make_optimizer(cfg, self.subspace_.dim, cfg.seed)
        self.label_objective_ = self._label_objective()
        self.objective_ = self._objective()
        self.scoring_ = FinalScoring(self.backend, self.task_, cfg, self.objective_, self.label_objective_, self.manual_)
        self.eval_points_: list[dict[str, Any]] = []  # every dev-evaluated point (z, bias, numbers): for studies
        # fixed once the task is (a cue start changes its template); it hashes every example, so not per checkpoint
        self.run_config_ = to_jsonable({"tune": untracked(asdict(cfg)), "task": describe_task(self.task_),
                                        "backend": self.backend.name, **self.extra_config})
        self.store_ = RunStore(self.folder, self.run_config_, self.settings) if self.folder else None

    def _label_objective(self) -> Objective:
        """The task's own scores: label words (classification) or answers (a generation task). The manual prompt's
        reported numbers read these whatever the search reads."""
        cfg, fmt = self.config, self.task_.format
        if fmt.is_generation:
            return GenerationObjective(self.backend, fmt, cfg.answer_scoring, answer_metric(cfg.answer_metric),
                                       cfg.answer_max_tokens)
        return LabelObjective(self.backend, fmt, fmt.label_ids(self.task_.train), cfg.loss, cfg.calibrate)

    def _objective(self) -> Objective:
        """What the loop minimises: the task's own scores, or a classifier's through a readout of the top-k
        (``search_readout``, `bbtune.search.readout_objective`)."""
        cfg, fmt = self.config, self.task_.format
        if fmt.is_generation or cfg.search_readout is SearchReadout.LABELS:
            return self.label_objective_
        return readout_objective(cfg.search_readout, self.backend, fmt, fmt.label_ids(self.task_.train),
                                 cfg.readout_topk, cfg.loss, cfg.seed)

    def prompt(self, z: np.ndarray) -> Prompt:
        """The prompt a point z of the subspace stands for (soft, or its nearest tokens in hard mode)."""
        return self._prompts(np.asarray(z)[None])[0]

    def _prompts(self, Z: np.ndarray) -> list[Prompt]:
        embeds = self.subspace_.embeds(Z)
        if self.config.mode is Mode.SOFT:
            return [SoftPrompt(e) for e in embeds]
        return [self.discretizer_.to_prompt(ids) for ids in self.discretizer_.ids(embeds).tolist()]

    # ------------------------------------------------------------------ the loop

    def run(self, resume: bool = False) -> TuneResult:
        """The whole run, holding the run folder's lock (a second writer fails at once)."""
        self.tracking_ = live_tracking(self.config.track, self.config.track_uri, self.folder.path if self.folder else None,
                                       f"{self.task.name}-{self.config.mode.value}-{self.config.seed}", self.tracker)
        with self.folder.lock() if self.folder else nullcontext(), self.tracking_:
            return self._run(resume)

    def _run(self, resume: bool) -> TuneResult:
        self._setup()
        state = self._resume() if resume else self._begin()
        try:
            self._keep_books(resume)
            self.tracking_.begin(self.run_config_, fresh=not resume)
            if not state.curve:  # a new run, or one killed before its start point was checkpointed
                self._manual_point(state)
                self._start_point(state)
                state.next_eval = self.config.eval_every
                self._checkpoint(state)
            elif state.manual:
                self._first_call_again()
        except BBTuneError as err:
            self._abandon(err, resume)
            raise
        self.tracking_.curve(state.curve, self.backend.stats.as_dict())  # a resumed run: the steps its tracker lacks
        bar = progress_bar(self.config.budget_calls, "call", initial=state.calls, enabled=self.progress)
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
                self.tracking_.curve(state.curve, self.backend.stats.as_dict())
                bar.update(self.config.popsize)
                bar.set_postfix(loss=f"{state.best_train_loss:.3f}", dev=f"{state.best_dev[0]:.3f}",
                                **_missing_postfix(self.backend))
        finally:
            bar.close()
        result = self._finish(state)
        self.tracking_.result(result.metrics, result.curve, result.run_dir)
        return result

    def _generation(self, state: _State) -> None:
        cfg = self.config
        Z = self.optimizer_.ask()
        prompts = self._prompts(Z)
        scores = self._score_unique(prompts)
        biases = self._biases(scores)
        losses = self.objective_.losses(scores, biases) + self._fluency_term(prompts)
        self.optimizer_.tell(Z, losses)
        state.generation += 1
        state.calls += len(prompts)
        best = int(np.argmin(losses))
        state.best_train_loss = min(state.best_train_loss, float(losses[best]))
        state.stop_reasons = self.optimizer_.stop_reasons()
        state.converged = bool(state.stop_reasons)
        row: dict[str, Any] = {"generation": state.generation, "calls": state.calls, "train_loss": float(losses[best]),
                               "train_loss_mean": float(losses.mean()), "best_train_loss": state.best_train_loss,
                               "sigma": float(getattr(self.optimizer_, "sigma", cfg.sigma0))}
        if cfg.mode is Mode.HARD:
            row["distinct_prompts"] = len({p.token_ids for p in prompts})  # type: ignore[union-attr]
        if state.calls >= state.next_eval or state.converged or state.calls + cfg.popsize > cfg.budget_calls:
            self._eval_point(state, Z[best], scores[best], bias_row(biases, best), row)
            state.next_eval = state.calls + cfg.eval_every
        state.curve.append(row)

    def _score_unique(self, prompts: list[Prompt]) -> np.ndarray:
        """Score a population; identical hard candidates are scored once (common late in a hard search).
        The budget still counts every candidate, as BBT counts calls, and so do the backend's counters (the
        skipped repeats are booked as calls answered without a model pass), so runs stay comparable."""
        unique, where = distinct_prompts(prompts)
        scores = self.objective_.train_scores(unique, self.task_.train)[where]
        self.backend.stats.add(len(prompts) - len(unique), len(self.task_.train))
        return scores

    def _fluency_term(self, prompts: list[Prompt]) -> np.ndarray | float:
        """``--fluency w``: w * each prompt's mean NLL per token under the model (PEZ's fluency penalty), so the
        search trades task loss for text the model, and a reader, finds likely."""
        if self.scorer_ is None or not self.config.fluency:
            return 0.0
        return self.config.fluency * prompt_nll(self.scorer_, prompts)

    def _biases(self, scores: np.ndarray) -> np.ndarray | None:
        """Per-candidate label biases fitted on its own training scores (None without --calibrate, or for a
        generation task)."""
        return self.objective_.biases(scores)

    def _first_call_again(self) -> None:
        """A resumed run opens as its first run did, with the manual prompt on train (from the run's saved replies
        on a server: nothing is paid again). A server's probe checks its first score call's sample: without this
        it would check a tuned candidate instead, and could refuse, on labels missing from a far candidate's
        top-k, a run that it let start (seen on vLLM: 0% missing for the manual prompt, 19% for a candidate)."""
        self.objective_.train_scores([self.manual_], self.task_.train)

    def _manual_point(self, state: _State) -> None:
        """Score the manual prompt (the template alone) on train and dev: the baseline the result must beat."""
        if self.backend.capabilities.hard:
            state.manual, calls = manual_point(self.objective_, self.manual_, self.task_, self.config.select,
                                               self.config.seed)
            state.eval_calls += calls

    def _start_point(self, state: _State) -> None:
        """Curve row for p0 (z = 0), where every search starts: its train loss and dev accuracy."""
        z = np.zeros(self.subspace_.dim)
        p0 = [self.prompt(z)]
        scores = self.objective_.train_scores(p0, self.task_.train)
        state.eval_calls += 1
        biases = self._biases(scores)
        loss = float((self.objective_.losses(scores, biases) + self._fluency_term(p0))[0])
        row: dict[str, Any] = {"generation": 0, "calls": 0, "train_loss": loss, "best_train_loss": loss}
        state.best_train_loss = loss
        self._eval_point(state, z, scores[0], bias_row(biases, 0), row)
        state.curve.append(row)

    def _eval_point(self, state: _State, z: np.ndarray, train_scores: np.ndarray, bias: np.ndarray | None,
                    row: dict[str, Any]) -> None:
        """Score a generation's best on dev (with the bias fitted on its training scores) and keep it if
        it wins by the selection rule."""
        dev = self.scoring_.evaluate(self.prompt(z), self.task_.dev, bias)
        state.eval_calls += math.ceil(len(self.task_.dev) / EVAL_BATCH)
        train_ce = self.objective_.train_ce(train_scores, bias)
        key = selection_key(self.config.select, train_ce, len(self.task_.train), dev)
        if key < state.best_key:
            state.best_key, state.best_z, state.best_bias = key, np.array(z), bias
            state.best_dev, state.best_dev_eval = (dev.accuracy, dev.loss), dev
        row.update(dev_acc=dev.accuracy, dev_loss=dev.loss, best_dev_acc=state.best_dev[0])
        self.eval_points_.append({"z": np.array(z), "bias": bias, "calls": state.calls, "dev_acc": dev.accuracy,
                                  "dev_loss": dev.loss, "dev_n": dev.n, "train_ce": train_ce, "dev_eval": dev})

    # ------------------------------------------------------------------ persistence

    def _begin(self) -> _State:
        """A new run: the config, then a checkpoint before the first request (`RunStore.begin`)."""
        state = _State()
        if self.store_ is not None:
            self.store_.begin(self.overwrite)
            self._checkpoint(state)
        return state

    def _abandon(self, err: BBTuneError, resume: bool) -> None:
        if self.store_ is not None:
            self.store_.abandon(err, resume)

    def _keep_books(self, resume: bool) -> None:
        """Backends that pay per request (remote) book each one in the folder's ledger before sending it."""
        if self.folder:
            self.backend.keep_books(self.folder.path / LEDGER, self.folder.path / REPLIES, resume)

    def _checkpoint(self, state: _State) -> None:
        if self.folder:
            self.folder.save_checkpoint({"fingerprint": self.subspace_.fingerprint(), "run_config": self.run_config_,
                                         "optimizer": self.optimizer_, "state": state,
                                         "backend_stats": self.backend.stats.as_dict()})

    def _resume(self) -> _State:
        if self.store_ is None:
            raise CheckpointError("resume needs a run_dir")
        ckpt = self.store_.resume(self.subspace_.fingerprint())
        if ckpt is None:
            return _State()  # its first checkpoint was never written: nothing was computed yet
        self.optimizer_ = ckpt["optimizer"]
        self.backend.stats.restore(ckpt["backend_stats"])
        state: _State = ckpt["state"]
        return state

    # ------------------------------------------------------------------ final numbers

    def _finish(self, state: _State) -> TuneResult:
        task, cfg = self.task_, self.config
        z = state.best_z if state.best_z is not None else self.optimizer_.best[0]
        decision = self.scoring_.decision(state.best_dev_eval, state.best_key, state.manual)
        keep_manual = cfg.keep_manual and decision is not None and not decision.replace
        tuned = self.prompt(z)
        best, bias = (self.manual_, manual_bias(state.manual)) if keep_manual else (tuned, state.best_bias)
        soft = self.subspace_.soft_prompt(z) if cfg.mode is Mode.SOFT and not keep_manual else None
        discretized = None if isinstance(tuned, HardPrompt) else self.discretizer_.project(tuned.embeds)
        hard = best if isinstance(best, HardPrompt) else discretized
        assert hard is not None
        round_trip = self.discretizer_.round_trip(hard)
        metrics = self._metrics(state, keep_manual, hard, discretized, round_trip.ok, bias)
        metrics.decision = decision
        run_readout = None
        if not state.stopped_by:
            try:
                run_readout = self.scoring_.scores(metrics, best, bias, discretized, state.manual)
            except BudgetExceeded as err:
                state.stopped_by = str(err)
        metrics.stopped_by = state.stopped_by or None
        if keep_manual and task.test and not state.stopped_by:
            # the tuned prompt on test even where it was not returned: tables report it, and a run then costs the
            # same whichever prompt it returns (a dry run's estimate is a bound however the decision goes)
            metrics.tuned_test_acc = self.scoring_.evaluate(tuned, task.test, state.best_bias).accuracy
        if task.format.is_generation and not state.stopped_by:
            metrics.answer_scores = answer_scores(metrics, tuned.text if isinstance(tuned, HardPrompt) else
                                                  discretized.text if discretized is not None else None)
        metrics.backend_stats = copy.deepcopy(self.backend.stats)  # as the run left them
        metrics.probe = self.backend.probe_report()  # what the server supports, as the run used it
        metrics.ending = ending_of(metrics.stopped_by, metrics.converged, state.curve)
        metrics.config_fingerprint = fingerprint(self.run_config_)
        result = TuneResult(best, hard, soft, z, metrics, state.curve, self.folder.path if self.folder else None,
                            discretized, run_readout)
        if self.folder:
            self._write_results(result, round_trip.reencoded)
        return result

    def _metrics(self, state: _State, keep_manual: bool, hard: HardPrompt, discretized: HardPrompt | None,
                 round_trip_ok: bool, bias: np.ndarray | None) -> RunMetrics:
        """The numbers the search itself found (the final scores come after)."""
        cfg, fmt, manual = self.config, self.task_.format, state.manual
        selected_dev = manual["selected_dev"] if keep_manual else state.best_dev
        metrics = RunMetrics(
            mode=cfg.mode.value, seed=cfg.seed, calls=state.calls, eval_calls=state.eval_calls,
            generations=state.generation, converged=state.converged, stop_reasons=state.stop_reasons,
            wall_s=round(state.elapsed_s, 2), initial_train_loss=state.curve[0]["train_loss"],
            best_train_loss=state.best_train_loss, selected="manual" if keep_manual else "tuned",
            select_rule=cfg.select.value, p0=self.p0_.value, prompt_tokens_used=self.subspace_.n_tokens,
            dev_acc=selected_dev[0], dev_loss=selected_dev[1], tuned_dev_acc=state.best_dev[0], hard_prompt=hard.text,
            hard_round_trip_ok=round_trip_ok, discretized_prompt=discretized.text if discretized else None,
            hard_scale=self.hard_scale_, hard_change_at_sigma0=self.hard_change_, backend=self.backend.name,
            label_bias=dict(zip(fmt.labels, map(float, bias))) if bias is not None else None)
        if fmt.is_generation:
            metrics.task_kind, metrics.answer_scoring = fmt.kind.value, cfg.answer_scoring.value
            metrics.answer_metric, metrics.skipped = cfg.answer_metric, skipped_for_generation(cfg.calibrate, cfg.loss)
        if manual:
            metrics.manual_readout = manual.get("readout", "bias")  # how it competed (older checkpoints: bias)
            metrics.manual_dev_acc, metrics.manual_dev_loss = manual["dev_acc"], manual["dev_loss"]
            metrics.manual_train_loss = manual.get("train_loss")  # older checkpoints lack it
            if manual["bias"] is not None:
                metrics.manual_calibrated_dev_acc = manual["selected_dev"][0]
        return metrics

    def _write_results(self, result: TuneResult, reencoded: tuple[int, ...]) -> None:
        assert self.folder is not None
        tensors = {"z": torch.as_tensor(result.best_z)}
        if result.soft_prompt is not None:
            tensors["soft_prompt"] = result.soft_prompt.embeds
        self.folder.save_tensors(BEST_PROMPT, tensors)
        hp = result.hard_prompt
        self.folder.write_json(HARD_PROMPT, {"text": hp.text, "token_ids": hp.token_ids, "tokens": hp.tokens,
                                                    "round_trip_ok": reencoded == hp.token_ids, "reencoded_ids": reencoded,
                                                    "config_fingerprint": result.metrics.config_fingerprint})
        self.folder.write_curve(result.curve)
        if result.readout is not None:
            self.folder.write_json(READOUT, result.readout.as_json())
        self.folder.write_json(METRICS, result.metrics.to_json())  # last: a folder with metrics.json is finished


def run_tuner(task: Task, backend: Backend, config: TuneConfig = TuneConfig(), run_dir: str | Path | None = None, *,
              progress: bool = True, resume: bool = False, extra_config: dict[str, Any] | None = None,
              overwrite: bool = False, settings: dict[str, Any] | None = None,
              tracker: Tracker | None = None) -> TuneResult:
    """Run BBT and return the raw `TuneResult` (the library's own call; users call `bbtune.tune`); see `Tuner`."""
    return Tuner(task, backend, config, run_dir, progress=progress, extra_config=extra_config, overwrite=overwrite,
                 settings=settings, tracker=tracker).run(resume=resume)


def _missing_postfix(backend: Backend) -> dict[str, str]:
    """The running share of missing label scores, for backends that read top-k lists (remote), and of answers
    naming no label (text mode)."""
    stats = backend.stats
    out = {"missing": f"{stats.missing_rate:.1%}"} if stats.labels_scored else {}
    return {**out, "unparsed": f"{stats.unparsed_rate:.1%}"} if stats.answers else out
