"""The training loop the gradient baselines share: n prompt vectors, frozen model, AdamW on few-shot train.

Soft prompt tuning and PEZ differ only in how the trainable vectors meet the model (a `PromptView`): prompt
tuning feeds them as they are; PEZ feeds their nearest tokens and passes the gradient back to them. Both
select by dev accuracy (ties broken by dev loss), evaluated every `eval_every` steps, and are counted like
BBT: each step is one model call (one prompt on one batch) plus one backward pass.

The learning rate is in units of the model's embedding std (BBT's subspace uses the same scale), so one
setting means the same step on a model whose embeddings are 0.02 or 0.14 wide.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np
import torch

from bbtune.backends.base import Backend, gradient_backend
from bbtune.constants import CPU_PROMPT_TOKENS
from bbtune.errors import ConfigError
from bbtune.search.evaluate import evaluate, fitted_bias
from bbtune.search.selection import Selection, selection_key
from bbtune.core.prompts import HardPrompt, Prompt
from bbtune.search.subspace import P0Init, Subspace, SubspaceConfig
from bbtune.tasks import Task
from bbtune.core.vocab import Vocabulary
from bbtune.baselines.record import MethodResult, Meter, test_accuracy


@dataclass(frozen=True)
class GradientConfig:
    prompt_tokens: int = field(default=CPU_PROMPT_TOKENS, metadata={"help": "number of trainable prompt tokens n"})
    steps: int = field(default=100, metadata={"help": "optimizer steps (one model call + one backward each)"})
    lr: float = field(default=0.3, metadata={"help": "AdamW learning rate, in units of the embedding std"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=8, metadata={"help": "training examples per step; 0 = the whole train split"})
    eval_every: int = field(default=20, metadata={"help": "evaluate on dev every N steps (and at the end)"})
    seed: int = field(default=42, metadata={"help": "seed of the initial prompt and the batch order"})
    select: Selection = field(default=Selection.DEV_ACC, metadata={
        "help": "which evaluated prompt is returned: the same rule as BBT's TuneConfig.select"})
    calibrate: bool = field(default=False, metadata={
        "help": "score dev and test with one bias per label fitted on train for the prompt at hand, as BBT does"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "select", Selection(self.select))
        for name in ("prompt_tokens", "steps", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 0:
            raise ConfigError(f"batch_size must be >= 0 (0 = whole train split), got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")


class PromptView(Protocol):
    """How trainable vectors (n, H) become what the model sees and what is reported."""

    def point(self, param: torch.Tensor) -> torch.Tensor:
        """(n, H) embeddings fed to the model; differentiable with respect to `param`."""
        ...

    def prompt(self, param: torch.Tensor) -> Prompt:
        """The prompt the current vectors stand for (evaluated on dev, reported, transferred)."""
        ...


@dataclass(frozen=True)
class Trained:
    best: Prompt
    bias: np.ndarray | None  # the label bias the best prompt was selected with (None: uncalibrated)
    dev_acc: float
    steps: int
    curve: tuple[tuple[int, float], ...]  # (train calls, best dev accuracy so far)
    losses: tuple[float, ...]  # training-batch loss at every step


def initial_embeds(vocab: Vocabulary, n: int, init: P0Init | str, text: str, seed: int,
                   allowed: torch.Tensor | None = None) -> torch.Tensor:
    """(n, H) start vectors, drawn the way BBT draws its p0 (random words, a text, or zeros); the words are not
    BBT's own for the same seed, because BBT draws its larger `A` first."""
    config = SubspaceConfig(prompt_tokens=n, intrinsic_dim=1, p0=P0Init(init), p0_text=text)
    return Subspace.build(vocab, config, seed, allowed=allowed).p0  # A (d=1) is built and dropped; only p0 is used


def train_prompt(task: Task, backend: Backend, init: torch.Tensor, view: PromptView, config: GradientConfig) -> Trained:
    """Minimise label cross-entropy on `task.train` with AdamW; keep the prompt with the best dev accuracy."""
    backend = gradient_backend(backend)
    fmt, model = task.format, backend.model
    table = model.get_input_embeddings().weight
    param = torch.nn.Parameter(init.detach().to(device=table.device, dtype=torch.float32).clone())
    scale = float(backend.vocabulary().embeddings.std())
    opt = torch.optim.AdamW([param], lr=config.lr * scale, weight_decay=config.weight_decay)
    labels = torch.as_tensor(fmt.label_ids(task.train), device=table.device)
    rng = np.random.default_rng(config.seed)
    # (key, dev accuracy, prompt, bias) of the selected point
    best: tuple[tuple[float, ...], float, Prompt | None, np.ndarray | None] = ((math.inf,), 0.0, None, None)
    curve: list[tuple[int, float]] = []
    losses: list[float] = []

    def check(step: int) -> None:
        nonlocal best
        prompt = view.prompt(param)
        bias = fitted_bias(backend, prompt, task.train, fmt) if config.calibrate else None
        dev = evaluate(backend, prompt, task.dev, fmt, label_bias=bias)
        train_ce = losses[-1] if losses else math.nan  # the last batch's loss: only TRAIN_DEV_LOSS reads it
        key = selection_key(config.select, train_ce, len(task.train), dev)
        if key < best[0]:
            best = (key, dev.accuracy, prompt, bias)
        curve.append((step, best[1]))

    check(0)
    with frozen(model):
        for step, idx in zip(range(1, config.steps + 1), _batches(len(task.train), config.batch_size, rng)):
            batch = [task.train[i] for i in idx]
            opt.zero_grad()
            loss = 0.0  # the batch's mean cross-entropy, accumulated part by part within the memory budget
            for part in backend.train_slices(init.shape[0], batch, fmt):
                logp = backend.label_logprobs(view.point(param)[None].to(table.dtype), batch[part], fmt)[0]
                # softmax over the label words only; summed, then divided by the whole batch: the mean's gradient
                part_loss = torch.nn.functional.cross_entropy(logp.float(), labels[idx[part]], reduction="sum") / len(batch)
                part_loss.backward()
                loss += float(part_loss.detach())
            opt.step()
            losses.append(loss)
            backend.stats.add(1, len(batch))
            backend.stats.backward_passes += 1
            if step % config.eval_every == 0 or step == config.steps:
                check(step)
    assert best[2] is not None
    return Trained(best[2], best[3], best[1], config.steps, tuple(curve), tuple(losses))


def run_gradient_method(method: str, task: Task, backend: Backend, init: torch.Tensor, view: PromptView,
                        config: GradientConfig) -> MethodResult:
    """Train, then score the dev-selected prompt on test; the whole run is measured."""
    with Meter(backend) as meter:
        trained = train_prompt(task, backend, init, view, config)
        test = test_accuracy(backend, trained.best, task, trained.bias)
    text = trained.best.text if isinstance(trained.best, HardPrompt) else None
    return MethodResult(method, config.seed, task.format.placement.value, trained.dev_acc, test,
                        train_calls=trained.steps, cost=meter.measurement, curve=trained.curve, prompt_text=text,
                        best=trained.best)


def _batches(n: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless seeded epochs of shuffled indices, cut into batches (size 0 = everything each step)."""
    size = size or n
    while True:
        order = rng.permutation(n)
        for start in range(0, n - size + 1 if n >= size else 1, size):
            yield order[start : start + size]


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """No weight gradients during training (only the prompt learns); restores the flags afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
