"""The one seam between the tuner and a model: `Backend`, and all its callers use of it.

A backend scores a batch of candidate prompts (all soft or all hard) on a batch of examples and returns
log-probabilities of every label word, shape (n_prompts, n_examples, n_labels); a word of several tokens
scores the sum of its tokens' log-probs (`continuation_logprobs` scores any strings that way). One call scores a whole
CMA-ES population. What a backend accepts is declared in `capabilities` and checked before a run starts.
Besides scores, a backend keeps its counters (`stats`), books paid requests in a run folder (`keep_books`) and
reports what a check of its server found (`probe_report`); the two have defaults for a backend that pays
nothing and has no server. Gradient methods need more (the model, differentiable scores): `GradientBackend`,
reached through `gradient_backend`, which checks the capability first.

Implementations inherit `Backend` (for the defaults): `LocalBackend`, `RemoteBackend`, the dry run's
`ShapeBackend`, and the doubles in the tests.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import numpy as np

from bbtune.errors import CapabilityError, ConfigError
from bbtune.core.prompts import Prompt

if TYPE_CHECKING:
    import torch

    from bbtune.backends.findings import ProbeReport
    from bbtune.core.topk import AnswerTopK
    from bbtune.core.vocab import Vocabulary
    from bbtune.tasks import Example, TaskFormat


@dataclass(frozen=True)
class Capabilities:
    """What a backend can score. `gradients`: it can also give gradients w.r.t. soft prompts (local only);
    `generate`: it can answer with text (`Backend.generate`); `logprobs`: its scores are the model's log-probs
    (False for a server that answers text only: its scores come from parsed answers, `bbtune.tasks.answers`)."""

    soft: bool
    hard: bool = True
    gradients: bool = False
    generate: bool = False  # it can write text after an input (`Backend.generate`)
    logprobs: bool = True  # it gives log-probs (False for a text-only server)
    topk: int = 0  # deepest top-k of the answer position's distribution it returns (`Backend.score_topk`); 0: none

    def require(self, kind: str, backend_name: str) -> None:
        if not getattr(self, kind):
            hint = {
                "soft": "use a hard-prompt method (projection in the loop) or a backend that accepts prompt embeddings",
                "hard": "use soft prompts with this backend",
                "gradients": "gradient baselines need a LocalBackend",
                "generate": "use a LocalBackend or a RemoteBackend, which answer with text",
                "logprobs": "this needs the model's log-probs; the server answers text only (RemoteConfig.mode=text); a generation "
                             "task can score answers with answer_scoring=metric",
            }[kind]
            if kind == "soft" and not self.logprobs:
                hint = ("this server answers text only (RemoteConfig.mode=text) and a soft prompt is not text: tune hard "
                        "prompts (mode=hard)")
            can = {"generate": "generate text", "logprobs": "give log-probs"}.get(kind, f"score {kind} prompts")
            raise CapabilityError(f"backend {backend_name} cannot {can}; {hint}")


@dataclass
class CallStats:
    """Counters every backend keeps. A *call* is one candidate prompt scored on one batch of examples
    (BBT's unit of budget); `examples_scored` counts (prompt, example) pairs."""

    calls: int = 0
    examples_scored: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    tokens_processed: int = 0
    labels_missing: int = 0  # label scores that are NaN: absent from a top-k reply (remote top-k scoring)
    labels_scored: int = 0  # label log-probs read from top-k lists (denominator of missing_rate; 0 = never)
    missing_rate: float = 0.0  # labels_missing / labels_scored: share of label scores that are upper bounds
    answers: int = 0  # text answers read as labels (text mode)
    answers_unparsed: int = 0  # of which named no label (`bbtune.tasks.answers`)
    unparsed_rate: float = 0.0  # answers_unparsed / answers

    def add(self, n_prompts: int, n_examples: int) -> None:
        self.calls += n_prompts
        self.examples_scored += n_prompts * n_examples

    def count_labels(self, scored: int, missing: int) -> None:
        self.labels_scored += scored
        self.labels_missing += missing
        self.missing_rate = self.labels_missing / self.labels_scored if self.labels_scored else 0.0

    def count_answers(self, answers: int, unparsed: int) -> None:
        self.answers += answers
        self.answers_unparsed += unparsed
        self.unparsed_rate = self.answers_unparsed / self.answers if self.answers else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def restore(self, saved: dict[str, Any]) -> None:
        """Take the counters a checkpoint saved (`as_dict`), so a resumed run counts on from them."""
        for name, value in saved.items():
            if hasattr(self, name):
                setattr(self, name, value)


@runtime_checkable
class Backend(Protocol):
    """Anything that can score prompts: everything the tuner, the baselines and the CLI use of a backend."""

    name: str
    capabilities: Capabilities
    stats: CallStats

    def score(self, prompts: Sequence[Prompt], examples: Sequence["Example"], fmt: "TaskFormat") -> np.ndarray:
        """Log-probs of each label word: float array (len(prompts), len(examples), len(fmt.labels))."""
        ...

    def continuation_logprobs(self, prompts: Sequence[Prompt], examples: Sequence["Example"], fmt: "TaskFormat",
                              continuations: Sequence[Sequence[str]]) -> np.ndarray:
        """(P, B, C) exact log-probs (the sum over its tokens, teacher forced) of each string ``continuations[b][c]``
        right after row (p, b)'s input, as `score` sees it (the template text ending at the cue); NaN where a
        remote server cannot give a token's log-prob (a top-k miss). `score` with multi-token verbalizer words is
        this with every example's continuations = the words."""
        raise CapabilityError(f"backend {self.name} cannot score continuations; use a LocalBackend, or a "
                              "RemoteBackend in echo or top_logprobs mode")

    def score_topk(self, prompts: Sequence[Prompt], examples: Sequence["Example"], fmt: "TaskFormat",
                   k: int) -> tuple[np.ndarray, list["AnswerTopK"]]:
        """`score`'s (P, B, L) label log-probs and, per prompt, the top-`k` of the next-token distribution at the
        answer position (where the label's first token would be read), as text -> log-prob: what a readout learns
        from. Never deeper than `capabilities.topk`; a row may hold fewer tokens where the server returned fewer."""
        raise CapabilityError(f"backend {self.name} returns no top-k log-probs; use a LocalBackend, or a "
                              "RemoteBackend in top_logprobs, chat, echo or prompt_embeds mode")

    def score_lifted(self, prompts: Sequence[Prompt], examples: Sequence["Example"], fmt: "TaskFormat",
                     tokens: Sequence[str], tops: Sequence["AnswerTopK"]) -> np.ndarray:
        """(P, B, T) log-probs of `tokens` (texts, as a top-k list names them) at the answer position, read below
        the top-k lists `tops` that `score_topk` returned for the same rows (NaN where one cannot be read): what
        lets a readout learn from tokens a shallow list cuts off (`AnswerTopK.lifted`)."""
        raise CapabilityError(f"backend {self.name} cannot read tokens below its top-k lists; use a LocalBackend, or "
                              "a RemoteBackend in top_logprobs or chat mode on a server that honours logit_bias")

    def vocabulary(self) -> "Vocabulary":
        """Tokenizer and the embedding of every token, for `A`'s scale and for discretization."""
        ...

    def generate(self, prompts: Sequence[Prompt], examples: Sequence["Example"], fmt: "TaskFormat", *,
                 max_tokens: int = 16, n: int = 1, temperature: float = 0.0,
                 stop: Sequence[str] = ("\n",)) -> list[list[list[str]]]:
        """P x B x n texts generated after each row's input (the template text ending at the cue, as `score` sees
        it; greedy at temperature 0), each cut before the first `stop` string."""
        raise CapabilityError(f"backend {self.name} cannot generate text; use a LocalBackend or a RemoteBackend")

    def keep_books(self, ledger: Path, replies: Path, resume: bool) -> None:
        """Book every paid request in a run folder's `ledger` before it is sent (so a killed run never pays
        twice, and a resumed one counts what was spent); a backend that pays nothing books nothing."""
        return None

    def probe_report(self) -> "ProbeReport | None":
        """What a check of the server found, as the run used it; None where there is no server to check."""
        return None

    def local_model(self) -> "GradientBackend | None":
        """The local model behind this backend's prompts (itself for a local model, a remote backend's local
        copy), for what only a model can do (judging a prompt's fluency); None where there is none."""
        return None


@runtime_checkable
class GradientBackend(Backend, Protocol):
    """A backend gradient methods can train through: the model itself and differentiable scores."""

    model: Any
    device: "torch.device"

    def prompt_embeds(self, prompts: Sequence[Prompt]) -> "torch.Tensor":
        """(P, n, hidden) input embeddings of a batch of prompts."""
        ...

    def label_logprobs(self, prompt_embeds: "torch.Tensor", examples: Sequence["Example"],
                       fmt: "TaskFormat") -> "torch.Tensor":
        """Differentiable (P, B, L) label log-probs of prompts given as embeddings."""
        ...

    def train_slices(self, n_prompt_tokens: int, examples: Sequence["Example"], fmt: "TaskFormat") -> list[slice]:
        """Slices of `examples` whose forward and backward fit the backend's memory together: one gradient
        step accumulates over them."""
        ...


def gradient_backend(backend: Backend) -> GradientBackend:
    """`backend` as a `GradientBackend`, or a `CapabilityError` naming what to use instead."""
    backend.capabilities.require("gradients", backend.name)
    if not isinstance(backend, GradientBackend):
        raise CapabilityError(f"backend {backend.name} declares gradients but offers no model to train through")
    return backend


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    r"""`text` up to the first of the `stop` strings (a server may ignore ``stop``; a local model has none).

    >>> cut_at_stop("great.\nThe end", ["\n"])
    'great.'
    """
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]


def check_generate_args(max_tokens: int, n: int, temperature: float, stop: Sequence[str]) -> None:
    """The same refusals for every backend's `generate`: a field that names the problem and the fix."""
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    if not 0.0 <= temperature <= 2.0:
        raise ConfigError(f"temperature must be in [0, 2], got {temperature}")
    if n > 1 and temperature == 0:
        raise ConfigError(f"n={n} answers at temperature 0 are n copies of the greedy one; set temperature > 0 or n=1")
    if isinstance(stop, str):
        raise ConfigError(f"stop must be a list of strings, got the string {stop!r}; write [{stop!r}]")


def check_scores(scores: np.ndarray, n_prompts: int, n_examples: int, n_labels: int, source: str) -> np.ndarray:
    """Guard the seam: shape, and numbers that are log-probs or an honest NaN ("missing": the server did not
    give this label's log-prob; `bbtune.search.losses` says what it costs). An infinity is a bug upstream and never
    reaches a loss."""
    expected = (n_prompts, n_examples, n_labels)
    if scores.shape != expected:
        raise AssertionError(f"{source} returned scores of shape {scores.shape}, expected {expected}")
    known = scores[~np.isnan(scores)]
    if not np.all(np.isfinite(known)):
        raise CapabilityError(f"{source} returned infinite log-probs; its scores cannot be trusted")
    return scores
