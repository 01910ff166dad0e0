"""``chat``: ``/v1/chat/completions`` with ``logprobs=true, top_logprobs=k``, one prompt per request; read like
``top_logprobs``, but a label matches its word in every spelling the model may answer with (`wire.label_variants`:
an instruct model answers ``Positive`` rather than the template's `` positive``). It reads only an answer's
first token, so it refuses label words of several tokens."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from bbtune.backends import wire
from bbtune.backends.findings import Settings
from bbtune.backends.labeltrie import LabelTrie
from bbtune.backends.modes.base import TEXT_ONLY, Scorer, split
from bbtune.backends.modes.lists import ListStrategy
from bbtune.backends.wire import CHAT, LabelKeys, Request, ScoreMode
from bbtune.errors import CapabilityError
from bbtune.tasks import TaskFormat


def chat_parser(part: Sequence[Any]) -> Any:
    return lambda reply: [wire.chat_top(wire.choices(reply, 1)[0])]


class ChatStrategy(ListStrategy):
    mode = ScoreMode.CHAT
    use_instead = f"the server gives no top_logprobs on /chat/completions: use RemoteConfig.mode=top_logprobs; {TEXT_ONLY}"
    max_top_k = 20
    missing_hint = "; in chat mode name the answer words with RemoteConfig.chat_instruction"

    @property
    def endpoint(self) -> str:
        return CHAT

    def requests(self, scorer: Scorer, settings: Settings, items: Sequence[Any], size: int | None = None,
                 bias: Mapping[int, float] | None = None) -> list[Request]:
        model, k = self.config.model, settings.top_k
        return split(items, 1, CHAT, lambda part: wire.chat_body(model, part[0], k, bias), chat_parser,
                     scorer.count_tokens)

    def extend(self, scorer: Scorer, item: Any, prefix: Sequence[int], fmt: TaskFormat) -> Any:
        raise AssertionError("chat mode never chains (`chain` refuses multi-token words)")

    def chain(self, trie: LabelTrie, fmt: TaskFormat) -> LabelTrie:
        long = [w for w, n in zip(fmt.verbalizer.values(), trie.lengths) if n > 1]
        raise CapabilityError(
            f"label words of several tokens ({long}) cannot be scored in chat mode, which reads only the first "
            "token of an answer; use RemoteConfig.mode=echo (exact, where the server supports echo) or "
            "RemoteConfig.mode=top_logprobs (chained requests, one per token), or single-token words")

    def label_keys(self, scorer: Scorer, fmt: TaskFormat) -> LabelKeys:
        """Every spelling of each word an answer may start with."""
        self.label_trie(scorer, fmt)  # refuses multi-token words
        return LabelKeys.chat(list(fmt.verbalizer.values()), scorer.tokenizer)
