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

import json
import warnings
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bbtune.core.prompts import SoftPrompt
from bbtune.errors import ConfigError
from bbtune.runs.folder import BEST_PROMPT, CONFIG, RunFolder, refuse_overwrite
from bbtune.tasks import Placement, TaskFormat

if TYPE_CHECKING:
    from bbtune.runs.load import TunedRun

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
    tensors = run.load_tensors(BEST_PROMPT)
    if "soft_prompt" not in tensors:
        raise ConfigError(f"{run.path} holds no soft prompt (a hard-mode run); its prompt is text: hard_prompt.json")
    from bbtune.runs.load import (
        saved_format,  # runs reads what tune wrote; export only needs the format from it
    )

    task = run.read_json(CONFIG).get("task")
    fmt = saved_format(task) if task else None
    return export_peft(SoftPrompt(tensors["soft_prompt"]), out_dir, model_config=model_config, base_model=base_model,
                       fmt=fmt)


READOUT_FILE = "bbtune_readout.json"  # the run's readout beside a PEFT adapter, which has no place for it


class ExportFormat(str, Enum):
    """What `bbtune export` writes."""

    PEFT = "peft"  # a PEFT prompt-tuning adapter folder (soft runs)
    TEXT = "text"  # the template with the hard prompt in place, ready to paste
    JSON = "json"  # template, prompt, verbalizer, placement, calibration and the run's accuracy


def export_format(name: str) -> ExportFormat:
    try:
        return ExportFormat(name)
    except ValueError:
        raise ConfigError(f"unknown export format {name!r}; use --format "
                          f"{', '.join(f.value for f in ExportFormat)}") from None


def run_summary(run: "TunedRun") -> dict[str, Any]:
    """What `--format json` writes: everything needed to use the prompt without bbtune."""
    m = run.metrics
    bias = None if run.label_bias is None else dict(zip(run.format.labels, map(float, run.label_bias)))
    return {"template": run.template_text(), "prompt": run.prompt_text, "placement": run.format.placement.value,
            "verbalizer": dict(run.format.verbalizer), "label_bias": bias, "mode": m.mode,
            "selected": m.selected, "backend": m.backend, "dev_acc": m.dev_acc,
            "test_acc": m.test_acc, "manual_test_acc": m.manual_test_acc,
            "readout": run.readout.as_json() if run.readout is not None else None}


def export(run_dir: str | Path, fmt: str, out: str | Path | None = None, *, overwrite: bool = False) -> str:
    """`bbtune export`: write the run's prompt as `fmt` to `out` (peft: a folder, default RUN_DIR/peft); returns
    the text (text/json) or a line naming the folder (peft). Existing files are replaced only with `overwrite`."""
    from bbtune.runs.load import load_run

    kind = export_format(fmt)
    run = load_run(run_dir)  # a missing or unfinished run folder fails here, whatever the format
    if kind is ExportFormat.PEFT:
        target = Path(out) if out else Path(run_dir) / "peft"
        refuse_overwrite([target / name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, BBTUNE_INFO, READOUT_FILE)],
                         overwrite)
        folder = export_run(run_dir, target, base_model=_base_model(run.config))
        line = f"PEFT adapter in {folder}/ (PeftModel.from_pretrained(base_model, '{folder}'))"
        if run.readout is None:
            return line
        (folder / READOUT_FILE).write_text(json.dumps(run.readout.as_json(), indent=1) + "\n", encoding="utf-8")
        return (f"{line}\nnote: a PEFT adapter carries the prompt only, not the run's readout "
                f"({run.readout.readout.kind.value}, which turns the model's answers into labels); it is written "
                f"beside it as {folder / READOUT_FILE} (load it with bbtune's load_run, or apply it yourself)")
    text = run.template_text() if kind is ExportFormat.TEXT else json.dumps(run_summary(run), indent=2,
                                                                              ensure_ascii=False)
    if out:
        refuse_overwrite([out], overwrite)
        check_parent(Path(out), "--out")
        Path(out).write_text(text + "\n", encoding="utf-8")
    return text


def check_parent(path: Path, flag: str) -> None:
    """An output file goes into a folder that exists (a typo must not create folders, nor end in a traceback)."""
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {path}: folder {path.parent} does not exist; create it, or give another path")


def _base_model(config: dict[str, Any]) -> str | None:
    return ((config.get("cli") or {}).get("backend") or {}).get("model")
