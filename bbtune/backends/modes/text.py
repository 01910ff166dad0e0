"""``text``: no log-probs at all (hosted chat APIs that return only text). ``/v1/chat/completions`` (or
``/v1/completions``, `RemoteConfig.answer_endpoint`) asks for answers (`wire.Generation`: ``max_tokens``, ``n``,
``temperature``, ``stop``); each input's answers are mapped to labels by rules (`bbtune.tasks.answers`) and a
label's score is the log of its smoothed share of the answers.

The probe (`TextProbe`): the server answers text; the same request at temperature 0 gets the same answer (else a
note: the scores are noisy, average more answers); a list of two prompts answers like two requests (else one
prompt per request); ``n`` answers in one request (else repeated requests); and on the task's sample, the share
of answers naming no label (the run stops above ``max_unparsed``, naming the fixes).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from bbtune.backends.findings import Settings
from bbtune.backends.modes.base import LIST_PROBE_RETRIES, PROBE_TEXTS, ProbeContext, Sample, Scorer, ScoreStrategy, Tops
from bbtune.backends.wire import CHAT, COMPLETIONS, Request, ScoreMode
from bbtune.constants import PROBE_SAMPLE
from bbtune.core.prompts import Prompt
from bbtune.errors import BackendError, CapabilityError, MalformedResponseError
from bbtune.tasks import Example, TaskFormat
from bbtune.tasks.answers import AnswerRules, AnswerScores, answer_scores

log = logging.getLogger("bbtune")


class TextStrategy(ScoreStrategy):
    mode = ScoreMode.TEXT
    logprobs = False
    feature_words = ()
    use_instead = ("the server does not answer this text request: try RemoteConfig.answer_endpoint completions (or "
                   "chat), or check the model name and the server's API")

    @property
    def endpoint(self) -> str:
        return CHAT if self.config.answer_endpoint == "chat" else COMPLETIONS

    def answer_scores(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt],
                      examples: Sequence[Example], fmt: TaskFormat, salt: str = "") -> AnswerScores:
        """(P, B, L) log smoothed shares of the answers naming each label (NaN where every answer named none),
        with the answers' counts."""
        cfg = self.config
        answers = self.generate(scorer, settings, prompts, examples, fmt, max_tokens=cfg.answer_tokens,
                                n=cfg.answer_samples, temperature=cfg.answer_temperature, salt=salt)
        return answer_scores(answers, fmt.labels, cfg.answer_rules(fmt), cfg.answer_smoothing)

    def score(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt], examples: Sequence[Example],
              fmt: TaskFormat) -> np.ndarray:
        found = self.answer_scores(scorer, settings, prompts, examples, fmt)
        scorer.stats.count_answers(found.answers, found.unparsed)
        return found.scores

    def label_logprobs(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt],
                       examples: Sequence[Example], fmt: TaskFormat, *, bias: float = 0.0, salt: str = "",
                       strict: bool = False, answer_tops: Tops | None = None) -> np.ndarray:
        raise CapabilityError(f"backend {scorer.name} returns no log-probs in text mode (its answers are text); use "
                              "RemoteConfig.mode=chat, top_logprobs, echo or prompt_embeds")

    def require_topk(self, name: str) -> None:
        raise CapabilityError(f"backend {name} returns no top-k log-probs in text mode (its answers are text); use "
                              "RemoteConfig.mode=chat, top_logprobs, echo or prompt_embeds")

    def collect_topk(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt],
                     examples: Sequence[Example], fmt: TaskFormat, depth: int) -> tuple[np.ndarray, Tops]:
        self.require_topk(scorer.name)
        raise AssertionError("unreachable")

    def probe_requests(self, scorer: Scorer, settings: Settings, texts: Sequence[str], size: int) -> list[Request]:
        raise AssertionError("the text probe asks answers (`TextProbe`)")

    def probe(self, ctx: ProbeContext, sample: Sample | None) -> None:
        TextProbe(self, ctx).run(sample)

    def sends(self, topk: bool) -> int:
        """Priced as if the server refused ``n``: one request, and its prompt tokens, per answer (the most)."""
        return self.config.answer_samples

    def completion_tokens(self) -> int:
        return self.config.answer_tokens


class TextProbe:
    """Text mode's checks (see the module docstring); its findings go to the probe's report and settings."""

    def __init__(self, strategy: TextStrategy, ctx: ProbeContext):
        self.strategy, self.ctx, self.cfg = strategy, ctx, strategy.config
        self.greedy = strategy.generation(ctx.settings, self.cfg.answer_tokens, 1, 0.0, ("\n",))

    def complete(self, texts: Sequence[str], gen: Any, **kw: Any) -> list[list[str]]:
        return self.strategy.complete(self.ctx.scorer, self.ctx.settings, texts, gen, **kw)

    def run(self, sample: Sample | None) -> None:
        report = self.ctx.report
        first = self.answers()
        report.checks.append("answers text")
        self.repeats(first)
        if self.ctx.settings.batch_size > 1:
            self.lists(first)
        if self.cfg.answer_samples > 1:
            self.samples()
        report.answers_per_request = min(self.ctx.settings.answers_per_request, self.cfg.answer_samples)
        if sample is not None:
            self.sampled(sample)

    def answers(self, salt: str = "") -> list[str]:
        try:
            return [a[0] for a in self.complete(PROBE_TEXTS, self.greedy, salt=salt, size=1)]
        except MalformedResponseError as err:
            raise CapabilityError(f"{err}\n  -> {self.strategy.use_instead}") from err

    def repeats(self, first: list[str]) -> None:
        again = self.answers(salt="probe-repeat")
        if again == first:
            self.ctx.report.checks.append("temperature 0 answers repeat")
            return
        note = (f"the same request at temperature 0 got different answers ({first[0]!r} vs {again[0]!r}): the server "
                "samples anyway, so scores from one answer are noisy; average more answers (RemoteConfig.answer_samples "
                "with RemoteConfig.answer_temperature > 0)")
        self.ctx.report.notes.append(note)
        log.warning("bbtune: %s", note)

    def lists(self, first: list[str]) -> None:
        try:
            together = [a[0] for a in self.complete(PROBE_TEXTS, self.greedy, size=2, retries=LIST_PROBE_RETRIES)]
            if together != first:
                raise MalformedResponseError(f"a list of two prompts got {together}; one at a time got {first}")
        except (BackendError, CapabilityError) as err:
            self.ctx.settings = replace(self.ctx.settings, batch_size=1)
            self.ctx.report.batch_size = 1
            self.ctx.report.notes.append(f"lists of prompts unusable ({str(err).splitlines()[0][:200]}); sending one "
                                         "prompt per request")
            return
        self.ctx.report.checks.append("lists match single prompts")

    def samples(self) -> None:
        """Two answers in one request (``n``); a refusal or a wrong count means one answer per request."""
        gen = self.strategy.generation(self.ctx.settings, self.cfg.answer_tokens, 2, self.cfg.answer_temperature,
                                       ("\n",))
        try:
            got = self.complete(PROBE_TEXTS[:1], gen, retries=LIST_PROBE_RETRIES)[0]
            if len(got) != 2:
                raise MalformedResponseError(f"asked n=2, got {len(got)} answers")
        except (BackendError, CapabilityError) as err:
            self.ctx.settings = replace(self.ctx.settings, answers_per_request=1)
            self.ctx.report.n_refused = True
            self.ctx.report.notes.append(f"n answers in one request unusable ({str(err).splitlines()[0][:160]}); "
                                         "asking each answer in its own request (seeds 0, 1, ...)")
            return
        self.ctx.report.checks.append("n answers in one request")

    def sampled(self, sample: Sample) -> None:
        prompt, examples, fmt = sample
        examples = list(examples)[:PROBE_SAMPLE]
        cfg = self.cfg
        rules = cfg.answer_rules(fmt)
        answers = self.strategy.generate(self.ctx.scorer, self.ctx.settings, [prompt], examples, fmt,
                                         max_tokens=cfg.answer_tokens, n=cfg.answer_samples,
                                         temperature=cfg.answer_temperature)[0]
        flat = [a for row in answers for a in row]
        unparsed = [a for a in flat if rules.label(a) is None]
        share = len(unparsed) / len(flat)
        self.ctx.report.sample_unparsed_rate = share
        if share > cfg.max_unparsed:
            raise CapabilityError(unparsed_message(share, len(examples), unparsed, rules, cfg))
        self.ctx.report.checks.append(f"answers naming no label on the sample: {share:.0%}")


def unparsed_message(share: float, n: int, unparsed: Sequence[str], rules: AnswerRules, cfg: Any) -> str:
    """The refusal when too many answers name no label, with what they said and every fix."""
    said = ", ".join(repr(a[:40]) for a in list(dict.fromkeys(unparsed))[:4])
    words = "; ".join(f"{label}: {', '.join(ws)}" for label, ws in rules.words.items())
    return (f"{share:.0%} of the answers to the probe's sample of {n} examples name no label (allowed: "
            f"RemoteConfig.max_unparsed {cfg.max_unparsed:g}); they said {said}, and the labels' words are {words}. Fixes: "
            "add the words the model says with RemoteConfig.answer_synonyms LABEL=word|word; name the answer words in "
            "RemoteConfig.chat_instruction (with RemoteConfig.answer_endpoint chat); more RemoteConfig.answer_tokens; or a "
            "higher RemoteConfig.max_unparsed (unparsed answers score as missing labels)")
