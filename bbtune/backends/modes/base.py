"""`ScoreStrategy`: one way of asking a server for scores, shared by the backend, the probe and the dry run.

A strategy builds its requests, reads its replies and prices itself; it holds the config (a `RemoteConfig`) and
no state: how requests are built right now (`Settings`) is passed in, so the probe can try other settings
without touching the backend. What a strategy needs from its backend is `Scorer`; what the probe offers it,
`ProbeContext`.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

import numpy as np

from bbtune.backends.base import Capabilities, check_generate_args, cut_at_stop
from bbtune.backends.continuations import score_continuations
from bbtune.backends.findings import ProbeReport, Settings
from bbtune.backends.wire import CHAT, COMPLETIONS, Generation, Request, ScoreMode, generation_requests
from bbtune.constants import CHAT_TOKEN_MARGIN, PROMPT_TOKEN_MARGIN
from bbtune.core.prompts import HardPrompt, Prompt, prompt_kind
from bbtune.core.topk import AnswerTopK
from bbtune.errors import (BadRequestError, CapabilityError, MalformedResponseError, NotFoundError, ServerError,
                           TaskError)
from bbtune.tasks import Example, TaskFormat

Config = Any  # a `RemoteConfig` (remote.py imports this package, so the type cannot be imported here)
Sample = tuple[Prompt, Sequence[Example], TaskFormat]
Tops = list[dict[str, float]]
PROBE_TEXTS = ("The film was great and the acting was wonderful. It was", "The market fell today. This news is about")
TEXT_ONLY = ("a server that returns no log-probs at all (a text-only API) can still tune hard prompts with "
             "RemoteConfig.mode=text (scores from its answers, parsed to labels)")

LIST_PROBE_RETRIES = 2  # enough to ride out a transient fault, few enough not to wait long on a server that refuses
REFUSALS = (BadRequestError, ServerError, MalformedResponseError, CapabilityError)  # "no" in its many shapes


class Scorer(Protocol):
    """What a strategy needs from its backend (`RemoteBackend` offers it): the local model's side and the sender."""

    config: Config
    name: str
    stats: Any

    @property
    def tokenizer(self) -> Any | None: ...
    def reference(self) -> Any: ...
    def count_tokens(self, text: str) -> int: ...
    def get(self, path: str, parse: Callable[[dict[str, Any]], Any]) -> Any: ...
    def send(self, requests: list[Request], salt: str = "", retries: int | None = None) -> list[Any]: ...
    def after_probe(self, sample: Sample | None) -> Settings: ...


class ProbeContext(Protocol):
    """What the probe offers a strategy's own checks (`bbtune.backends.probe.Prober`): its report, the settings
    it has found so far, and its requests."""

    scorer: Scorer
    report: ProbeReport
    settings: Settings
    tol: float

    def first(self) -> Any: ...
    def repeatable(self, first: Any) -> None: ...
    def lists(self, first: Any) -> None: ...
    def sampled(self, sample: Sample) -> None: ...


@dataclass(frozen=True)
class BatchPrice:
    """What sending some texts costs at most: requests, prompt and completion tokens, and the largest request's
    prompt tokens (the dry run prices the probe's requests by it)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    largest: int = 0


def split(items: Sequence[Any], size: int, path: str, body: Callable[[Sequence[Any]], dict[str, Any]],
          parse: Callable[[Sequence[Any]], Callable[[dict[str, Any]], list[Any]]],
          tokens: Callable[[Any], int]) -> list[Request]:
    """Requests for `items` in chunks of `size`, each reserving its items' tokens."""
    parts = [items[i : i + size] for i in range(0, len(items), size)]
    return [Request(path, body(part), parse(part), (sum(map(tokens, part)), len(part))) for part in parts]


def agree(a: Any, b: Any, tol: float) -> bool:
    """Same log-prob (echo floats), or the same best tokens with the same values (top-k dicts)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, float) and isinstance(b, float) and abs(a - b) <= tol
    best = sorted(a, key=a.get, reverse=True)[:3]
    return all(k in b and abs(a[k] - b[k]) <= tol for k in best)


def show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5f}"
    return "{" + ", ".join(f"{k!r}: {v:.4f}" for k, v in list(value.items())[:3]) + "}"


def bias_map(ids: Sequence[int], bias: float) -> Mapping[int, float] | None:
    """OpenAI's ``logit_bias`` for `bias` on the tokens `ids` (None: no bias)."""
    return {t: bias for t in ids} if bias and ids else None


class ScoreStrategy(ABC):
    """One score mode. Subclasses say how a row becomes requests and a reply becomes label scores."""

    mode: ClassVar[ScoreMode]
    soft: ClassVar[bool] = False  # takes soft prompts (as input embeddings)
    logprobs: ClassVar[bool] = True
    feature_words: ClassVar[tuple[str, ...]] = ("logprobs",)  # a 400 naming one of them refuses the mode
    use_instead: ClassVar[str] = ""  # what to do when the server refuses the mode
    max_top_k: ClassVar[int] = 10_000

    def __init__(self, config: Config):
        self.config = config

    # ------------------------------------------------------------------ what the mode is

    @property
    def endpoint(self) -> str:
        return COMPLETIONS

    @property
    def uses_chat(self) -> bool:
        return self.endpoint == CHAT

    def capabilities(self) -> Capabilities:
        """What a backend in this mode can do before the probe (it may lower the top-k)."""
        cfg = self.config
        return Capabilities(soft=self.soft, hard=True, gradients=False, generate=True, logprobs=self.logprobs,
                            topk=cfg.top_k if self.logprobs else 0)

    def settings(self) -> Settings:
        """The configured settings: lists of prompts except on chat, a fixed bias only where no probe decides."""
        cfg = self.config
        fixed = not cfg.probe and cfg.logit_bias not in ("auto", "off")
        return Settings(cfg.top_k, 1 if self.uses_chat else cfg.batch_size, cfg.bias if fixed else 0.0)

    def explain(self, err: BaseException) -> BaseException:
        """A refusal of the mode's feature (400 naming it, 404 on its endpoint) as a `CapabilityError` that says
        which mode to use instead; any other error unchanged."""
        text = str(err).lower()
        refused = isinstance(err, BadRequestError) and any(w in text for w in self.feature_words)
        if refused or (isinstance(err, NotFoundError) and getattr(err, "missing_endpoint", False)):
            return CapabilityError(f"{err}\n  -> {self.use_instead}")
        return err

    # ------------------------------------------------------------------ rows

    def lead(self, fmt: TaskFormat) -> str:
        """Text put before every row: the chat instruction naming the answer words, where the mode asks chat."""
        template = self.config.chat_instruction
        if not self.uses_chat or not template:
            return ""
        words = [w.strip() for w in fmt.verbalizer.values()]
        named = ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
        return template.replace("{labels}", named)

    def texts(self, name: str, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat) -> list[str]:
        """Row (p, b) = p * B + b: the format's text of example b with hard prompt p, after the `lead`."""
        lead = self.lead(fmt)
        out = []
        for prompt in prompts:
            if not isinstance(prompt, HardPrompt):
                self.refuse_soft(name)
            assert isinstance(prompt, HardPrompt)
            out += [lead + fmt.text(ex, prompt.text) for ex in examples]
        return out

    def refuse_soft(self, name: str) -> None:
        raise CapabilityError(f"backend {name} sends text ({self.mode.value} mode): a soft prompt is not "
                              "text; tune hard prompts (mode=hard), or use RemoteConfig.mode=prompt_embeds with a "
                              "server that takes prompt embeddings")

    def token_margin(self) -> int:
        """Tokens a text carries on the wire besides its own (BOS and drift; a chat template's role markers)."""
        return PROMPT_TOKEN_MARGIN + (CHAT_TOKEN_MARGIN if self.uses_chat else 0)

    # ------------------------------------------------------------------ scoring

    @abstractmethod
    def label_logprobs(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt],
                       examples: Sequence[Example], fmt: TaskFormat, *, bias: float = 0.0, salt: str = "",
                       strict: bool = False, answer_tops: Tops | None = None) -> np.ndarray:
        """(P * B, L) label log-probs as the server gives them (NaN = missing), `bias` on every label token."""

    def score(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt], examples: Sequence[Example],
              fmt: TaskFormat) -> np.ndarray:
        """(P * B, L) scores as a run uses them: the label log-probs with the bias the probe found."""
        return self.label_logprobs(scorer, settings, prompts, examples, fmt, bias=settings.logit_bias)

    @abstractmethod
    def collect_topk(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt],
                     examples: Sequence[Example], fmt: TaskFormat, depth: int) -> tuple[np.ndarray, Tops]:
        """(P * B, L) label scores and each row's top-k {token text: log-prob} at the answer position, from
        requests without logit_bias (a readout learns the model's own distribution)."""

    def continuation_logprobs(self, scorer: Scorer, prompts: Sequence[Prompt], examples: Sequence[Example],
                              fmt: TaskFormat, continuations: Sequence[Sequence[str]]) -> np.ndarray:
        """(P, B, C) log-probs of each example's strings: each string scored as a label word."""
        def scores(ps: Sequence[Prompt], exs: Sequence[Example], words: TaskFormat) -> np.ndarray:
            settings = scorer.after_probe((ps[0], exs, words))
            flat = self.label_logprobs(scorer, settings, ps, exs, words, bias=settings.logit_bias)
            return flat.reshape(len(ps), len(exs), len(words.verbalizer))

        return score_continuations(scores, prompts, examples, fmt, continuations)

    def require_topk(self, name: str) -> None:
        """Refuses `score_topk` before anything is sent where the mode has no top-k (text)."""

    def lift(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt], examples: Sequence[Example],
             fmt: TaskFormat, tokens: Sequence[str], tops: Sequence[AnswerTopK]) -> np.ndarray:
        """(P * B, T) log-probs of `tokens` below each row's list (`RemoteBackend.score_lifted`); only the modes
        that read top-k lists with ``logit_bias`` can."""
        raise CapabilityError(f"RemoteConfig.mode={self.mode.value} cannot read tokens below the top-k list; use "
                              "RemoteConfig.mode=top_logprobs or chat on a server that honours logit_bias, or "
                              "TuneConfig.readout_lift=0")

    # ------------------------------------------------------------------ answers (`generate`, text mode)

    def generation(self, settings: Settings, max_tokens: int, n: int, temperature: float,
                   stop: Sequence[str]) -> Generation:
        """How answers are asked: the mode's endpoint, `n` in one request as far as the server takes it."""
        return Generation(self.endpoint, max_tokens, n, temperature, tuple(stop),
                          max(1, min(n, settings.answers_per_request)))

    def complete(self, scorer: Scorer, settings: Settings, texts: Sequence[str], gen: Generation, salt: str = "",
                 retries: int | None = None, size: int | None = None) -> list[list[str]]:
        """Each text's `gen.n` answers, cut at the first stop string (a server may ignore ``stop``)."""
        requests = generation_requests(self.config.model, gen, texts, scorer.count_tokens, size or settings.batch_size)
        out: list[list[str]] = [[] for _ in texts]
        for index, answers in scorer.send(requests, salt=salt, retries=retries):
            out[index].extend(cut_at_stop(a, gen.stop) for a in answers)
        return out

    def generate(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt], examples: Sequence[Example],
                 fmt: TaskFormat, *, max_tokens: int = 16, n: int = 1, temperature: float = 0.0,
                 stop: Sequence[str] = ("\n",), salt: str = "") -> list[list[list[str]]]:
        """P x B x n answers after each row's input (see `RemoteBackend.generate`)."""
        if not examples:
            raise TaskError("generate() got no examples; give at least one")
        check_generate_args(max_tokens, n, temperature, stop)
        if prompt_kind(list(prompts)) == "soft":
            self.refuse_soft(scorer.name)
        gen = self.generation(settings, max_tokens, n, temperature, stop)
        answers = self.complete(scorer, settings, self.texts(scorer.name, prompts, examples, fmt), gen, salt=salt)
        B = len(examples)
        return [answers[p * B : (p + 1) * B] for p in range(len(prompts))]

    # ------------------------------------------------------------------ the probe

    @abstractmethod
    def probe_requests(self, scorer: Scorer, settings: Settings, texts: Sequence[str], size: int) -> list[Request]:
        """The probe's requests for its texts, `size` per request, as the mode asks them."""

    def probe_depths(self, asked: int, steps: Sequence[int]) -> list[int]:
        """The top-k depths the probe tries, deepest first, stepping down where the server refuses."""
        return [asked] + [k for k in steps if k < asked]

    def cross_check(self, ctx: ProbeContext, first: Any) -> None:
        """The mode's own check of the probe's first reply."""

    def late_check(self, ctx: ProbeContext, first: Any) -> None:
        """The mode's check of the first reply against another request, once the list size is settled."""

    def probe(self, ctx: ProbeContext, sample: Sample | None) -> None:
        """The probe's checks in this mode (see `bbtune.backends.probe`); findings go to ``ctx.report``."""
        first = ctx.first()
        ctx.repeatable(first)
        self.cross_check(ctx, first)
        if ctx.settings.batch_size > 1:
            ctx.lists(first)
        self.late_check(ctx, first)
        if sample is not None:
            ctx.sampled(sample)

    # ------------------------------------------------------------------ the price

    def priced_groups(self, rows: Sequence[int], label_seqs: Sequence[Sequence[int]]) -> list[list[int]]:
        """The texts sent for rows of `rows` tokens (the label words' tokens they carry added), in the groups that
        are cut into requests separately."""
        return [list(rows)]

    def sends(self, topk: bool) -> int:
        """How many times each text goes out at most (`topk`: a `score_topk` call)."""
        return 1

    def completion_tokens(self) -> int:
        """Completion tokens one text asks per send."""
        return 1

    def extra_tokens(self, tokenizer: Any) -> int:
        """Tokens every text carries besides itself: the margin, a chat template's markers and the instruction."""
        if not self.uses_chat:
            return PROMPT_TOKEN_MARGIN
        instruction = self.config.chat_instruction or ""
        return self.token_margin() + len(tokenizer.encode(instruction, add_special_tokens=False))

    def price(self, rows: Sequence[int], tokenizer: Any, label_seqs: Sequence[Sequence[int]],
              topk: bool = False) -> BatchPrice:
        """The most scoring rows of `rows` tokens costs (`topk`: through `score_topk`), as this mode sends them
        with the configured list size."""
        batch, sends, extra = self.settings().batch_size, self.sends(topk), self.extra_tokens(tokenizer)
        groups = [[n + extra for n in group] for group in self.priced_groups(rows, label_seqs)]
        texts = sum(map(len, groups))
        return BatchPrice(sum(math.ceil(len(g) / batch) for g in groups) * sends, sum(map(sum, groups)) * sends,
                          texts * self.completion_tokens() * sends, max(sum(sorted(g)[-batch:]) for g in groups))

    def price_probe(self, requests: int, largest: int) -> BatchPrice:
        """The probe at most: `requests` requests as large as the run's `largest`."""
        batch = self.settings().batch_size
        return BatchPrice(requests, requests * largest, requests * batch * self.completion_tokens() * self.sends(False),
                          largest)
