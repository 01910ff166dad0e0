"""Where the search starts: ``p0=cue`` puts the prompt in place of the template's cue (the words before the
label), so z = 0 is exactly the manual prompt and every step is measured against it; ``p0=auto`` picks it where it
fits, else BBT's random words. (Errors name the config fields; the CLI shows them as flags.)"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from bbtune.core.prompts import HardPrompt
from bbtune.errors import ConfigError
from bbtune.runs.config import TuneConfig
from bbtune.search.subspace import ALPHA_FROM_CUE, P0Init, SubspaceConfig
from bbtune.tasks import Placement, Task


def resolve_p0(config: TuneConfig, task: Task, vocab: Any) -> P0Init:
    """``p0=auto``: start from the cue where the prompt can take its place, else from random words (BBT)."""
    if config.p0 is not P0Init.AUTO:
        return config.p0
    ids = cue_ids(task, vocab)[2]
    wanted = config.prompt_tokens  # an explicit length other than the cue's asks for BBT's random words
    fits = ids and wanted in (0, len(ids))
    return P0Init.CUE if fits and task.format.placement is Placement.SUFFIX else P0Init.VOCAB


def cue_ids(task: Task, vocab: Any) -> tuple[Any, str, tuple[int, ...]]:
    """The input template without its cue, the cue, and the cue's token ids."""
    template, cue = task.format.template.without_cue()
    return template, cue, tuple(vocab.tokenizer.encode(cue, add_special_tokens=False))


def start_from_cue(config: TuneConfig, task: Task,
                   vocab: Any) -> tuple[SubspaceConfig, tuple[int, ...], Task, HardPrompt]:
    """``p0=cue``: the search runs on the template without its cue and p0 is the cue's own words (the prompt has the
    cue's length). A longer `prompt_tokens` puts copies of the cue's first token (a newline in the presets) before
    it: more tokens to tune, from a start that reads as the manual prompt after blank lines. Returns the subspace's
    config, p0's token ids, the task without its cue and the manual prompt (the cue itself)."""
    if task.format.placement is not Placement.SUFFIX:
        raise ConfigError("p0=cue replaces the words before the label, so it needs placement=suffix")
    template, cue, ids = cue_ids(task, vocab)
    if not ids:
        raise ConfigError(f"template {task.format.template.pattern!r} has no cue words between the input and "
                          "{label} for p0=cue to start from; add some (e.g. '\nSentiment:') or use p0=vocab")
    length = config.prompt_tokens or len(ids)
    if length < len(ids):
        raise ConfigError(f"p0=cue makes the prompt the cue {cue!r}, {len(ids)} tokens; prompt_tokens={length} cannot "
                          f"hold it: leave prompt_tokens out, set it to {len(ids)} or more (the cue after copies of "
                          "its first token), or start from random words with p0=vocab")
    p0_ids = (ids[0],) * (length - len(ids)) + ids
    space = replace(config, p0=P0Init.TEXT, p0_text=cue, prompt_tokens=length, alpha=config.alpha or ALPHA_FROM_CUE)
    return space, p0_ids, task.with_template(template), HardPrompt(ids, cue)
