"""Hub models, read from the local Hugging Face cache (``--model ORG/NAME``, ``$HF_HUB_CACHE``): bbtune never
downloads; a model that is not cached fails with a message that says how to get it.
"""
from __future__ import annotations

import os
from pathlib import Path

from bbtune.errors import ConfigError
from bbtune.tasks.hf import offline

def is_hub_name(ref: str) -> bool:
    """'org/name' that is not a path on disk."""
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not Path(ref).exists() and not ref.startswith((".", "~"))


def cached_model_dir(repo_id: str) -> Path:
    """The local snapshot folder of a Hub model, or a `ConfigError` saying how to get it there."""
    offline()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        # the cache folder is read at call time, so $HF_HUB_CACHE set after import is honoured
        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=os.environ.get("HF_HUB_CACHE")))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as err:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ConfigError(
            f"model {repo_id!r} is not in the local Hugging Face cache ({os.environ.get('HF_HUB_CACHE', HF_HUB_CACHE)})"
            " and bbtune never "
            f"downloads; run `huggingface-cli download {repo_id}` where there is internet (same HF_HUB_CACHE), "
            "or pass the model's folder as LocalConfig.model") from err
