"""Before a run trusts a server's numbers: what it supports, and whether its answers are consistent.

Servers differ (lists of prompts, echo, logprobs depth, prompt_embeds) and some answer wrongly instead of
refusing (llama.cpp ignores ``echo``; a server may cap top-k silently or batch lists differently). The probe
sends a handful of requests in the run's mode and checks:

1. ``/models`` lists the model (a note if not: llama.cpp answers to any name);
2. the mode's feature works; a refusal becomes a `CapabilityError` that names the mode to use instead
   (a top-k deeper than the server allows falls back to 5, OpenAI's limit);
3. the same prompt twice gives the same log-probs (within ``probe_tolerance``);
4. a top-k list is a distribution: sorted, log-probs <= 0, probabilities summing to at most 1;
5. a list of two prompts gives what the two single requests give; if not (or lists are refused), the run
   falls back to one prompt per request;
6. ``prompt_embeds`` of a text give what the text itself gives (the server reads our encoding right).

Probe requests go through the cache like any other, so a rerun with the cache probes for free.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..constants import DEFAULT_TOP_K
from ..errors import BadRequestError, CapabilityError, MalformedResponseError, NotFoundError
from .wire import ScoreMode

if TYPE_CHECKING:
    from .remote import ProbeReport, RemoteBackend

PROBE_TEXTS = ("The film was great and the acting was wonderful. It was", "The market fell today. This news is about")

USE_INSTEAD = {
    ScoreMode.TOP_LOGPROBS: "the server gives no next-token logprobs on /completions: use mode='chat' "
                            "(top_logprobs on chat completions) or a server that does (vLLM, llama.cpp)",
    ScoreMode.CHAT: "the server gives no top_logprobs on /chat/completions: use mode='top_logprobs'",
    ScoreMode.ECHO: "the server does not return the prompt's log-probs with echo (llama.cpp ignores echo, "
                    "gpt-3.5-turbo-instruct refuses echo with logprobs): use mode='top_logprobs'",
    ScoreMode.PROMPT_EMBEDS: "the server does not accept prompt_embeds (start vLLM with --enable-prompt-embeds), "
                             "or tune hard prompts with mode='top_logprobs' or 'echo'",
}
_FEATURE_WORDS = {
    ScoreMode.TOP_LOGPROBS: ("logprobs",),
    ScoreMode.CHAT: ("logprobs",),
    ScoreMode.ECHO: ("echo", "logprobs"),
    ScoreMode.PROMPT_EMBEDS: ("prompt_embeds", "prompt-embeds", "embeds"),
}


def explain(err: BaseException, mode: ScoreMode) -> BaseException:
    """A refusal of the mode's feature (400 naming it, 404 on its endpoint) as a `CapabilityError` that says
    which mode to use instead; any other error unchanged."""
    text = str(err).lower()
    refused = isinstance(err, BadRequestError) and any(w in text for w in _FEATURE_WORDS[mode])
    if refused or (isinstance(err, NotFoundError) and getattr(err, "missing_endpoint", False)):
        return CapabilityError(f"{err}\n  -> {USE_INSTEAD[mode]}")
    return err


def run_probe(backend: "RemoteBackend") -> "ProbeReport":
    from .remote import ProbeReport

    cfg = backend.config
    report = ProbeReport(mode=cfg.mode.value, top_k=backend.top_k_, batch_size=backend.batch_size_)
    _models(backend, report)
    probe = _Probe(backend, report)
    first = probe.first()
    probe.repeatable(first)
    if cfg.mode is not ScoreMode.ECHO:
        _distribution(first, report, cfg.probe_tolerance)
    if cfg.mode.takes_lists and backend.batch_size_ > 1:
        probe.lists(first)
    if cfg.mode is ScoreMode.PROMPT_EMBEDS:
        probe.embeds_match_text(first)
    return report


def _models(backend: "RemoteBackend", report: "ProbeReport") -> None:
    def parse(reply: dict[str, Any]) -> list[str]:
        data = reply.get("data")
        if not isinstance(data, list):
            raise MalformedResponseError("/models reply has no 'data' list")
        return [str(m.get("id")) for m in data if isinstance(m, Mapping)]

    try:
        report.models = backend._loop.run(backend._client().call("/models", None, parse, method="GET"))
    except (NotFoundError, MalformedResponseError, BadRequestError) as err:
        report.notes.append(f"no usable /models ({type(err).__name__}); the model name is checked by the first request")
        return
    if backend.config.model not in report.models:
        report.notes.append(f"model {backend.config.model!r} is not in /models {report.models[:10]}; "
                            "some servers (llama.cpp) answer to any name")
    else:
        report.checks.append("model listed")


def _distribution(top: Mapping[str, float], report: "ProbeReport", tol: float) -> None:
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
                            "missing labels are bounded by the last one returned")
    report.checks.append("top-k is a sorted distribution")


class _Probe:
    """The probe's requests, built by the backend's own request builders (so the probe tests what runs)."""

    def __init__(self, backend: "RemoteBackend", report: "ProbeReport"):
        self.backend, self.report = backend, report
        self.mode, self.tol = backend.config.mode, backend.config.probe_tolerance
        self.items = [self._item(t) for t in PROBE_TEXTS]

    def _item(self, text: str) -> Any:
        tok = self.backend.tokenizer
        if self.mode is ScoreMode.PROMPT_EMBEDS:
            ids = tok(text, add_special_tokens=True)["input_ids"]
            with torch.inference_mode():
                return self.backend._reference()._embed_ids(list(ids)).float()
        if self.mode is ScoreMode.ECHO:  # the text's own last token plays the label word
            word = tok.decode(tok(text, add_special_tokens=False)["input_ids"][-1:]) if tok is not None else " about"
            return (text if text.endswith(word) else text + word), word
        return text

    def _batches(self, items: list[Any], size: int) -> list[Any]:
        b, mode = self.backend, self.mode
        if mode is ScoreMode.PROMPT_EMBEDS:
            return b._embeds_items(items, size)
        if mode is ScoreMode.ECHO:
            return b._echo_items(items, size)
        return b._text_items(list(items), size)

    def ask(self, which: list[int], salt: str = "", together: bool = False) -> list[Any]:
        items = [self.items[i] for i in which]
        batches = self._batches(items, len(items) if together else 1)
        return self.backend._run(batches, salt=salt)

    def first(self) -> Any:
        """The first request; a too-deep top-k falls back to 5, a refused feature says what to use instead."""
        try:
            return self.ask([0])[0]
        except CapabilityError as err:
            if self.backend.top_k_ <= DEFAULT_TOP_K or "logprobs" not in str(err):
                raise
            self.report.notes.append(f"the server refused top_k={self.backend.top_k_}; using {DEFAULT_TOP_K}")
            self.backend.top_k_ = self.report.top_k = DEFAULT_TOP_K
            return self.ask([0])[0]
        except MalformedResponseError as err:
            raise CapabilityError(f"{err}\n  -> {USE_INSTEAD[self.mode]}") from err

    def repeatable(self, first: Any) -> None:
        """The same prompt asked again (a separate request, also in the cache) must give the same numbers."""
        again = self.ask([0], salt="probe-repeat")[0]
        if not _agree(first, again, self.tol):
            raise CapabilityError(f"the same prompt asked twice got different log-probs ({_show(first)} vs "
                                  f"{_show(again)}); the server's scores are not reproducible (sampling on? batching "
                                  "noise?) and cannot be trusted")
        self.report.checks.append("repeatable")

    def lists(self, first: Any) -> None:
        """Two prompts in one request must give what two single requests give; else one prompt per request."""
        try:
            together = self.ask([0, 1], together=True)
            second = self.ask([1])[0]
            if not (_agree(together[0], first, self.tol) and _agree(together[1], second, self.tol)):
                raise MalformedResponseError(f"a list of two prompts gave {_show(together[0])}, {_show(together[1])}; "
                                             f"one at a time gave {_show(first)}, {_show(second)}")
        except (BadRequestError, MalformedResponseError, CapabilityError) as err:
            self.backend.batch_size_ = self.report.batch_size = 1
            self.report.notes.append(f"lists of prompts unusable ({str(err).splitlines()[0][:200]}); "
                                     "sending one prompt per request")
            return
        self.report.checks.append("lists match single prompts")

    def embeds_match_text(self, first: Any) -> None:
        b = self.backend
        try:
            as_text = b._run(b._text_items([PROBE_TEXTS[0]], 1))[0]
        except (BadRequestError, MalformedResponseError, CapabilityError) as err:
            self.report.notes.append(f"could not compare prompt_embeds with text ({type(err).__name__})")
            return
        if not _agree(first, as_text, max(self.tol, 1e-3)):
            raise CapabilityError(
                f"prompt_embeds of a text gave {_show(first)} but the text itself gave {_show(as_text)}: the server "
                "reads the embeddings differently (another model, dtype, or special tokens?)")
        self.report.checks.append("prompt_embeds match text")


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
