"""`TuneConfig`: everything about one tuning run, with a default and a one-line help per field (the CLI's flags
are generated from it). Subspace and optimizer fields are inherited, so the command line stays one flat list."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from bbtune.constants import CMA_MAX_DIM, CPU_BUDGET_CALLS
from bbtune.core.options import documented, string_tuple
from bbtune.core.vocab import FILTERS
from bbtune.errors import ConfigError
from bbtune.runs.folder import fingerprint
from bbtune.runs.tracking import Track, require
from bbtune.search.discretize import Metric
from bbtune.search.losses import Loss
from bbtune.search.objective import AnswerScoring
from bbtune.search.optimizers import OptimizerConfig, OptimizerName
from bbtune.search.readout_objective import SearchReadout
from bbtune.search.readouts import ReadoutKind
from bbtune.search.readouts.fitted import AUTO, OFF
from bbtune.search.selection import Guard, Selection
from bbtune.search.subspace import SubspaceConfig
from bbtune.tasks import Task
from bbtune.tasks.answer_metrics import answer_metric


READOUT_SETTINGS = (AUTO, OFF, *(k.value for k in ReadoutKind))


class Mode(str, Enum):
    SOFT = "soft"
    HARD = "hard"


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
                "0.05 with vocab_filter=common gives readable prompts)"})
    calibrate: bool = field(default=True, metadata={
        "help": "fit one bias per label word for every candidate on train (label scores only: works through any API)"})
    select: Selection = field(default=Selection.DEV_ACC, metadata={
        "help": "how the result is chosen among dev-evaluated points: dev_acc, dev_loss or train_dev_loss"})
    keep_manual: bool = field(default=True, metadata={
        "help": "return the manual prompt (template alone) when no tuned prompt beats it on dev by TuneConfig.select"})
    guard: Guard = field(default=Guard.AGREE, metadata={
        "help": "when a tuned prompt may replace the calibrated manual prompt: agree (it wins by TuneConfig.select, its "
                "dev accuracy is no lower and its dev cross-entropy not significantly higher at guard_alpha), "
                "paired (a McNemar test on the dev examples at guard_alpha: stricter) or none (it wins by TuneConfig.select)"})
    guard_alpha: float = field(default=0.1, metadata={"help": "level of TuneConfig.guard's paired tests"})
    answer_scoring: AnswerScoring = field(default=AnswerScoring.REFERENCE, metadata={
        "help": "generation tasks: score a prompt by its reference answers' log-likelihood (reference) or by "
                "answer_metric on its greedy answers (metric)"})
    answer_metric: str = field(default="exact", metadata={
        "help": "generation tasks: metric on generated answers, reported on dev and test (and the loss with "
                "answer_scoring=metric): exact, f1, or package.module:function (prediction, reference) -> [0, 1]"})
    answer_max_tokens: int = field(default=8, metadata={"help": "generation tasks: most tokens of a generated answer"})
    readout: str = field(default=AUTO, metadata={
        "help": "how the returned prompt's answers become labels: auto (chosen out of fold on train + dev among "
                "raw, bias, affine, verbalizer, logistic, residual, knn; ties go to the simpler), one of those, or off (the "
                "label words calibrated as in the search)"})
    search_readout: SearchReadout = field(default=SearchReadout.LABELS, metadata={
        "help": "what a candidate's train loss reads during the search: labels (its label words, calibrated with "
                "TuneConfig.calibrate; any API), fixed (a logistic readout of its top-k, fitted once on the manual prompt) or "
                "fold (its own logistic readout of its top-k, cross-entropy out of fold on train); the top-k ones need "
                "a backend that returns top-k log-probs and read readout_topk of them"})
    readout_topk: int = field(default=20, metadata={
        "help": "top-k log-probs a readout may read at the answer position (OpenAI chat returns 20, llama.cpp "
                "~1000); capped at what the backend returns"})
    readout_lift: int = field(default=95, metadata={
        "help": "tokens a top-k readout also reads below the top-k list: those listed most often on train + dev, "
                "lifted into the list with logit_bias (an API: one more request per k - 1 of them and input, where "
                "the readout chosen reads the top-k); 0: the list alone"})
    track: Track = field(default=Track.NONE, metadata={
        "help": "also report the run to mlflow or tensorboard as it goes (none: the run folder only)"})
    track_uri: str = field(default="", metadata={
        "help": "TuneConfig.track's store: an MLflow tracking URI (default: sqlite mlruns/mlflow.db beside the run folder, or "
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
        if self.readout_lift < 0:
            raise ConfigError(f"readout_lift must be >= 0 tokens (0: the top-k list alone), got {self.readout_lift}")
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
            raise ConfigError(f"fluency={self.fluency}: give fluency a weight >= 0 (0 = off), with mode=hard")


def describe_task(task: Task) -> dict[str, Any]:
    """The task as the run config records it: a resumed run must find the same (template, labels, examples)."""
    fmt = task.format
    splits = {name: [[ex.text, getattr(ex, "text_b", None), ex.label] for ex in getattr(task, name)]
              for name in ("train", "dev", "test")}
    return {"name": task.name, "template": fmt.template.pattern, "verbalizer": dict(fmt.verbalizer),
            "placement": fmt.placement.value, "n_train": len(task.train), "n_dev": len(task.dev), "n_test": len(task.test),
            "data_sha256": fingerprint(splits),  # the examples themselves: an edited data file is another task
            **({"kind": fmt.kind.value} if fmt.is_generation else {})}  # classification runs keep their old config
