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
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bbtune.backends.base import Backend
from bbtune.constants import CMA_MAX_DIM, CPU_BUDGET_CALLS, EVAL_BATCH
from bbtune.search.discretize import Discretizer, Metric
from bbtune.runs.endings import ending_of
from bbtune.backends.retry import should_retry
from bbtune.errors import BBTuneError, BudgetExceeded, CheckpointError, ConfigError
from bbtune.search.fluency import prompt_nll, text_scorer, whole_words
from bbtune.search.evaluate import Evaluation
from bbtune.search.losses import Loss
from bbtune.search.objective import (AnswerScoring, GenerationObjective, LabelObjective, Objective,
                                    skipped_for_generation)
from bbtune.search.optimizers import OptimizerConfig, OptimizerName, make_optimizer
from bbtune.search.readouts import Answers, ReadoutKind, choose_readout
from bbtune.search.readouts.fitted import AUTO, OFF, RunReadout, fit_run_readout
from bbtune.search.readout_objective import SearchReadout, readout_objective
from bbtune.core.options import documented, string_tuple
from bbtune.core.progress import progress_bar
from bbtune.core.prompts import MANUAL_PROMPT, HardPrompt, Prompt, SoftPrompt, distinct_prompts
from bbtune.runs.folder import (BEST_PROMPT, CHECKPOINT, CONFIG, HARD_PROMPT, LEDGER, METRICS, READOUT, REPLIES,
                                RunFolder,
                                changed_fields, fingerprint, to_jsonable)
from bbtune.runs.tracking import Track, Tracker, live_tracking, require, untracked
from bbtune.search.selection import Decision, Guard, Selection, decide, selection_key
from bbtune.search.subspace import ALPHA_FROM_CUE, P0Init, Subspace, SubspaceConfig
from bbtune.tasks import Placement, Task
from bbtune.tasks.answer_metrics import answer_metric
from bbtune.core.vocab import FILTERS


READOUT_SETTINGS = (AUTO, OFF, *(k.value for k in ReadoutKind))


class Mode(str, Enum):
    SOFT = "soft"
    HARD = "hard"


DATA_FIELDS = ("task.data_sha256", "task.n_train", "task.n_dev", "task.n_test")  # what an edited data file changes


@documented
@dataclass(frozen=True)
class TuneConfig(SubspaceConfig, OptimizerConfig):
    """Everything about one tuning run; subspace and optimizer fields are inherited (one flat CLI)."""

    mode: Mode = field(default=Mode.SOFT, metadata={"help": "soft (continuous prompt) or hard (projection in the loop)"})
    loss: Loss = field(default=Loss.CE, metadata={"help": "ce, hinge or neg_acc over the label words"})
    budget_calls: int = field(default=CPU_BUDGET_CALLS, metadata={"help": "model calls (candidates scored on train)"})
    eval_every: int = field(default=50, metadata={"help": "evaluate the generation's best on dev every N calls"})
    seed: int = field(default=42, metadata={"help": "seed of A, p0 and the optimizer"})
    metric: Metric = field(default=Metric.COSINE, metadata={"help": "nearest-token metric: cosine or dot"})
    vocab_filter: str = field(default="words", metadata={
        "help": "tokens a hard prompt may use: words, common (frequent whole words: readable), printable, all"})
    block_list: tuple[str, ...] = field(default=(), metadata={"help": "words a hard prompt must never use"})
    hard_change: float = field(default=0.4, metadata={"help": "hard mode: share of tokens a step of sigma0 changes"})
    fluency: float = field(default=0.0, metadata={
        "help": "hard mode: weight of the prompt's log-perplexity under the model in the loss (0 = off; "
                "0.05 with --vocab-filter common gives readable prompts)"})
    calibrate: bool = field(default=True, metadata={
        "help": "fit one bias per label word for every candidate on train (label scores only: works through any API)"})
    select: Selection = field(default=Selection.DEV_ACC, metadata={
        "help": "how the result is chosen among dev-evaluated points: dev_acc, dev_loss or train_dev_loss"})
    keep_manual: bool = field(default=True, metadata={
        "help": "return the manual prompt (template alone) when no tuned prompt beats it on dev by --select"})
    guard: Guard = field(default=Guard.AGREE, metadata={
        "help": "when a tuned prompt may replace the calibrated manual prompt: agree (it wins by --select, its "
                "dev accuracy is no lower and its dev cross-entropy not significantly higher at --guard-alpha), "
                "paired (a McNemar test on the dev examples at --guard-alpha: stricter) or none (it wins by --select)"})
    guard_alpha: float = field(default=0.1, metadata={"help": "level of --guard's paired tests"})
    answer_scoring: AnswerScoring = field(default=AnswerScoring.REFERENCE, metadata={
        "help": "generation tasks: score a prompt by its reference answers' log-likelihood (reference) or by "
                "--answer-metric on its greedy answers (metric)"})
    answer_metric: str = field(default="exact", metadata={
        "help": "generation tasks: metric on generated answers, reported on dev and test (and the loss with "
                "--answer-scoring metric): exact, f1, or package.module:function (prediction, reference) -> [0, 1]"})
    answer_max_tokens: int = field(default=8, metadata={"help": "generation tasks: most tokens of a generated answer"})
    readout: str = field(default=AUTO, metadata={
        "help": "how the returned prompt's answers become labels: auto (chosen out of fold on train + dev among "
                "raw, bias, affine, verbalizer, logistic, knn; ties go to the simpler), one of those, or off (the "
                "label words calibrated as in the search)"})
    search_readout: SearchReadout = field(default=SearchReadout.LABELS, metadata={
        "help": "what a candidate's train loss reads during the search: labels (its label words, calibrated with "
                "--calibrate; any API), fixed (a logistic readout of its top-k, fitted once on the manual prompt) or "
                "fold (its own logistic readout of its top-k, cross-entropy out of fold on train); the top-k ones need "
                "a backend that returns top-k log-probs and read --readout-topk of them"})
    readout_topk: int = field(default=20, metadata={
        "help": "top-k log-probs a readout may read at the answer position (OpenAI chat returns 20, llama.cpp "
                "~1000); capped at what the backend returns"})
    track: Track = field(default=Track.NONE, metadata={
        "help": "also report the run to mlflow or tensorboard as it goes (none: the run folder only)"})
    track_uri: str = field(default="", metadata={
        "help": "--track's store: an MLflow tracking URI (default: sqlite mlruns/mlflow.db beside the run folder, or "
                "$MLFLOW_TRACKING_URI) or a TensorBoard log folder (default: tensorboard/ beside it)"})

    def __post_init__(self) -> None:
        SubspaceConfig.__post_init__(self)
        OptimizerConfig.__post_init__(self)
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "loss", Loss(self.loss))
        object.__setattr__(self, "metric", Metric(self.metric))
        object.__setattr__(self, "select", Selection(self.select))
        object.__setattr__(self, "guard", Guard(self.guard))
        object.__setattr__(self, "answer_scoring", AnswerScoring(self.answer_scoring))
        object.__setattr__(self, "search_readout", SearchReadout(self.search_readout))
        object.__setattr__(self, "track", require(self.track))  # a missing extra fails here, with its install command
        answer_metric(self.answer_metric)  # a name that cannot be imported fails here, before any model call
        if self.answer_max_tokens < 1:
            raise ConfigError(f"answer_max_tokens must be >= 1, got {self.answer_max_tokens}")
        if self.readout not in READOUT_SETTINGS:
            raise ConfigError(f"readout must be one of {', '.join(READOUT_SETTINGS)}, got {self.readout!r}")
        if self.readout_topk < 1:
            raise ConfigError(f"readout_topk must be >= 1 token, got {self.readout_topk}")
        if not 0 < self.guard_alpha < 1:
            raise ConfigError(f"guard_alpha must be in (0, 1), got {self.guard_alpha}")
        object.__setattr__(self, "block_list", string_tuple(self.block_list))
        if self.optimizer is OptimizerName.CMA and self.intrinsic_dim > CMA_MAX_DIM:
            raise ConfigError(f"intrinsic_dim={self.intrinsic_dim} is too large for CMA-ES, which keeps d x d matrices "
                              f"({8 * self.intrinsic_dim ** 2 / 2**30:,.1f} GB each): at most {CMA_MAX_DIM} (BBT uses "
                              "500), or optimizer random")
        if self.budget_calls < self.popsize:
            raise ConfigError(f"budget_calls={self.budget_calls} is below one generation (popsize={self.popsize})")
        if self.eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1 call, got {self.eval_every}")
        if self.seed < 0:  # numpy's generators take non-negative seeds only
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if not 0 < self.hard_change < 1:
            raise ConfigError(f"hard_change must be in (0, 1), got {self.hard_change}")
        if self.vocab_filter not in FILTERS:
            raise ConfigError(f"vocab_filter must be one of {', '.join(FILTERS)}, got {self.vocab_filter!r}")
        if not self.fluency >= 0 or not math.isfinite(self.fluency) or (self.fluency and self.mode is not Mode.HARD):
            raise ConfigError(f"fluency={self.fluency}: give --fluency a weight >= 0 (0 = off), with --mode hard")


@dataclass
class TuneResult:
    best_prompt: Prompt  # the returned prompt: the tuned one (soft or hard, by mode), or the manual one where kept
    hard_prompt: HardPrompt  # the text prompt (discretized soft prompt, or the searched one)
    soft_prompt: SoftPrompt | None
    best_z: np.ndarray
    metrics: dict[str, Any]
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
        self.p0_ = self._resolve_p0(vocab)
        space, p0_ids = (self._prompt_in_place_of_cue(vocab) if self.p0_ is P0Init.CUE
                         else (replace(cfg, p0=self.p0_), ()))
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
        self.eval_points_: list[dict[str, Any]] = []  # every dev-evaluated point (z, bias, numbers): for studies
        # fixed once the task is (a cue start changes its template); it hashes every example, so not per checkpoint
        self.run_config_ = to_jsonable({"tune": untracked(asdict(cfg)), "task": _describe_task(self.task_),
                                        "backend": self.backend.name, **self.extra_config})

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

    def _resolve_p0(self, vocab: Any) -> P0Init:
        """``--p0 auto``: start from the cue where the prompt can take its place, else from random words (BBT)."""
        if self.config.p0 is not P0Init.AUTO:
            return self.config.p0
        ids = self._cue_ids(vocab)[2]
        wanted = self.config.prompt_tokens  # an explicit length other than the cue's asks for BBT's random words
        fits = ids and wanted in (0, len(ids))
        return P0Init.CUE if fits and self.task.format.placement is Placement.SUFFIX else P0Init.VOCAB

    def _cue_ids(self, vocab: Any) -> tuple[Any, str, tuple[int, ...]]:
        """The input template without its cue, the cue, and the cue's token ids."""
        template, cue = self.task.format.template.without_cue()
        return template, cue, tuple(vocab.tokenizer.encode(cue, add_special_tokens=False))

    def _prompt_in_place_of_cue(self, vocab: Any) -> tuple[SubspaceConfig, tuple[int, ...]]:
        """``--p0 cue``: the search runs on the template without its cue, p0 is the cue's own words, so z = 0 is
        exactly the manual prompt and every step is measured against it (the prompt has the cue's length).
        A longer ``--prompt-tokens`` puts copies of the cue's first token (a newline in the presets) before it:
        more tokens to tune, from a start that reads as the manual prompt after blank lines. Returns the
        subspace's config and p0's token ids."""
        if self.task_.format.placement is not Placement.SUFFIX:
            raise ConfigError("--p0 cue replaces the words before the label, so it needs --placement suffix")
        template, cue, ids = self._cue_ids(vocab)
        if not ids:
            raise ConfigError(f"template {self.task_.format.template.pattern!r} has no cue words between the input and "
                              "{label} for --p0 cue to start from; add some (e.g. '\nSentiment:') or use --p0 vocab")
        length = self.config.prompt_tokens or len(ids)
        if length < len(ids):
            raise ConfigError(f"--p0 cue makes the prompt the cue {cue!r}, {len(ids)} tokens; --prompt-tokens "
                              f"{length} cannot hold it: drop --prompt-tokens, set it to {len(ids)} or more (the cue "
                              "after copies of its first token), or start from random words with --p0 vocab")
        self.task_ = self.task_.with_template(template)
        self.manual_ = HardPrompt(ids, cue)
        p0_ids = (ids[0],) * (length - len(ids)) + ids
        return replace(self.config, p0=P0Init.TEXT, p0_text=cue, prompt_tokens=length,
                       alpha=self.config.alpha or ALPHA_FROM_CUE), p0_ids

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
        self.tracking_.curve(state.curve, _stats(self.backend))  # a resumed run: the steps its tracker lacks
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
                self.tracking_.curve(state.curve, _stats(self.backend))
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
            self._eval_point(state, Z[best], scores[best], _row_bias(biases, best), row)
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
        if not self.backend.capabilities.hard:
            return
        objective, dev = self.objective_, self.task_.dev
        scores = objective.train_scores([self.manual_], self.task_.train)
        state.eval_calls += 1
        bias = _row_bias(self._biases(scores), 0)
        dev_scores = objective.eval_scores(self.manual_, dev)
        state.eval_calls += math.ceil(len(dev) / EVAL_BATCH)
        raw, calibrated = objective.evaluation(dev_scores, dev, None), objective.evaluation(dev_scores, dev, bias)
        readout = self._manual_readout(scores[0], bias)
        used, used_bias = (calibrated, bias) if readout == ReadoutKind.BIAS.value else (raw, None)
        calibrated_ce = objective.train_ce(scores[0], bias)  # reported: calibrated, as p0's start is
        train_ce = calibrated_ce if used_bias is not None or bias is None else objective.train_ce(scores[0], None)
        state.manual = {"dev_acc": raw.accuracy, "dev_loss": raw.loss, "bias": bias, "train_loss": calibrated_ce,
                        "dev_eval": used, "readout": readout,
                        "selected_dev": (used.accuracy, used.loss),  # as a candidate: raw or calibrated, out of fold
                        "key": selection_key(self.config.select, train_ce, len(self.task_.train), used)}

    def _manual_readout(self, train_scores: np.ndarray, bias: np.ndarray | None) -> str:
        """The manual prompt as a candidate: calibrated like the tuned ones, or raw where calibration loses out of
        fold on train (it can overfit 16 examples a class, and then the raw template is the floor)."""
        if bias is None:
            return ReadoutKind.RAW.value
        labels = self.task_.format.label_ids(self.task_.train)
        return choose_readout(Answers(train_scores), labels, (ReadoutKind.RAW, ReadoutKind.BIAS),
                              seed=self.config.seed)[1].kind

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
        self._eval_point(state, z, scores[0], _row_bias(biases, 0), row)
        state.curve.append(row)

    def _eval_point(self, state: _State, z: np.ndarray, train_scores: np.ndarray, bias: np.ndarray | None,
                    row: dict[str, Any]) -> None:
        """Score a generation's best on dev (with the bias fitted on its training scores) and keep it if
        it wins by the selection rule."""
        dev = self._evaluate(self.prompt(z), self.task_.dev, bias)
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
        """A new run: claim the folder (one holding another run only with overwrite), then write the config and a
        checkpoint before the first request, so that even a run killed at once resumes, and keeps its ledger."""
        state = _State()
        if self.folder:
            self.folder.claim(self.overwrite)
            run_config = self.run_config_
            self.folder.write_json(CONFIG, {**run_config, "settings": self.settings,
                                            "fingerprint": fingerprint(run_config)})
            self._checkpoint(state)
        return state

    def _abandon(self, err: BBTuneError, resume: bool) -> None:
        """A new run refused at start-up (a verbalizer, an input too long, a 401) leaves no folder behind: the
        corrected command starts afresh instead of meeting "an unfinished run; --resume", which could not change
        the bad flag. A limit or a transient failure keeps it: raise the limit, or try later, and --resume."""
        if self.folder and not resume and not isinstance(err, BudgetExceeded) and not should_retry(err):
            self.folder.clear()

    def _save_settings(self) -> None:
        """A resumed run's changed settings (raised limits, ...) are saved, so the next resume keeps them."""
        saved = self.folder.read_json(CONFIG) if self.folder and (self.folder.path / CONFIG).exists() else None
        if saved is not None and self.settings and saved.get("settings") != to_jsonable(self.settings):
            self.folder.write_json(CONFIG, {**saved, "settings": self.settings})  # type: ignore[union-attr]

    def _keep_books(self, resume: bool) -> None:
        """Backends that pay per request (remote) book each one in the folder's ledger before sending it."""
        if self.folder:
            self.backend.keep_books(self.folder.path / LEDGER, self.folder.path / REPLIES, resume)

    def _checkpoint(self, state: _State) -> None:
        if not self.folder:
            return
        self.folder.save_checkpoint({"fingerprint": self.subspace_.fingerprint(), "run_config": self.run_config_,
                                     "optimizer": self.optimizer_, "state": state, "backend_stats": _stats(self.backend)})

    def _resume(self) -> _State:
        if not self.folder:
            raise CheckpointError("resume needs a run_dir")
        self.folder.refuse_finished()  # before any request: its test scores are paid for already
        if not (self.folder.path / CHECKPOINT).exists() and (self.folder.path / CONFIG).exists():
            return self._restart()  # its first checkpoint was never written: nothing was computed yet
        ckpt = self.folder.load_checkpoint()
        self._check_same_config(ckpt.get("run_config", {}))
        if ckpt["fingerprint"] != self.subspace_.fingerprint():
            raise CheckpointError("the rebuilt subspace differs from the checkpoint's (another model or vocabulary?)")
        self._check_ledger(ckpt.get("backend_stats") or {})
        self._save_settings()
        self.optimizer_ = ckpt["optimizer"]
        self.backend.stats.restore(ckpt["backend_stats"])
        return ckpt["state"]

    def _restart(self) -> _State:
        """A folder whose first checkpoint failed (disk full, ...) holds only its config: resuming starts it."""
        assert self.folder is not None
        saved = self.folder.read_json(CONFIG)
        self._check_same_config({k: v for k, v in saved.items() if k not in ("settings", "fingerprint")})
        self._save_settings()
        return _State()

    def _check_same_config(self, saved: dict[str, Any]) -> None:
        """A resumed run must compute what the first one would have: its config, task and data are unchanged."""
        assert self.folder is not None
        changed = changed_fields(saved, self.run_config_)
        if not changed:
            return
        data_only = all(c.startswith(DATA_FIELDS) for c in changed)
        why = ("the data files changed since the run started (the examples differ from the ones it was tuned on); "
               "restore them to resume" if data_only else
               "resume with the saved config (config.json must not be edited; restore the data files if they "
               "changed)")
        raise CheckpointError(f"{self.folder.path} was made with another config: {'; '.join(changed)}; {why}, or "
                              "start a new run (another --run-dir, or --overwrite)")

    def _check_ledger(self, stats: dict[str, Any]) -> None:
        """Limits hold against the ledger: without it, a run that sent requests would start counting from zero."""
        assert self.folder is not None
        sent = int(stats.get("requests", 0) or 0)
        if sent and not (self.folder.path / LEDGER).exists():  # only paid backends count requests
            raise CheckpointError(f"{self.folder.path / LEDGER} is missing but the checkpoint says {sent} requests were "
                                  "sent: without the ledger the --remote-max-* limits would count from zero again. "
                                  "Restore ledger.jsonl, or start a new run (another --run-dir, or --overwrite)")

    # ------------------------------------------------------------------ final numbers

    def _finish(self, state: _State) -> TuneResult:
        task = self.task_
        z = state.best_z if state.best_z is not None else self.optimizer_.best[0]
        decision = self._decision(state)
        keep_manual = self.config.keep_manual and decision is not None and not decision.replace
        tuned = self.prompt(z)
        best, bias = (self.manual_, _manual_bias(state.manual)) if keep_manual else (tuned, state.best_bias)
        soft = self.subspace_.soft_prompt(z) if self.config.mode is Mode.SOFT and not keep_manual else None
        discretized = None if isinstance(tuned, HardPrompt) else self.discretizer_.project(tuned.embeds)
        hard = best if isinstance(best, HardPrompt) else discretized
        assert hard is not None
        round_trip = self.discretizer_.round_trip(hard)
        metrics: dict[str, Any] = {
            "mode": self.config.mode.value, "seed": self.config.seed, "calls": state.calls, "eval_calls": state.eval_calls,
            "generations": state.generation, "converged": state.converged, "stop_reasons": state.stop_reasons,
            "wall_s": round(state.elapsed_s, 2), "initial_train_loss": state.curve[0]["train_loss"],
            "best_train_loss": state.best_train_loss, "selected": "manual" if keep_manual else "tuned",
            "select_rule": self.config.select.value, "p0": self.p0_.value, "prompt_tokens_used": self.subspace_.n_tokens,
            "dev_acc": state.manual["selected_dev"][0] if keep_manual else state.best_dev[0],
            "dev_loss": state.manual["selected_dev"][1] if keep_manual else state.best_dev[1],
            "tuned_dev_acc": state.best_dev[0], "hard_prompt": hard.text, "hard_round_trip_ok": round_trip.ok,
            "discretized_prompt": discretized.text if discretized else None,
            "hard_scale": self.hard_scale_, "hard_change_at_sigma0": self.hard_change_, "backend": self.backend.name,
        }
        if bias is not None:
            metrics["label_bias"] = dict(zip(task.format.labels, map(float, bias)))
        if task.format.is_generation:
            metrics.update(task_kind=task.format.kind.value, answer_scoring=self.config.answer_scoring.value,
                           answer_metric=self.config.answer_metric,
                           skipped=skipped_for_generation(self.config.calibrate, self.config.loss))
        if state.manual:
            metrics["manual_readout"] = state.manual.get("readout", ReadoutKind.BIAS.value)  # how it competed
            metrics.update(manual_dev_acc=state.manual["dev_acc"], manual_dev_loss=state.manual["dev_loss"],
                           manual_train_loss=state.manual.get("train_loss"))  # older checkpoints lack it
            if state.manual["bias"] is not None:
                metrics["manual_calibrated_dev_acc"] = state.manual["selected_dev"][0]
        run_readout = None
        if not state.stopped_by:
            try:
                run_readout = self._fit_readout(best, state, metrics)
                self._final_scores(metrics, best, bias, discretized, state, run_readout)
            except BudgetExceeded as err:
                state.stopped_by = str(err)
        if state.stopped_by:
            metrics["stopped_by"] = state.stopped_by
        if keep_manual and task.test and not state.stopped_by:
            # the tuned prompt on test even where it was not returned: tables report it, and a run then costs the
            # same whichever prompt it returns (a dry run's estimate is a bound however the decision goes)
            metrics["tuned_test_acc"] = self._evaluate(tuned, task.test, state.best_bias).accuracy
        if task.format.is_generation and not state.stopped_by:
            metrics["answer_scores"] = _answer_scores(metrics)
            metrics["answer_scores"]["tuned_prompt"] = tuned.text if isinstance(tuned, HardPrompt) else discretized.text  # type: ignore[union-attr]
        metrics["backend_stats"] = _stats(self.backend)
        metrics["missing_rate"] = metrics["backend_stats"].get("missing_rate", 0.0)  # NaN label scores (losses.py)
        probe = self.backend.probe_report()  # what the server supports, as the run used it
        if probe is not None:
            metrics["probe"] = asdict(probe)
        if decision is not None:
            metrics["decision"] = asdict(decision)
        metrics["ending"] = ending_of(metrics, state.curve).value
        metrics["config_fingerprint"] = fingerprint(self.run_config_)
        result = TuneResult(best, hard, soft, z, metrics, state.curve, self.folder.path if self.folder else None,
                            discretized, run_readout)
        if self.folder:
            self._write_results(result, round_trip.reencoded)
        return result

    def _decision(self, state: _State) -> Decision | None:
        """Tuned or manual prompt, and why (None where no manual prompt was scored: a soft-only backend)."""
        if not state.manual or state.best_dev_eval is None:
            return None
        return decide(state.best_dev_eval, state.manual["dev_eval"], state.best_key < state.manual["key"],
                      self.config.guard, self.config.guard_alpha, self.config.seed)

    def _fit_readout(self, best: Prompt, state: _State, metrics: dict[str, Any]) -> RunReadout | None:
        """The returned prompt's readout, chosen out of fold on train + dev (`bbtune.search.readouts.fitted`);
        None for ``readout=off`` and for generation tasks (no label words to read)."""
        cfg, task = self.config, self.task_
        if cfg.readout == OFF or task.format.is_generation:
            return None
        pool = task.train + task.dev
        fitted = fit_run_readout(self.backend, best, pool, task.format, cfg.readout, cfg.readout_topk, cfg.seed)
        state.eval_calls += math.ceil(len(pool) / EVAL_BATCH)
        metrics["eval_calls"] = state.eval_calls
        metrics["readout"] = {"kind": fitted.readout.kind.value, "k": fitted.k, "reason": fitted.choice.reason,
                              "out_of_fold": {s.kind: round(s.accuracy, 4) for s in fitted.choice.scores}}
        return fitted

    def _final_scores(self, metrics: dict[str, Any], best: Prompt, bias: np.ndarray | None,
                      discretized: HardPrompt | None, state: _State, readout: RunReadout | None = None) -> None:
        """Test numbers of the result (through its readout where it has one), of the manual prompt beside it (raw,
        and calibrated where the run calibrates: same scores, no extra calls), and of a soft result's nearest
        tokens."""
        task, objective = self.task_, self.objective_
        if task.test:
            test = task.test
            answers = readout.answers(self.backend, best, test, task.format) if readout is not None else None
            kept = bool(state.manual) and best is self.manual_  # the manual prompt was kept: its scores are the result's
            scores = answers.labels[None] if answers is not None else None
            manual = (scores if kept and scores is not None else self.label_objective_.eval_scores(self.manual_, test)
                      if state.manual else None)
            if scores is None:
                scores = manual if kept and manual is not None else objective.eval_scores(best, test)
            metrics.update(objective.evaluation(scores, test, bias).as_dict("test"))
            if answers is not None and readout is not None:
                metrics["test_acc_without_readout"] = metrics["test_acc"]
                metrics.update(objective.evaluation(readout.log_scores(answers)[None], test, None).as_dict("test"))
            if manual is not None:
                labels = self.label_objective_
                metrics["manual_test_acc"] = labels.evaluation(manual, test, None).accuracy
                if state.manual["bias"] is not None:
                    metrics["manual_calibrated_test_acc"] = labels.evaluation(manual, test, state.manual["bias"]).accuracy
                metrics["gain_over_manual"] = metrics["test_acc"] - metrics["manual_test_acc"]
        if discretized is not None:  # the nearest tokens are another prompt: their own bias, fitted on train
            hard_bias = (_row_bias(self._biases(objective.train_scores([discretized], task.train)), 0)
                         if objective.calibrates else None)
            metrics.update(self._evaluate(discretized, task.dev, hard_bias).as_dict("hard_dev"))
            if task.test:
                metrics.update(self._evaluate(discretized, task.test, hard_bias).as_dict("hard_test"))

    def _evaluate(self, prompt: Prompt, examples: tuple, bias: np.ndarray | None) -> Evaluation:
        """One prompt on a split (dev, test), with the calibration bias fitted on train where there is one."""
        return self.objective_.evaluation(self.objective_.eval_scores(prompt, examples), examples, bias)

    def _write_results(self, result: TuneResult, reencoded: tuple[int, ...]) -> None:
        assert self.folder is not None
        tensors = {"z": torch.as_tensor(result.best_z)}
        if result.soft_prompt is not None:
            tensors["soft_prompt"] = result.soft_prompt.embeds
        self.folder.save_tensors(BEST_PROMPT, tensors)
        hp = result.hard_prompt
        self.folder.write_json(HARD_PROMPT, {"text": hp.text, "token_ids": hp.token_ids, "tokens": hp.tokens,
                                                    "round_trip_ok": reencoded == hp.token_ids, "reencoded_ids": reencoded,
                                                    "config_fingerprint": result.metrics["config_fingerprint"]})
        self.folder.write_curve(result.curve)
        if result.readout is not None:
            self.folder.write_json(READOUT, result.readout.as_json())
        self.folder.write_json(METRICS, result.metrics)  # last: a folder with metrics.json is finished


def run_tuner(task: Task, backend: Backend, config: TuneConfig = TuneConfig(), run_dir: str | Path | None = None, *,
              progress: bool = True, resume: bool = False, extra_config: dict[str, Any] | None = None,
              overwrite: bool = False, settings: dict[str, Any] | None = None,
              tracker: Tracker | None = None) -> TuneResult:
    """Run BBT and return the raw `TuneResult` (the library's own call; users call `bbtune.tune`); see `Tuner`."""
    return Tuner(task, backend, config, run_dir, progress=progress, extra_config=extra_config, overwrite=overwrite,
                 settings=settings, tracker=tracker).run(resume=resume)


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


def _manual_bias(manual: dict[str, Any]) -> np.ndarray | None:
    """The manual prompt's bias as its candidate used it: none where the raw template won out of fold (checkpoints
    written before that choice calibrated it)."""
    return manual["bias"] if manual.get("readout", ReadoutKind.BIAS.value) == ReadoutKind.BIAS.value else None


def _row_bias(biases: np.ndarray | None, row: int) -> np.ndarray | None:
    return None if biases is None else biases[row]


def _describe_task(task: Task) -> dict[str, Any]:
    fmt = task.format
    splits = {name: [[ex.text, getattr(ex, "text_b", None), ex.label] for ex in getattr(task, name)]
              for name in ("train", "dev", "test")}
    return {"name": task.name, "template": fmt.template.pattern, "verbalizer": dict(fmt.verbalizer),
            "placement": fmt.placement.value, "n_train": len(task.train), "n_dev": len(task.dev), "n_test": len(task.test),
            "data_sha256": fingerprint(splits),  # the examples themselves: an edited data file is another task
            **({"kind": fmt.kind.value} if fmt.is_generation else {})}  # classification runs keep their old config


def _answer_scores(metrics: dict[str, Any]) -> dict[str, Any]:
    """A generation run's answer metric for the manual and the tuned prompt on dev and test, under its own name
    (the same numbers as ``manual_dev_acc``, ``tuned_dev_acc``, ... which tables and sweeps read)."""
    return {"metric": metrics["answer_metric"],
            "manual": {"dev": metrics.get("manual_dev_acc"), "test": metrics.get("manual_test_acc")},
            "tuned": {"dev": metrics.get("tuned_dev_acc"), "test": metrics.get("tuned_test_acc", metrics.get("test_acc"))},
            "returned": metrics["selected"]}


def _stats(backend: Backend) -> dict[str, Any]:
    return backend.stats.as_dict()


def _missing_postfix(backend: Backend) -> dict[str, str]:
    """The running share of missing label scores, for backends that read top-k lists (remote), and of answers
    naming no label (text mode)."""
    stats = backend.stats
    out = {"missing": f"{stats.missing_rate:.1%}"} if stats.labels_scored else {}
    return {**out, "unparsed": f"{stats.unparsed_rate:.1%}"} if stats.answers else out
