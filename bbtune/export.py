"""Soft prompts in the PEFT library's prompt-tuning layout, so a user loads them with
``PeftModel.from_pretrained(base_model, folder)`` and needs no bbtune at inference time.

    folder/
      adapter_config.json          PEFT's PromptTuningConfig (peft_type PROMPT_TUNING, num_virtual_tokens, token_dim)
      adapter_model.safetensors    {"prompt_embeddings": (num_virtual_tokens, token_dim) float32}, PEFT's key
      bbtune_prompt.json           how the prompt was tuned: template, verbalizer, placement

PEFT always puts the virtual tokens first, before everything the tokenizer produces: that is bbtune's
``prefix`` placement for a tokenizer that adds no BOS (SmolLM2, GPT-2, Llama-3 chat templates aside). A prompt
tuned with ``suffix`` placement still loads, but PEFT will use it in another position; `export_peft` warns.
Writing the files needs no PEFT install; only loading them does.

    >>> # export_peft(result.best, "peft_prompt", model_config=backend.model.config, fmt=task.format)
    >>> # PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(...), "peft_prompt")
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .prompts import SoftPrompt
from .results import RunFolder
from .tasks import Placement, TaskFormat, Template

ADAPTER_CONFIG, ADAPTER_WEIGHTS, BBTUNE_INFO = "adapter_config.json", "adapter_model.safetensors", "bbtune_prompt.json"
PEFT_TASK_TYPES = ("CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")


def peft_adapter_config(prompt: SoftPrompt, *, model_config: Any = None, base_model: str | None = None,
                        task_type: str = "CAUSAL_LM") -> dict[str, Any]:
    """The fields of PEFT's `PromptTuningConfig.to_dict()` for this prompt; layers/heads left None are filled in by
    PEFT from the base model's config when it loads the adapter."""
    if task_type not in PEFT_TASK_TYPES:
        raise ConfigError(f"task_type {task_type!r} is not a PEFT task type; use one of {list(PEFT_TASK_TYPES)}")
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return {
        "peft_type": "PROMPT_TUNING", "task_type": task_type, "auto_mapping": None,
        "base_model_name_or_path": base_model, "revision": None, "inference_mode": True,
        "num_virtual_tokens": prompt.n_tokens, "token_dim": int(prompt.embeds.shape[1]),
        "num_transformer_submodules": 1,
        "num_attention_heads": getattr(text_config, "num_attention_heads", None),
        "num_layers": getattr(text_config, "num_hidden_layers", None),
        "modules_to_save": None, "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None, "tokenizer_kwargs": None,
    }


def export_peft(prompt: SoftPrompt, out_dir: str | Path, *, model_config: Any = None, base_model: str | None = None,
                fmt: TaskFormat | None = None, task_type: str = "CAUSAL_LM") -> Path:
    """Write `prompt` as a PEFT prompt-tuning adapter in `out_dir`; returns the folder.

    `model_config` (the base model's `config`) fills PEFT's layer and head counts; `fmt` records the template,
    verbalizer and placement the prompt was tuned with, which PEFT itself has no place for.
    """
    if not isinstance(prompt, SoftPrompt):
        raise ConfigError(f"only soft prompts export to PEFT; got {type(prompt).__name__} (a hard prompt is its text)")
    folder = RunFolder(out_dir)
    folder.write_json(ADAPTER_CONFIG, peft_adapter_config(prompt, model_config=model_config, base_model=base_model,
                                                          task_type=task_type))
    folder.save_tensors(ADAPTER_WEIGHTS, {"prompt_embeddings": prompt.embeds})
    if fmt is not None:
        if fmt.placement is not Placement.PREFIX:
            warnings.warn(f"this prompt was tuned with {fmt.placement.value} placement, but PEFT prepends virtual "
                          "tokens to the input; tune with placement='prefix' to use it through PEFT", stacklevel=2)
        folder.write_json(BBTUNE_INFO, {"template": fmt.template.pattern, "verbalizer": dict(fmt.verbalizer),
                                        "placement": fmt.placement.value, "n_tokens": prompt.n_tokens})
    return folder.path


def export_run(run_dir: str | Path, out_dir: str | Path, *, model_config: Any = None,
               base_model: str | None = None) -> Path:
    """Export the soft prompt of a finished `tune()` run folder (soft mode) as a PEFT adapter."""
    run = RunFolder(run_dir)
    tensors = run.load_tensors("best_prompt.safetensors")
    if "soft_prompt" not in tensors:
        raise ConfigError(f"{run.path} holds no soft prompt (a hard-mode run); its prompt is text: hard_prompt.json")
    task = run.read_json("config.json").get("task")
    fmt = TaskFormat(Template(task["template"]), task["verbalizer"], task["placement"]) if task else None
    return export_peft(SoftPrompt(tensors["soft_prompt"]), out_dir, model_config=model_config, base_model=base_model,
                       fmt=fmt)
