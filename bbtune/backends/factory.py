"""Build a backend from its config, so the CLI, compare and resume share one recipe."""
from __future__ import annotations

from dataclasses import dataclass, field

from bbtune.core.options import documented
from bbtune.constants import DEFAULT_KV_CACHE_MB, DEFAULT_MEMORY_BUDGET_MB, EMBEDDED_MODEL
from bbtune.errors import ConfigError
from bbtune.backends.base import Backend


@documented
@dataclass(frozen=True)
class LocalConfig:
    """A local transformers model (the CLI's model flags)."""

    model: str = field(default=EMBEDDED_MODEL, metadata={"help": "smollm2 (embedded), tiny, a HF folder or a .gguf file"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, or auto (cuda when present)"})
    dtype: str = field(default="auto", metadata={"help": "float32, bfloat16, float16, or auto (bf16 on cuda, fp32 on cpu)"})
    memory_budget_mb: float = field(default=DEFAULT_MEMORY_BUDGET_MB, metadata={"help": "bytes one forward batch may use"})
    kv_cache_mb: float = field(default=DEFAULT_KV_CACHE_MB, metadata={"help": "size of the input KV cache"})
    max_input_tokens: int = field(default=0, metadata={"help": "truncate inputs to this many tokens (0 = error on overflow)"})

    def __post_init__(self) -> None:
        if self.memory_budget_mb <= 0:
            raise ConfigError(f"memory_budget_mb must be > 0, got {self.memory_budget_mb}")

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device='cuda' but torch sees no GPU; use device='cpu' or 'auto'")
        return self.device

    def build(self) -> Backend:
        from bbtune.backends.local import LocalBackend

        device = self.resolved_device()
        dtype = self.dtype if self.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
        return LocalBackend(self.model, device=device, dtype=dtype, memory_budget_mb=self.memory_budget_mb,
                            kv_cache_mb=self.kv_cache_mb, max_input_tokens=self.max_input_tokens or None)


def transfer_backend(local: LocalConfig, model: str = "", url: str = "", served_model: str = "tiny") -> Backend | None:
    """A second backend to score prompts on: another local `model` on `local`'s device, or the OpenAI-compatible
    server at `url` serving `served_model` (the model wins if both are given); None when neither is."""
    if model:
        from dataclasses import replace

        return replace(local, model=model).build()
    if url:
        from bbtune.backends.remote import RemoteConfig

        return RemoteConfig(base_url=url, model=served_model).build()
    return None
