"""The AG News twin of sst2_bbt.py: BBT on AG News 16-shot (4 topics) against the manual prompt, same settings.

    python benchmarks/agnews_bbt.py --seeds 13 42 100 --test-limit 0
    bbtune sweep benchmarks/specs/agnews_bbt.toml   # seeds as parallel jobs (instead of a loop and --merge)
Prints a table and writes JSON (default benchmarks/results/agnews_bbt.json). Data: ../shared/data/agnews.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sst2_bbt import main  # noqa: E402

if __name__ == "__main__":
    main(data="agnews", preset="topic")
