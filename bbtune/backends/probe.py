"""Before a run trusts a server's numbers: what it supports, and whether its answers are consistent.

Servers differ (lists of prompts, echo, logprobs depth, prompt_embeds, logit_bias) and some answer wrongly
instead of refusing (llama.cpp ignores ``echo``; a server may cap top-k silently or batch lists differently).
The probe sends a handful of requests in the run's mode and adapts where it can, refuses where it must:

1. ``/models`` lists the model (a note if not: llama.cpp answers to any name);
2. the mode's feature works; a refused top-k steps down (`TOP_K_STEPS`: 20, 10, 5, 1) to the deepest the server
   accepts; a refused feature becomes a `CapabilityError` that names the mode to use instead;
3. the same prompt twice gives the same log-probs (within ``probe_tolerance``);
4. a top-k list is a distribution: sorted, log-probs <= 0, probabilities summing to at most 1;
5. echo: echoed log-probs agree with the top-k of the same position (asked without echo): the probe word's and
   that position's best word's values equal their values in the list, and a word absent from the list scores no
   higher than its k-th value; a server whose echo is misaligned is refused;
6. a list of two prompts gives what the two single requests give; any error or disagreement means one prompt
   per request (logged once, recorded in the report);
7. ``prompt_embeds`` of a text give what the text itself gives (the server reads our encoding right);
8. on a sample of the task (the first score call's prompt and examples): ``logit_bias`` on the label tokens
   is used only if the server honours it in the log-probs it reports (label differences unchanged, labels
   present, their probability raised: llama.cpp applies it to sampling only); without it, too many missing
   labels make the probe ask deeper top-k lists (`DEEP_TOP_K_STEPS`) where the server accepts them; the run
   stops if more than ``max_missing`` of the sample's label scores are still missing.

Arrows run one way: this module knows the wire format (`wire`) and a `Target` (what `RemoteBackend` offers
publicly), never the backend's insides. Probe requests go through the cache like any other.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from bbtune.constants import DEEP_TOP_K_STEPS, PROBE_SAMPLE, TOP_K_STEPS
from bbtune.errors import (
    APIConnectionError,
    BackendError,
    BadRequestError,
    CapabilityError,
    MalformedResponseError,
    NotFoundError,
    ServerError,
)
from bbtune.core.prompts import Prompt
from bbtune.tasks import Example, TaskFormat
from bbtune.backends import wire
from bbtune.backends.wire import ProbeReport, ScoreMode

log = logging.getLogger("bbtune")

PROBE_TEXTS = ("The film was great and the acting was wonderful. It was", "The market fell today. This news is about")

TEXT_ONLY = ("a server that returns no log-probs at all (a text-only API) can still tune hard prompts with "
             "--remote-mode text (scores from its answers, parsed to labels)")
USE_INSTEAD = {
    ScoreMode.TOP_LOGPROBS: "the server gives no next-token logprobs on /completions: use --remote-mode chat "
                            f"(top_logprobs on chat completions) or a server that does (vLLM, llama.cpp); {TEXT_ONLY}",
    ScoreMode.CHAT: f"the server gives no top_logprobs on /chat/completions: use --remote-mode top_logprobs; {TEXT_ONLY}",
    ScoreMode.ECHO: "the server does not return the prompt's log-probs with echo (llama.cpp ignores echo, "
                    f"gpt-3.5-turbo-instruct refuses echo with logprobs): use --remote-mode top_logprobs; {TEXT_ONLY}",
    ScoreMode.PROMPT_EMBEDS: "the server does not accept prompt_embeds (start vLLM with --enable-prompt-embeds), "
                             "or tune hard prompts with --remote-mode top_logprobs or echo",
    ScoreMode.TEXT: "the server does not answer this text request: try --remote-answer-endpoint completions (or "
                    "chat), or check the model name and the server's API",
}
_FEATURE_WORDS = {
    ScoreMode.TOP_LOGPROBS: ("logprobs",),
    ScoreMode.CHAT: ("logprobs",),
    ScoreMode.ECHO: ("echo", "logprobs"),
    ScoreMode.PROMPT_EMBEDS: ("prompt_embeds", "prompt-embeds", "embeds"),
    ScoreMode.TEXT: (),
}
LIST_PROBE_RETRIES = 2  # enough to ride out a transient fault, few enough not to wait long on a server that refuses
_REFUSALS = (BadRequestError, ServerError, MalformedResponseError, CapabilityError)  # "no" in its many shapes
Sample = tuple[Prompt, Sequence[Example], TaskFormat]


class Target(Protocol):
    """What the probe needs from a backend (`RemoteBackend` offers it): its settings, request builders, sender."""

    config: Any
    top_k_: int
    batch_size_: int
    logit_bias_: float

    @property
    def tokenizer(self) -> Any | None: ...
    def reference(self) -> Any: ...
    def count_tokens(self, text: str) -> int: ...
    def shape(self, bias_ids: Sequence[int] = (), bias: float = 0.0) -> wire.Shape: ...
    def requests(self, shape: wire.Shape, items: Sequence[Any], size: int | None = None) -> list[wire.Request]: ...
    def send(self, requests: list[wire.Request], salt: str = "", retries: int | None = None) -> list[Any]: ...
    def get(self, path: str, parse: Callable[[dict[str, Any]], Any]) -> Any: ...
    def label_keys(self, fmt: TaskFormat) -> wire.LabelKeys: ...
    def label_logprobs(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat, *,
                       bias: float = 0.0, salt: str = "", strict: bool = False) -> np.ndarray: ...
    answers_per_request_: int

    def generation(self, max_tokens: int, n: int, temperature: float, stop: Sequence[str]) -> wire.Generation: ...
    def complete(self, texts: Sequence[str], gen: wire.Generation, salt: str = "", retries: int | None = None,
                 size: int | None = None) -> list[list[str]]: ...
    def generate(self, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat, *,
                 max_tokens: int = 16, n: int = 1, temperature: float = 0.0, stop: Sequence[str] = ("\n",),
                 salt: str = "") -> list[list[list[str]]]: ...


def explain(err: BaseException, mode: ScoreMode) -> BaseException:
    """A refusal of the mode's feature (400 naming it, 404 on its endpoint) as a `CapabilityError` that says
    which mode to use instead; any other error unchanged."""
    text = str(err).lower()
    refused = isinstance(err, BadRequestError) and any(w in text for w in _FEATURE_WORDS[mode])
    if refused or (isinstance(err, NotFoundError) and getattr(err, "missing_endpoint", False)):
        return CapabilityError(f"{err}\n  -> {USE_INSTEAD[mode]}")
    return err


def run_probe(target: Target, sample: Sample | None = None) -> ProbeReport:
    """Probe `target` (see the module docstring); may lower its `top_k_` / `batch_size_`, set `logit_bias_`."""
    cfg = target.config
    report = ProbeReport(mode=cfg.mode.value, top_k=target.top_k_, batch_size=target.batch_size_)
    _models(target, report)
    if cfg.mode is ScoreMode.TEXT:
        _TextProbe(target, report).run(sample)
        return report
    probe = _Probe(target, report)
    first = probe.first()
    probe.repeatable(first)
    if cfg.mode is ScoreMode.ECHO:
        probe.echo_matches_top_k(first)
    else:
        _distribution(first, report, cfg.probe_tolerance)
    if cfg.mode.takes_lists and target.batch_size_ > 1:
        probe.lists(first)
    if cfg.mode is ScoreMode.PROMPT_EMBEDS:
        probe.embeds_match_text(first)
    if sample is not None and cfg.mode is not ScoreMode.ECHO:
        _Sampled(target, report, sample).run()
    return report


def _models(target: Target, report: ProbeReport) -> None:
    def parse(reply: dict[str, Any]) -> list[str]:
        data = reply.get("data")
        if not isinstance(data, list):
            raise MalformedResponseError("/models reply has no 'data' list")
        return [str(m.get("id")) for m in data if isinstance(m, Mapping)]

    try:
        report.models = target.get("/models", parse)
    except (NotFoundError, MalformedResponseError, BadRequestError) as err:
        report.notes.append(f"no usable /models ({type(err).__name__}); the model name is checked by the first request")
        return
    if target.config.model not in report.models:
        report.notes.append(f"model {target.config.model!r} is not in /models {report.models[:10]}; "
                            "some servers (llama.cpp) answer to any name")
    else:
        report.checks.append("model listed")


def _distribution(top: Mapping[str, float], report: ProbeReport, tol: float) -> None:
    values = list(top.values())
    if any(b > a + tol for a, b in zip(values, values[1:])):
        raise CapabilityError(f"the server's top-k list is not sorted by log-prob ({values[:5]}); "
                              "its logprobs cannot be trusted")
    mass = sum(math.exp(v) for v in values)
    if mass > 1 + tol:
        raise CapabilityError(f"the server's top-k probabilities sum to {mass:.3f} > 1: they are not log-probs "
                              "(raw logits?); its scores cannot be trusted")
    report.top_k_returned = len(values)
    if len(values) < report.top_k:
        report.notes.append(f"asked for {report.top_k} logprobs, the server returned {len(values)}; "
                            "labels outside them are missing")
    report.checks.append("top-k is a sorted distribution")


class _Probe:
    """The probe's requests, built by the target's own request builders (so the probe tests what runs)."""

    def __init__(self, target: Target, report: ProbeReport):
        self.target, self.report = target, report
        self.mode, self.tol = target.config.mode, target.config.probe_tolerance
        self.items = [self._item(t) for t in PROBE_TEXTS]

    def _item(self, text: str) -> Any:
        tok = self.target.tokenizer
        if self.mode is ScoreMode.PROMPT_EMBEDS:
            assert tok is not None, "prompt_embeds needs the local model, which brings its tokenizer"
            return self.target.reference().embed_text_ids(tok(text, add_special_tokens=True)["input_ids"])
        if self.mode is ScoreMode.ECHO:  # the text's own last token plays the label word
            word = tok.decode(tok(text, add_special_tokens=False)["input_ids"][-1:]) if tok is not None else " about"
            return (text if text.endswith(word) else text + word), word
        return text

    def ask(self, which: list[int], salt: str = "", together: bool = False, retries: int | None = None) -> list[Any]:
        items = [self.items[i] for i in which]
        size = len(items) if together else 1
        t = self.target
        if self.mode is ScoreMode.ECHO:
            requests = wire.echo_requests(t.shape(), items, lambda pair: t.count_tokens(pair[0]), size)
        else:
            requests = t.requests(t.shape(), items, size)
        return t.send(requests, salt=salt, retries=retries)

    def first(self) -> Any:
        """The first request at the deepest top-k the server accepts (stepping down on a refusal); a refused
        feature says what to use instead."""
        asked = self.target.top_k_
        steps = [asked] + [k for k in TOP_K_STEPS if k < asked]
        if self.mode is ScoreMode.ECHO:  # echo asks logprobs=1 whatever top_k says
            steps = steps[:1]
        for i, k in enumerate(steps):
            self.target.top_k_ = self.report.top_k = k
            try:
                reply = self.ask([0], retries=0 if i + 1 < len(steps) else None)[0]
            except MalformedResponseError as err:
                raise CapabilityError(f"{err}\n  -> {USE_INSTEAD[self.mode]}") from err
            except (CapabilityError, BadRequestError, ServerError) as err:
                refused_depth = not isinstance(err, CapabilityError) or "logprobs" in str(err).splitlines()[0]
                if i + 1 == len(steps) or not refused_depth:
                    raise
                continue
            if k != asked:
                self.report.notes.append(f"the server refused top_k={asked}; using {k}, the deepest it accepts")
            return reply
        raise AssertionError("unreachable: the last step re-raises")

    def repeatable(self, first: Any) -> None:
        """The same prompt asked again (a separate request, also in the cache) must give the same numbers."""
        again = self.ask([0], salt="probe-repeat")[0]
        if not _agree(first, again, self.tol):
            raise CapabilityError(f"the same prompt asked twice got different log-probs ({_show(first)} vs "
                                  f"{_show(again)}); the server's scores are not reproducible (sampling on? batching "
                                  "noise?) and cannot be trusted")
        self.report.checks.append("repeatable")

    def echo_matches_top_k(self, echoed: float) -> None:
        """Echoed log-probs must agree with the top-k list of the same position (asked without echo): a token in
        the list has its value there, a token absent from it cannot score above the list's last (k-th) value.
        Checked on the probe text's own last word and on the best word of that position, which is in the list by
        construction: a misaligned echo cannot hide behind a word outside the top-k."""
        text, word = self.items[0]
        context = text[: -len(word)]
        t = self.target
        shape = wire.Shape(t.config.model, ScoreMode.TOP_LOGPROBS, t.top_k_, 1)
        try:
            top = t.send(wire.text_requests(shape, [context], t.count_tokens), retries=0)[0]
        except (*_REFUSALS, NotFoundError) as err:
            self.report.notes.append(f"echo not cross-checked: top-k of the same position refused ({type(err).__name__})")
            return
        if not top:
            self.report.notes.append("echo not cross-checked: the top-k of the same position is empty")
            return
        checked: list[tuple[str, float | None]] = [(word, echoed)]
        best = self._single_token_word(context, top)
        if best is not None and best != word:
            checked.append((best, self._echo(context + best, best)))
        for w, value in checked:
            self._echo_agrees(w, value, top)
        self.report.checks.append("echo matches top-k")

    def _single_token_word(self, context: str, top: Mapping[str, float]) -> str | None:
        """The most likely word of `top` that stays one token after `context` (else the echo cannot isolate it)."""
        tok = self.target.tokenizer
        for w in sorted(top, key=top.__getitem__, reverse=True)[:5]:
            if not w.strip():
                continue
            if tok is None:
                return w
            ids = tok(context + w, add_special_tokens=False)["input_ids"]
            if ids[:-1] == tok(context, add_special_tokens=False)["input_ids"] and tok.decode(ids[-1:]) == w:
                return w
        return None

    def _echo(self, text: str, word: str) -> float | None:
        t = self.target
        try:
            return float(t.send(wire.echo_requests(t.shape(), [(text, word)], lambda pair: t.count_tokens(pair[0]), 1))[0])
        except MalformedResponseError as err:  # e.g. the server merged the word with the text: not a verdict
            self.report.notes.append(f"echo of the best word not checked ({str(err).splitlines()[0][:120]})")
            return None

    def _echo_agrees(self, word: str, echoed: float | None, top: Mapping[str, float]) -> None:
        if echoed is None:
            return
        tol = max(self.tol, 1e-3)
        if word in top:
            if abs(top[word] - echoed) <= tol:
                return
            seen = f"the top-k of the same position gives {top[word]:.4f}"
        else:
            kth = min(top.values())
            if echoed <= kth + tol:
                return
            seen = (f"it is not in the top-{self.target.top_k_} of the same position, whose last value is {kth:.4f}: "
                    "an absent token cannot score higher")
        raise CapabilityError(
            f"echo gave {word!r} the log-prob {echoed:.4f}, but {seen}; the server's echoed log-probs are "
            "misaligned (another position's scores?) and cannot be trusted; use --remote-mode top_logprobs")

    def lists(self, first: Any) -> None:
        """Two prompts in one request must give what two single requests give; any error (after a couple of
        retries), or a disagreement, means one prompt per request from now on."""
        try:
            together = self.ask([0, 1], together=True, retries=LIST_PROBE_RETRIES)
            second = self.ask([1])[0]
            if not (_agree(together[0], first, self.tol) and _agree(together[1], second, self.tol)):
                raise MalformedResponseError(f"a list of two prompts gave {_show(together[0])}, {_show(together[1])}; "
                                             f"one at a time gave {_show(first)}, {_show(second)}")
        except (BackendError, CapabilityError) as err:
            self.target.batch_size_ = self.report.batch_size = 1
            note = f"lists of prompts unusable ({str(err).splitlines()[0][:200]}); sending one prompt per request"
            self.report.notes.append(note)
            log.warning("bbtune: %s", note)
            return
        self.report.checks.append("lists match single prompts")

    def embeds_match_text(self, first: Any) -> None:
        t = self.target
        try:
            as_text = t.send(wire.text_requests(t.shape(), [PROBE_TEXTS[0]], t.count_tokens))[0]
        except (*_REFUSALS, NotFoundError, APIConnectionError) as err:
            self.report.notes.append(f"could not compare prompt_embeds with text ({type(err).__name__})")
            return
        if not _agree(first, as_text, max(self.tol, 1e-3)):
            raise CapabilityError(
                f"prompt_embeds of a text gave {_show(first)} but the text itself gave {_show(as_text)}: the server "
                "reads the embeddings differently (another model, dtype, or special tokens?)")
        self.report.checks.append("prompt_embeds match text")


class _Sampled:
    """Checks on a sample of the task itself: logit_bias, then the share of label scores missing."""

    def __init__(self, target: Target, report: ProbeReport, sample: Sample):
        self.target, self.report = target, report
        prompt, examples, self.fmt = sample
        self.prompt, self.examples = prompt, list(examples)[:PROBE_SAMPLE]
        self.cfg = target.config

    def scores(self, bias: float, strict: bool = False) -> np.ndarray:
        return self.target.label_logprobs([self.prompt], self.examples, self.fmt, bias=bias, strict=strict)[0]

    def run(self) -> None:
        scores = self.scores(0.0)
        if self.cfg.bias:
            scores = self.try_bias(scores)
        if self.target.logit_bias_ == 0 and np.isnan(scores).mean() > self.cfg.max_missing:
            scores = self.deepen(scores)
            if self.cfg.bias and self.report.top_k > len(self.target.label_keys(self.fmt).token_ids):
                scores = self.try_bias(scores)  # a deeper list may now hold every label spelling
        missing = float(np.isnan(scores).mean())
        self.report.sample_missing_rate = missing
        if missing > self.cfg.max_missing:
            found = "".join(f"\n  probe: {note}" for note in self.report.notes)
            raise CapabilityError(missing_message(missing, len(self.examples), self.target.top_k_, self.cfg) + found)
        self.report.checks.append(f"labels missing on the sample: {missing:.0%}")

    def deepen(self, scores: np.ndarray) -> np.ndarray:
        """Too many labels missing and no logit_bias: ask the deepest top-k list (`DEEP_TOP_K_STEPS`) the server
        accepts (llama.cpp and vLLM with a high --max-logprobs do). Not just deep enough for the sample: the search
        moves to prompts that push label words further down (on llama-cpp-python, top-100 sufficed for the probe's
        sample while a run then missed 43% of its labels), so the run keeps the deepest list it can get."""
        for k in (k for k in DEEP_TOP_K_STEPS if k > self.target.top_k_):
            before = self.target.top_k_
            self.target.top_k_ = self.report.top_k = k
            try:
                deeper = self.scores(0.0)
            except (*_REFUSALS, NotFoundError) as err:
                self.target.top_k_ = self.report.top_k = before
                self.report.notes.append(f"a top-{k} list was refused ({type(err).__name__}); keeping top-{before}")
                break
            self.report.notes.append(f"{np.isnan(scores).mean():.0%} of the sample's labels missing from the top-"
                                     f"{before}: asking top-{k} ({np.isnan(deeper).mean():.0%} missing)")
            scores = deeper
        return scores

    def try_bias(self, plain: np.ndarray) -> np.ndarray:
        """The biased scores if the server honours logit_bias (the backend then uses it), else `plain`."""
        n_tokens, k = len(self.target.label_keys(self.fmt).token_ids), self.target.top_k_
        if not n_tokens:
            self.report.notes.append("logit_bias not used: it needs the label token ids (set --remote-local-model)")
            return plain
        if n_tokens > k:  # biased, they fill the list in their own order: a label could still fall off its end
            self.report.notes.append(f"logit_bias not used: the labels have {n_tokens} tokens (spellings) and a "
                                     f"top-{k} list cannot hold them all; ask --remote-top-k {n_tokens} or more")
            return plain
        bias = self.cfg.bias
        try:
            biased = self.scores(bias)
        except (*_REFUSALS, NotFoundError) as err:
            self.report.notes.append(f"logit_bias not used: the server refused it ({str(err).splitlines()[0][:160]})")
            return plain
        # compared where the unbiased list holds every spelling of every label (else its sums are partial)
        problem = bias_problem(self.scores(0.0, strict=True), biased, max(self.cfg.probe_tolerance, 2e-3))
        if problem:
            self.report.notes.append(f"logit_bias not used: {problem}")
            return plain
        self.target.logit_bias_ = self.report.logit_bias = bias
        self.report.checks.append("logit_bias keeps label differences")
        return biased


class _TextProbe:
    """Text mode's checks: the server answers text; the same request at temperature 0 gets the same answer (else
    a note: the scores are noisy, average more answers); a list of two prompts answers like two requests (else
    one prompt per request); ``n`` answers in one request (else repeated requests); and on the task's sample, the
    share of answers naming no label (the run stops above ``max_unparsed``, naming the fixes)."""

    def __init__(self, target: Target, report: ProbeReport):
        self.target, self.report, self.cfg = target, report, target.config
        self.greedy = target.generation(self.cfg.answer_tokens, 1, 0.0, ("\n",))

    def run(self, sample: Sample | None) -> None:
        first = self.answers()
        self.report.checks.append("answers text")
        self.repeats(first)
        if self.target.batch_size_ > 1:
            self.lists(first)
        if self.cfg.answer_samples > 1:
            self.samples()
        self.report.answers_per_request = min(self.target.answers_per_request_, self.cfg.answer_samples)
        if sample is not None:
            self.sampled(sample)

    def answers(self, salt: str = "") -> list[str]:
        try:
            return [a[0] for a in self.target.complete(PROBE_TEXTS, self.greedy, salt=salt, size=1)]
        except MalformedResponseError as err:
            raise CapabilityError(f"{err}\n  -> {USE_INSTEAD[ScoreMode.TEXT]}") from err

    def repeats(self, first: list[str]) -> None:
        again = self.answers(salt="probe-repeat")
        if again == first:
            self.report.checks.append("temperature 0 answers repeat")
            return
        note = (f"the same request at temperature 0 got different answers ({first[0]!r} vs {again[0]!r}): the server "
                "samples anyway, so scores from one answer are noisy; average more answers (--remote-answer-samples "
                "with --remote-answer-temperature > 0)")
        self.report.notes.append(note)
        log.warning("bbtune: %s", note)

    def lists(self, first: list[str]) -> None:
        try:
            together = [a[0] for a in self.target.complete(PROBE_TEXTS, self.greedy, size=2,
                                                           retries=LIST_PROBE_RETRIES)]
            if together != first:
                raise MalformedResponseError(f"a list of two prompts got {together}; one at a time got {first}")
        except (BackendError, CapabilityError) as err:
            self.target.batch_size_ = self.report.batch_size = 1
            self.report.notes.append(f"lists of prompts unusable ({str(err).splitlines()[0][:200]}); sending one "
                                     "prompt per request")
            return
        self.report.checks.append("lists match single prompts")

    def samples(self) -> None:
        """Two answers in one request (``n``); a refusal or a wrong count means one answer per request."""
        t = self.target
        gen = t.generation(self.cfg.answer_tokens, 2, self.cfg.answer_temperature, ("\n",))
        try:
            got = t.complete(PROBE_TEXTS[:1], gen, retries=LIST_PROBE_RETRIES)[0]
            if len(got) != 2:
                raise MalformedResponseError(f"asked n=2, got {len(got)} answers")
        except (BackendError, CapabilityError) as err:
            t.answers_per_request_ = 1
            self.report.notes.append(f"n answers in one request unusable ({str(err).splitlines()[0][:160]}); asking "
                                     "each answer in its own request (seeds 0, 1, ...)")
            return
        self.report.checks.append("n answers in one request")

    def sampled(self, sample: Sample) -> None:
        prompt, examples, fmt = sample
        examples = list(examples)[:PROBE_SAMPLE]
        cfg = self.cfg
        rules = cfg.answer_rules(fmt)
        answers = self.target.generate([prompt], examples, fmt, max_tokens=cfg.answer_tokens, n=cfg.answer_samples,
                                       temperature=cfg.answer_temperature)[0]
        flat = [a for row in answers for a in row]
        unparsed = [a for a in flat if rules.label(a) is None]
        share = len(unparsed) / len(flat)
        self.report.sample_unparsed_rate = share
        if share > cfg.max_unparsed:
            raise CapabilityError(unparsed_message(share, len(examples), unparsed, rules, cfg))
        self.report.checks.append(f"answers naming no label on the sample: {share:.0%}")


def unparsed_message(share: float, n: int, unparsed: Sequence[str], rules: Any, cfg: Any) -> str:
    """The refusal when too many answers name no label, with what they said and every fix."""
    said = ", ".join(repr(a[:40]) for a in list(dict.fromkeys(unparsed))[:4])
    words = "; ".join(f"{label}: {', '.join(ws)}" for label, ws in rules.words.items())
    return (f"{share:.0%} of the answers to the probe's sample of {n} examples name no label (allowed: "
            f"--remote-max-unparsed {cfg.max_unparsed:g}); they said {said}, and the labels' words are {words}. Fixes: "
            "add the words the model says with --remote-answer-synonyms LABEL=word|word; name the answer words in "
            "--remote-chat-instruction (with --remote-answer-endpoint chat); more --remote-answer-tokens; or a "
            "higher --remote-max-unparsed (unparsed answers score as missing labels)")


def bias_problem(plain: np.ndarray, biased: np.ndarray, tol: float) -> str:
    """Why biased label scores (B, L) cannot stand in for `plain` ones, or '' if they can: every label present,
    the labels' probability raised (the server applied the bias), and the differences between labels unchanged
    where `plain` has them all.

    >>> bias_problem(np.log([[0.2, 0.1]]), np.log([[0.6, 0.3]]), 1e-3)
    ''
    """
    if np.isnan(biased).any():
        return "labels are still missing with the bias (the server ignores logit_bias?)"
    if np.exp(biased).sum(axis=1).min() < 0.5:
        return "the labels' probability did not rise to the top (the server ignores or caps logit_bias)"
    full = ~np.isnan(plain).any(axis=1)
    moved = (biased - biased[:, :1]) - (plain - plain[:, :1])
    if full.any() and np.abs(moved[full]).max() > tol:
        return (f"it changes the differences between labels (by up to {np.abs(moved[full]).max():.4f}), "
                "so the server does not add it to the logits as OpenAI documents")
    return ""


def missing_message(missing: float, n: int, k: int, cfg: Any) -> str:
    """The refusal when too many label scores are missing, naming every fix."""
    chat = ("; in chat mode name the answer words with --remote-chat-instruction"
            if cfg.mode is ScoreMode.CHAT else "")
    return (f"{missing:.0%} of the label scores on the probe's sample of {n} examples are missing from the server's "
            f"top-{k} list (allowed: --remote-max-missing {cfg.max_missing:g}); a missing label cannot be ranked. "
            "Fixes: --remote-mode echo (exact scores, where the server supports echo); --remote-logit-bias auto "
            "(needs a server that honours logit_bias and --remote-local-model); label words the model says more "
            "readily (--verbalizer); a deeper --remote-top-k (vLLM: --max-logprobs); for label words of several "
            f"tokens, --remote-local-model (chained requests read each token){chat}")


def _agree(a: Any, b: Any, tol: float) -> bool:
    """Same log-prob (echo floats), or the same best tokens with the same values (top-k dicts)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, float) and isinstance(b, float) and abs(a - b) <= tol
    best = sorted(a, key=a.get, reverse=True)[:3]
    return all(k in b and abs(a[k] - b[k]) <= tol for k in best)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5f}"
    return "{" + ", ".join(f"{k!r}: {v:.4f}" for k, v in list(value.items())[:3]) + "}"
