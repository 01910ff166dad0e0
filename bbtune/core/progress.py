"""One progress bar for every loop a user waits on (tuning calls, compare runs, predict batches).

tqdm is imported only when a bar is shown, and ``disable=`` gives a bar that does nothing, so callers never
branch on whether progress is on.
"""
from __future__ import annotations

from typing import Any


def progress_bar(total: int, unit: str, *, initial: int = 0, desc: str = "bbtune", enabled: bool = True) -> Any:
    """A tqdm bar over `total` `unit`s (or a silent one): ``update(n)``, ``set_postfix(...)``, ``close()``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, disable=not enabled)
