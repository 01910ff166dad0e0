"""Baselines BBT is measured against, all on the same task objects and returning the same `MethodResult`.

- `manual`: the template alone, zero-shot.
- `incontext`: k demonstrations per class before the input.
- `prompt_tuning`: soft prompt tuning with gradients (Lester et al.); needs a `LocalBackend`.
- `pez`: hard prompt discovery by projected gradients (Wen et al.); needs a `LocalBackend`.
- `bbt`: BBT soft / discretized / hard and random search, through the tuner.
"""
from bbtune.baselines.incontext import InContextConfig, run_in_context
from bbtune.baselines.manual import run_manual
from bbtune.baselines.pez import PEZConfig, run_pez
from bbtune.baselines.prompt_tuning import PromptTuningConfig, run_prompt_tuning
from bbtune.baselines.record import Measurement, MethodResult, Meter

__all__ = [
    "InContextConfig", "Measurement", "MethodResult", "Meter", "PEZConfig", "PromptTuningConfig",
    "run_in_context", "run_manual", "run_pez", "run_prompt_tuning",
]
