"""``prompt_embeds``: ``/v1/completions`` with ``prompt_embeds`` (vLLM's encoding: base64 of a ``torch.save``d
float tensor of shape (seq_len, hidden)); read like ``top_logprobs``. Soft prompts go over the wire this way."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from bbtune.backends import wire
from bbtune.backends.findings import Settings
from bbtune.backends.modes.base import PROBE_TEXTS, REFUSALS, ProbeContext, Scorer, agree, show, split
from bbtune.backends.modes.completions import TopLogprobsStrategy, text_requests, top_parser
from bbtune.backends.wire import COMPLETIONS, Request, ScoreMode
from bbtune.constants import PROMPT_TOKEN_MARGIN
from bbtune.core.prompts import Prompt
from bbtune.errors import APIConnectionError, CapabilityError, NotFoundError
from bbtune.tasks import Example, TaskFormat


class PromptEmbedsStrategy(TopLogprobsStrategy):
    mode = ScoreMode.PROMPT_EMBEDS
    soft = True
    feature_words = ("prompt_embeds", "prompt-embeds", "embeds")
    use_instead = ("the server does not accept prompt_embeds (start vLLM with --enable-prompt-embeds), "
                   "or tune hard prompts with RemoteConfig.mode=top_logprobs or echo")

    def requests(self, scorer: Scorer, settings: Settings, items: Sequence[Any], size: int | None = None,
                 bias: Mapping[int, float] | None = None) -> list[Request]:
        model, k = self.config.model, settings.top_k
        return split(items, size or settings.batch_size, COMPLETIONS,
                     lambda part: wire.embeds_body(model, [wire.encode_embeds(e) for e in part], k, bias), top_parser,
                     lambda e: int(e.shape[0]) + PROMPT_TOKEN_MARGIN)

    def inputs(self, scorer: Scorer, prompts: Sequence[Prompt], examples: Sequence[Example],
               fmt: TaskFormat) -> list[Any]:
        return scorer.reference().input_embeds(prompts, examples, fmt)

    def extend(self, scorer: Scorer, item: Any, prefix: Sequence[int], fmt: TaskFormat) -> Any:
        return torch.cat([item, scorer.reference().embed_text_ids(list(prefix))])

    def probe_item(self, scorer: Scorer, text: str) -> Any:
        tok = scorer.tokenizer
        assert tok is not None, "prompt_embeds needs the local model, which brings its tokenizer"
        return scorer.reference().embed_text_ids(tok(text, add_special_tokens=True)["input_ids"])

    def late_check(self, ctx: ProbeContext, first: Any) -> None:
        """``prompt_embeds`` of a text give what the text itself gives (the server reads our encoding right)."""
        scorer, settings = ctx.scorer, ctx.settings
        try:
            as_text = scorer.send(text_requests(self.config.model, settings.top_k, [PROBE_TEXTS[0]],
                                                scorer.count_tokens, settings.batch_size))[0]
        except (*REFUSALS, NotFoundError, APIConnectionError) as err:
            ctx.report.notes.append(f"could not compare prompt_embeds with text ({type(err).__name__})")
            return
        if not agree(first, as_text, max(ctx.tol, 1e-3)):
            raise CapabilityError(
                f"prompt_embeds of a text gave {show(first)} but the text itself gave {show(as_text)}: the server "
                "reads the embeddings differently (another model, dtype, or special tokens?)")
        ctx.report.checks.append("prompt_embeds match text")
