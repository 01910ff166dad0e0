"""One object per way of asking a server for scores (`ScoreMode`): each builds its requests, reads its replies and
prices itself, and `RemoteBackend`, the probe (`bbtune.backends.probe`) and the dry run (`bbtune.app.dryrun`) all
use the same object instead of branching on the mode.

| mode | strategy | requests per row | reads |
|---|---|---|---|
| top_logprobs | `TopLogprobsStrategy` | one per step of the label words' trie, `batch_size` rows a request | the next token's top-k |
| prompt_embeds | `PromptEmbedsStrategy` | as top_logprobs, the rows as input embeddings (soft prompts) | as top_logprobs |
| chat | `ChatStrategy` | one, alone (/chat/completions) | the answer's first token's top-k, every spelling |
| echo | `EchoStrategy` | one per label word, the word appended | the word's own log-prob, exact |
| text | `TextStrategy` | ``answer_samples`` answers (``n`` where the server takes it) | answers parsed to labels |

Which server supports which mode:

| mode | OpenAI | vLLM | llama-cpp-python server | mock |
|---|---|---|---|---|
| top_logprobs (bounded) | completion models, k <= 5 | yes, k <= --max-logprobs | yes, any k; lists -> HTTP 500 | yes |
| chat (bounded) | yes, k <= 20 | yes | yes, any k | yes |
| echo (exact) | base models only; gpt-3.5-turbo-instruct refuses | yes | no: log-probs shifted by one | yes |
| prompt_embeds (soft; bounded) | no | with --enable-prompt-embeds | no | yes |
| logit_bias in the log-probs | (the probe decides) | (the probe decides) | no: sampling only | yes |
| text (answers parsed to labels) | yes | yes | yes | yes (also with --no-logprobs) |

    >>> STRATEGIES[ScoreMode.CHAT].max_top_k
    20
"""
from __future__ import annotations

from typing import Any

from bbtune.backends.modes.base import BatchPrice, ScoreStrategy, Scorer
from bbtune.backends.modes.chat import ChatStrategy
from bbtune.backends.modes.completions import TopLogprobsStrategy
from bbtune.backends.modes.echo import EchoStrategy
from bbtune.backends.modes.embeds import PromptEmbedsStrategy
from bbtune.backends.modes.text import TextStrategy
from bbtune.backends.wire import ScoreMode

STRATEGIES: dict[ScoreMode, type[ScoreStrategy]] = {
    ScoreMode.TOP_LOGPROBS: TopLogprobsStrategy, ScoreMode.PROMPT_EMBEDS: PromptEmbedsStrategy,
    ScoreMode.CHAT: ChatStrategy, ScoreMode.ECHO: EchoStrategy, ScoreMode.TEXT: TextStrategy}


def strategy_for(config: Any) -> ScoreStrategy:
    """The strategy of `config.mode` (a `RemoteConfig`), holding the config."""
    return STRATEGIES[ScoreMode(config.mode)](config)


__all__ = ["STRATEGIES", "BatchPrice", "ChatStrategy", "EchoStrategy", "PromptEmbedsStrategy", "ScoreStrategy",
           "Scorer", "TextStrategy", "TopLogprobsStrategy", "strategy_for"]
