"""``echo``: ``/v1/completions`` with ``prompt + label word``, ``echo=true``: the label word's own log-prob (the sum
over its tokens), exact, one text per label word. Its top-k at the answer position comes from the same requests
asking ``logprobs=k`` (`wire.echo_answer_top`): a row's top-k is what its words' lists share."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from bbtune.backends import wire
from bbtune.backends.findings import Settings
from bbtune.backends.modes.base import PROBE_TEXTS, REFUSALS, TEXT_ONLY, ProbeContext, Scorer, ScoreStrategy, Tops, split
from bbtune.backends.modes.completions import text_requests
from bbtune.backends.wire import COMPLETIONS, Request, ScoreMode
from bbtune.core.prompts import Prompt
from bbtune.errors import CapabilityError, MalformedResponseError, NotFoundError
from bbtune.tasks import Example, TaskFormat

Pair = tuple[str, str]  # (text ending in the word, the word)


class EchoStrategy(ScoreStrategy):
    mode = ScoreMode.ECHO
    feature_words = ("echo", "logprobs")
    use_instead = ("the server does not return the prompt's log-probs with echo (llama.cpp ignores echo, "
                   f"gpt-3.5-turbo-instruct refuses echo with logprobs): use RemoteConfig.mode=top_logprobs; {TEXT_ONLY}")

    def requests(self, scorer: Scorer, settings: Settings, pairs: Sequence[Pair], size: int | None = None,
                 top_k: int = 0) -> list[Request]:
        """Echo requests for (text, word) pairs; each parses to the word's log-prob, or with `top_k` (asked per
        position) to (that log-prob, the top-k at the word's first token)."""
        def parse(part: Sequence[Pair]) -> Any:
            read = wire.echo_answer_top if top_k else wire.echo_label_logprob
            return lambda reply: [read(c, t, w) for c, (t, w) in zip(wire.choices(reply, len(part)), part)]

        return split(pairs, size or settings.batch_size, COMPLETIONS,
                     lambda part: wire.echo_body(self.config.model, [t for t, _ in part], top_k or 1), parse,
                     lambda pair: scorer.count_tokens(pair[0]))

    def pairs(self, scorer: Scorer, prompts: Sequence[Prompt], examples: Sequence[Example], fmt: TaskFormat,
              words: Sequence[Sequence[str]] | None = None) -> list[Pair]:
        """Every row's text with each of its words appended (`words`: per example; default the label words)."""
        texts = self.texts(scorer.name, prompts, examples, fmt)
        per_row = [words[i % len(examples)] for i in range(len(texts))] if words else [fmt.verbalizer.values()] * len(texts)
        return [(t + w, w) for t, ws in zip(texts, per_row) for w in ws]

    def label_logprobs(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt],
                       examples: Sequence[Example], fmt: TaskFormat, *, bias: float = 0.0, salt: str = "",
                       strict: bool = False, answer_tops: Tops | None = None) -> np.ndarray:
        """Exact, so never missing and never biased."""
        assert answer_tops is None, "echo reads its top-k with the words (collect_topk)"
        sent = scorer.send(self.requests(scorer, settings, self.pairs(scorer, prompts, examples, fmt)))
        return np.array(sent, dtype=np.float64).reshape(len(prompts) * len(examples), len(fmt.verbalizer))

    def collect_topk(self, scorer: Scorer, settings: Settings, prompts: Sequence[Prompt],
                     examples: Sequence[Example], fmt: TaskFormat, depth: int) -> tuple[np.ndarray, Tops]:
        n = len(fmt.verbalizer)
        got = scorer.send(self.requests(scorer, settings, self.pairs(scorer, prompts, examples, fmt), top_k=depth))
        rows = [got[i: i + n] for i in range(0, len(got), n)]
        scores = np.array([[lp for lp, _ in row] for row in rows], dtype=np.float64)
        return scores, [shared_entries([top for _, top in row]) for row in rows]

    def continuation_logprobs(self, scorer: Scorer, prompts: Sequence[Prompt], examples: Sequence[Example],
                              fmt: TaskFormat, continuations: Sequence[Sequence[str]]) -> np.ndarray:
        """Any strings per row: every (row, string) in one concurrent send."""
        settings = scorer.after_probe(None)
        sent = scorer.send(self.requests(scorer, settings, self.pairs(scorer, prompts, examples, fmt, continuations)))
        return np.array(sent, dtype=np.float64).reshape(len(prompts), len(examples), -1)

    # ------------------------------------------------------------------ the probe and the price

    def probe_item(self, scorer: Scorer, text: str) -> Pair:
        """The text's own last token plays the label word."""
        tok = scorer.tokenizer
        word = tok.decode(tok(text, add_special_tokens=False)["input_ids"][-1:]) if tok is not None else " about"
        return (text if text.endswith(word) else text + word), word

    def probe_requests(self, scorer: Scorer, settings: Settings, texts: Sequence[str], size: int) -> list[Request]:
        return self.requests(scorer, settings, [self.probe_item(scorer, t) for t in texts], size)

    def probe_depths(self, asked: int, steps: Sequence[int]) -> list[int]:
        return [asked]  # echo asks logprobs=1 whatever top_k says

    def probe(self, ctx: ProbeContext, sample: Any) -> None:
        """Echo's scores are exact: the task's sample has nothing to add (no bias, nothing missing)."""
        super().probe(ctx, None)

    def cross_check(self, ctx: ProbeContext, first: Any) -> None:
        EchoCheck(self, ctx).run(first)

    def priced_groups(self, rows: Sequence[int], label_seqs: Sequence[Sequence[int]]) -> list[list[int]]:
        """Each text once per label word, the word appended, all in one list of requests."""
        return [[n + len(seq) for n in rows for seq in label_seqs]]


class EchoCheck:
    """Echoed log-probs must agree with the top-k list of the same position (asked without echo): a token in the
    list has its value there, a token absent from it cannot score above the list's last (k-th) value. Checked on
    the probe text's own last word and on the best word of that position, which is in the list by construction: a
    misaligned echo cannot hide behind a word outside the top-k."""

    def __init__(self, strategy: EchoStrategy, ctx: ProbeContext):
        self.strategy, self.ctx, self.scorer = strategy, ctx, ctx.scorer

    def run(self, echoed: float) -> None:
        text, word = self.strategy.probe_item(self.scorer, PROBE_TEXTS[0])
        context = text[: -len(word)]
        try:
            top = self.scorer.send(text_requests(self.strategy.config.model, self.ctx.settings.top_k, [context],
                                                 self.scorer.count_tokens, 1), retries=0)[0]
        except (*REFUSALS, NotFoundError) as err:
            self.ctx.report.notes.append(f"echo not cross-checked: top-k of the same position refused ({type(err).__name__})")
            return
        if not top:
            self.ctx.report.notes.append("echo not cross-checked: the top-k of the same position is empty")
            return
        checked: list[tuple[str, float | None]] = [(word, echoed)]
        best = self.single_token_word(context, top)
        if best is not None and best != word:
            checked.append((best, self.echo(context + best, best)))
        for w, value in checked:
            self.agrees(w, value, top)
        self.ctx.report.checks.append("echo matches top-k")

    def single_token_word(self, context: str, top: Mapping[str, float]) -> str | None:
        """The most likely word of `top` that stays one token after `context` (else the echo cannot isolate it)."""
        tok = self.scorer.tokenizer
        for w in sorted(top, key=top.__getitem__, reverse=True)[:5]:
            if not w.strip():
                continue
            if tok is None:
                return w
            ids = tok(context + w, add_special_tokens=False)["input_ids"]
            if ids[:-1] == tok(context, add_special_tokens=False)["input_ids"] and tok.decode(ids[-1:]) == w:
                return w
        return None

    def echo(self, text: str, word: str) -> float | None:
        try:
            return float(self.scorer.send(self.strategy.requests(self.scorer, self.ctx.settings, [(text, word)], 1))[0])
        except MalformedResponseError as err:  # e.g. the server merged the word with the text: not a verdict
            self.ctx.report.notes.append(f"echo of the best word not checked ({str(err).splitlines()[0][:120]})")
            return None

    def agrees(self, word: str, echoed: float | None, top: Mapping[str, float]) -> None:
        if echoed is None:
            return
        tol = max(self.ctx.tol, 1e-3)
        if word in top:
            if abs(top[word] - echoed) <= tol:
                return
            seen = f"the top-k of the same position gives {top[word]:.4f}"
        else:
            kth = min(top.values())
            if echoed <= kth + tol:
                return
            seen = (f"it is not in the top-{self.ctx.settings.top_k} of the same position, whose last value is "
                    f"{kth:.4f}: an absent token cannot score higher")
        raise CapabilityError(
            f"echo gave {word!r} the log-prob {echoed:.4f}, but {seen}; the server's echoed log-probs are "
            "misaligned (another position's scores?) and cannot be trusted; use RemoteConfig.mode=top_logprobs")


def shared_entries(tops: Sequence[dict[str, float]]) -> dict[str, float]:
    """The tokens every list holds (the first list's values): lists of one position that differ only by the token
    each request echoed there.

    >>> shared_entries([{" a": -0.1, " x": -5.0}, {" a": -0.1, " y": -6.0}])
    {' a': -0.1}
    """
    if len(tops) < 2:
        return dict(tops[0]) if tops else {}
    return {t: v for t, v in tops[0].items() if all(t in other for other in tops[1:])}
