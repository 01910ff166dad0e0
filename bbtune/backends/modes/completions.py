"""``top_logprobs``: ``/v1/completions`` with ``max_tokens=1, logprobs=k``; the label words' log-probs are read
from the top-k list of the next token."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from bbtune.backends import wire
from bbtune.backends.findings import Settings
from bbtune.backends.modes.base import TEXT_ONLY, Scorer, split
from bbtune.backends.modes.lists import ListStrategy
from bbtune.backends.wire import COMPLETIONS, Request, ScoreMode
from bbtune.errors import VerbalizerError
from bbtune.tasks import TaskFormat


def top_parser(part: Sequence[Any]) -> Any:
    """Reads a completions reply into one top-k dict per prompt of `part`."""
    return lambda reply: [wire.completion_top(c) for c in wire.choices(reply, len(part))]


def text_requests(model: str, k: int, texts: Sequence[str], tokens: Any, size: int,
                  bias: Mapping[int, float] | None = None) -> list[Request]:
    """Completions top-k requests for texts, `size` per request."""
    return split(texts, size, COMPLETIONS, lambda part: wire.top_logprob_body(model, part, k, bias), top_parser, tokens)


class TopLogprobsStrategy(ListStrategy):
    mode = ScoreMode.TOP_LOGPROBS
    use_instead = ("the server gives no next-token logprobs on /completions: use RemoteConfig.mode=chat "
                   f"(top_logprobs on chat completions) or a server that does (vLLM, llama.cpp); {TEXT_ONLY}")

    def requests(self, scorer: Scorer, settings: Settings, items: Sequence[Any], size: int | None = None,
                 bias: Mapping[int, float] | None = None) -> list[Request]:
        return text_requests(self.config.model, settings.top_k, items, scorer.count_tokens,
                             size or settings.batch_size, bias)

    def extend(self, scorer: Scorer, item: Any, prefix: Sequence[int], fmt: TaskFormat) -> Any:
        """As text: the prefix's decoding, which must start a label word exactly, or the server would see other
        tokens."""
        text = scorer.reference().tokenizer.decode(list(prefix))
        if not any(w.startswith(text) for w in fmt.verbalizer.values()):
            raise VerbalizerError(f"the tokens {list(prefix)} of a label word decode to {text!r}, which starts none of "
                                  f"the words {list(fmt.verbalizer.values())}; chained requests need tokens that decode "
                                  "to the word's own text: use RemoteConfig.mode=echo, or other words")
        return item + text
