"""vLLM's ``prompt_embeds`` format, read the way vLLM's server reads it, written from vLLM's documentation and
server (`vllm/renderers/embed_utils.py: safe_load_prompt_embeds`, vLLM 0.32) and not imported from bbtune's
client: a mistake in bbtune's codec (`bbtune.backends.wire.encode_embeds`) must fail here too, not pass on
both sides.

The format (docs/features/prompt_embeds.md): base64 of a ``torch.save``d tensor of shape
(sequence_length, hidden_size), as vLLM's examples make it (``torch.save(t, buf); base64.b64encode(...)``,
or ``vllm.utils.serial_utils.tensor2base64``). The server then:

- decodes strict base64 (``validate=True``) and ``torch.load``s with ``weights_only=True`` on the CPU;
- densifies a sparse tensor, refusing one whose dense size is over a memory budget;
- squeezes a leading dimension of 1 from a tensor of more than 2 dimensions, and wants 2 after that;
- wants the model's hidden size, and casts any floating-point dtype to the model's (not integers or bools).
"""
from __future__ import annotations

import base64
import binascii
import io

import torch

# vLLM's VLLM_MAX_EMBED_DECODE_BYTES guards the same thing: a few bytes of sparse tensor that declare GiBs
MAX_DENSE_BYTES = 256 * 2**20


class EmbedsError(ValueError):
    """A ``prompt_embeds`` entry vLLM would answer with HTTP 400."""


def load_prompt_embeds(data: str | bytes, hidden_size: int, dtype: torch.dtype = torch.float32,
                       max_dense_bytes: int = MAX_DENSE_BYTES) -> torch.Tensor:
    """One ``prompt_embeds`` entry as the model's (seq_len, hidden_size) input, or `EmbedsError`."""
    try:
        payload = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError) as err:
        raise EmbedsError(f"`prompt_embeds` is not base64: {err}") from None
    try:
        with torch.sparse.check_sparse_tensor_invariants():  # a sparse tensor's indices are checked on load
            tensor = torch.load(io.BytesIO(payload), weights_only=True, map_location=torch.device("cpu"))
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - torch has no one error type for "not a tensor file"
        raise EmbedsError(f"`prompt_embeds` could not be deserialized as a torch tensor: {str(err)[:200]}") from None
    if not isinstance(tensor, torch.Tensor):
        raise EmbedsError("`prompt_embeds` payload did not deserialize to a torch.Tensor.")
    if tensor.numel() * tensor.element_size() > max_dense_bytes:
        raise EmbedsError(f"`prompt_embeds` would take {tensor.numel() * tensor.element_size()} bytes dense; "
                          f"at most {max_dense_bytes}.")
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    if tensor.dim() > 2:
        tensor = tensor.squeeze(0)
    if tensor.dim() != 2:
        raise EmbedsError("`prompt_embeds` must be a 2D tensor of shape (num_tokens, hidden_size); "
                          f"got shape {tuple(tensor.shape)}.")
    if tensor.shape[1] != hidden_size:
        raise EmbedsError(f"`prompt_embeds` hidden_size {tensor.shape[1]} does not match the model's hidden_size "
                          f"{hidden_size}.")
    if not tensor.is_floating_point():
        raise EmbedsError(f"`prompt_embeds` dtype {tensor.dtype} is not a floating-point type, cannot safely cast "
                          f"to the model's dtype {dtype}.")
    return tensor.detach().to(dtype)
