"""An on-disk cache of server replies, keyed by the exact request, so reruns and resumed runs pay nothing twice.

The key hashes the endpoint set, the path, the JSON body and the non-secret headers: headers that carry
credentials (Authorization, api-key, cookies, ...) never enter the key or the files. One JSON file per
request under ``<root>/<key[:2]>/<key>.json``, written to a temporary file and renamed, so a crash or a
second process never leaves a half-written entry. Only replies that parsed are stored.

    >>> cache = ResponseCache(tmp_path)                                    # doctest: +SKIP
    >>> key = request_key("http://h/v1", "/completions", {"prompt": "a"})
    >>> cache.put(key, {"choices": []}); cache.get(key)                     # doctest: +SKIP
    {'choices': []}
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from bbtune.core.secrets import is_secret_name

def request_key(namespace: str, path: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None,
                salt: str = "") -> str:
    """sha256 of the request as sent, minus credentials. `salt` tells apart deliberate repeats (the probe)."""
    kept = {k.lower(): v for k, v in (headers or {}).items() if not is_secret_name(k)}
    blob = json.dumps({"ns": namespace, "path": path, "body": body, "headers": kept, "salt": salt},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """Replies by request key; a missing or unreadable file is a miss."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def _file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with self._file(key).open(encoding="utf-8") as f:
                value = json.load(f)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, reply: Mapping[str, Any]) -> None:
        target = self._file(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(reply, f)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json"))
