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

Each mode's own checks (4, 5, 7, and text mode's whole probe) live with its strategy (`bbtune.backends.modes`);
this module runs the shared ones. The probe changes nothing on the backend: it tries settings of its own and
*returns* a `ProbeReport`, which the backend applies (`ProbeReport.applied`). Probe requests go through the cache
like any other.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Mapping

import numpy as np

from bbtune.backends.findings import ProbeReport, Settings
from bbtune.backends.modes.base import (LIST_PROBE_RETRIES, PROBE_TEXTS, REFUSALS, Sample, Scorer, ScoreStrategy, agree,
                                        show)
from bbtune.backends.modes.lists import ListStrategy
from bbtune.constants import DEEP_TOP_K_STEPS, PROBE_SAMPLE, TOP_K_STEPS
from bbtune.errors import (
    BackendError,
    BadRequestError,
    CapabilityError,
    MalformedResponseError,
    NotFoundError,
    ServerError,
)

log = logging.getLogger("bbtune")
__all__ = ["PROBE_TEXTS", "Prober", "bias_problem", "missing_message", "run_probe"]


def run_probe(scorer: Scorer, strategy: ScoreStrategy, settings: Settings, sample: Sample | None = None) -> ProbeReport:
    """Probe the server behind `scorer` in `strategy`'s mode from `settings` (see the module docstring)."""
    prober = Prober(scorer, strategy, ProbeReport.start(strategy.mode.value, settings), settings)
    models(scorer, prober.report)
    strategy.probe(prober, sample)
    return prober.report


def models(scorer: Scorer, report: ProbeReport) -> None:
    """``/models`` lists the model (a note if not: llama.cpp answers to any name)."""
    def parse(reply: dict[str, Any]) -> list[str]:
        data = reply.get("data")
        if not isinstance(data, list):
            raise MalformedResponseError("/models reply has no 'data' list")
        return [str(m.get("id")) for m in data if isinstance(m, Mapping)]

    try:
        report.models = scorer.get("/models", parse)
    except (NotFoundError, MalformedResponseError, BadRequestError) as err:
        report.notes.append(f"no usable /models ({type(err).__name__}); the model name is checked by the first request")
        return
    if scorer.config.model not in report.models:
        report.notes.append(f"model {scorer.config.model!r} is not in /models {report.models[:10]}; "
                            "some servers (llama.cpp) answer to any name")
    else:
        report.checks.append("model listed")


class Prober:
    """The shared checks, sent through the strategy's own request builders (so the probe tests what runs), with
    the settings found so far (`settings`, the probe's own: the backend's stay as they are)."""

    def __init__(self, scorer: Scorer, strategy: ScoreStrategy, report: ProbeReport, settings: Settings):
        self.scorer, self.strategy, self.report, self.settings = scorer, strategy, report, settings
        self.tol = scorer.config.probe_tolerance

    def found(self, **changes: Any) -> None:
        """A finding: the settings from now on, and the report, say it."""
        self.settings = replace(self.settings, **changes)
        for name, value in changes.items():
            setattr(self.report, name, value)

    def ask(self, which: list[int], salt: str = "", together: bool = False, retries: int | None = None) -> list[Any]:
        texts = [PROBE_TEXTS[i] for i in which]
        requests = self.strategy.probe_requests(self.scorer, self.settings, texts, len(texts) if together else 1)
        return self.scorer.send(requests, salt=salt, retries=retries)

    def first(self) -> Any:
        """The first request at the deepest top-k the server accepts (stepping down on a refusal); a refused
        feature says what to use instead."""
        asked = self.settings.top_k
        steps = self.strategy.probe_depths(asked, TOP_K_STEPS)
        for i, k in enumerate(steps):
            self.found(top_k=k)
            try:
                reply = self.ask([0], retries=0 if i + 1 < len(steps) else None)[0]
            except MalformedResponseError as err:
                raise CapabilityError(f"{err}\n  -> {self.strategy.use_instead}") from err
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
        if not agree(first, again, self.tol):
            raise CapabilityError(f"the same prompt asked twice got different log-probs ({show(first)} vs "
                                  f"{show(again)}); the server's scores are not reproducible (sampling on? batching "
                                  "noise?) and cannot be trusted")
        self.report.checks.append("repeatable")

    def lists(self, first: Any) -> None:
        """Two prompts in one request must give what two single requests give; any error (after a couple of
        retries), or a disagreement, means one prompt per request from now on."""
        try:
            together = self.ask([0, 1], together=True, retries=LIST_PROBE_RETRIES)
            second = self.ask([1])[0]
            if not (agree(together[0], first, self.tol) and agree(together[1], second, self.tol)):
                raise MalformedResponseError(f"a list of two prompts gave {show(together[0])}, {show(together[1])}; "
                                             f"one at a time gave {show(first)}, {show(second)}")
        except (BackendError, CapabilityError) as err:
            self.found(batch_size=1)
            note = f"lists of prompts unusable ({str(err).splitlines()[0][:200]}); sending one prompt per request"
            self.report.notes.append(note)
            log.warning("bbtune: %s", note)
            return
        self.report.checks.append("lists match single prompts")

    def sampled(self, sample: Sample) -> None:
        assert isinstance(self.strategy, ListStrategy), "only a mode that reads top-k lists can miss labels"
        Sampled(self, self.strategy, sample).run()


class Sampled:
    """Checks on a sample of the task itself: logit_bias, then the share of label scores missing."""

    def __init__(self, prober: Prober, strategy: ListStrategy, sample: Sample):
        self.prober, self.strategy, self.report, self.cfg = prober, strategy, prober.report, prober.scorer.config
        prompt, examples, self.fmt = sample
        self.prompt, self.examples = prompt, list(examples)[:PROBE_SAMPLE]

    def scores(self, bias: float, strict: bool = False) -> np.ndarray:
        p = self.prober
        return self.strategy.label_logprobs(p.scorer, p.settings, [self.prompt], self.examples, self.fmt, bias=bias,
                                            strict=strict)

    def n_label_tokens(self) -> int:
        return len(self.strategy.label_keys(self.prober.scorer, self.fmt).token_ids)

    def run(self) -> None:
        scores = self.scores(0.0)
        if self.cfg.bias:
            scores = self.try_bias(scores)
        if self.prober.settings.logit_bias == 0 and np.isnan(scores).mean() > self.cfg.max_missing:
            scores = self.deepen(scores)
            if self.cfg.bias and self.report.top_k > self.n_label_tokens():
                scores = self.try_bias(scores)  # a deeper list may now hold every label spelling
        missing = float(np.isnan(scores).mean())
        self.report.sample_missing_rate = missing
        if missing > self.cfg.max_missing:
            found = "".join(f"\n  probe: {note}" for note in self.report.notes)
            raise CapabilityError(missing_message(missing, len(self.examples), self.prober.settings.top_k, self.cfg,
                                                  self.strategy.missing_hint) + found)
        self.report.checks.append(f"labels missing on the sample: {missing:.0%}")

    def deepen(self, scores: np.ndarray) -> np.ndarray:
        """Too many labels missing and no logit_bias: ask the deepest top-k list (`DEEP_TOP_K_STEPS`) the server
        accepts (llama.cpp and vLLM with a high --max-logprobs do). Not just deep enough for the sample: the search
        moves to prompts that push label words further down (on llama-cpp-python, top-100 sufficed for the probe's
        sample while a run then missed 43% of its labels), so the run keeps the deepest list it can get."""
        for k in (k for k in DEEP_TOP_K_STEPS if k > self.prober.settings.top_k):
            before = self.prober.settings.top_k
            self.prober.found(top_k=k)
            try:
                deeper = self.scores(0.0)
            except (*REFUSALS, NotFoundError) as err:
                self.prober.found(top_k=before)
                self.report.notes.append(f"a top-{k} list was refused ({type(err).__name__}); keeping top-{before}")
                break
            self.report.notes.append(f"{np.isnan(scores).mean():.0%} of the sample's labels missing from the top-"
                                     f"{before}: asking top-{k} ({np.isnan(deeper).mean():.0%} missing)")
            scores = deeper
        return scores

    def try_bias(self, plain: np.ndarray) -> np.ndarray:
        """The biased scores if the server honours logit_bias (the backend then uses it), else `plain`."""
        n_tokens, k = self.n_label_tokens(), self.prober.settings.top_k
        if not n_tokens:
            self.report.notes.append("logit_bias not used: it needs the label token ids (set RemoteConfig.local_model)")
            return plain
        if n_tokens > k:  # biased, they fill the list in their own order: a label could still fall off its end
            self.report.notes.append(f"logit_bias not used: the labels have {n_tokens} tokens (spellings) and a "
                                     f"top-{k} list cannot hold them all; ask RemoteConfig.top_k {n_tokens} or more")
            return plain
        bias = self.cfg.bias
        try:
            biased = self.scores(bias)
        except (*REFUSALS, NotFoundError) as err:
            self.report.notes.append(f"logit_bias not used: the server refused it ({str(err).splitlines()[0][:160]})")
            return plain
        # compared where the unbiased list holds every spelling of every label (else its sums are partial)
        problem = bias_problem(self.scores(0.0, strict=True), biased, max(self.cfg.probe_tolerance, 2e-3))
        if problem:
            self.report.notes.append(f"logit_bias not used: {problem}")
            return plain
        self.prober.found(logit_bias=bias)
        self.report.checks.append("logit_bias keeps label differences")
        return biased


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


def missing_message(missing: float, n: int, k: int, cfg: Any, hint: str = "") -> str:
    """The refusal when too many label scores are missing, naming every fix (and the mode's own `hint`)."""
    return (f"{missing:.0%} of the label scores on the probe's sample of {n} examples are missing from the server's "
            f"top-{k} list (allowed: RemoteConfig.max_missing {cfg.max_missing:g}); a missing label cannot be ranked. "
            "Fixes: RemoteConfig.mode=echo (exact scores, where the server supports echo); RemoteConfig.logit_bias=auto "
            "(needs a server that honours logit bias and RemoteConfig.local_model); label words the model says more "
            "readily (TaskConfig.verbalizer); a deeper RemoteConfig.top_k (vLLM: --max-logprobs); for label words of several "
            f"tokens, RemoteConfig.local_model (chained requests read each token){hint}")
