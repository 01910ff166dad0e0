"""The committed generalization matrix (`benchmarks/results/matrix.json`: 4 tasks x 2 models x 3 seeds x
9 methods) in MLflow, as a sweep: one parent run with a child per row, tagged task, model, seed and method, so the
matrix can be browsed and its methods compared in `mlflow ui` (the sweep folders themselves are not committed;
`bbtune track SWEEP_DIR` logs a sweep folder with its curves and files).

    python benchmarks/track_matrix.py --track-uri sqlite:///runs/mlruns/mlflow.db
    mlflow ui --backend-store-uri sqlite:///runs/mlruns/mlflow.db      # group the runs by the tag `method`
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from task_args import ROOT

from bbtune.runs.tracking import make_tracker, numbers

MATRIX = ROOT / "benchmarks" / "results" / "matrix.json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--matrix", default=str(MATRIX))
    ap.add_argument("--track-uri", default="", help="MLflow tracking URI (default: sqlite mlruns/mlflow.db here)")
    args = ap.parse_args(argv)
    tracker = make_tracker("mlflow", args.track_uri, Path.cwd())
    assert tracker is not None
    rows = json.loads(Path(args.matrix).read_text())["rows"]
    parent = tracker.open(f"{MATRIX}#matrix", "sweep matrix", {"bbtune.kind": "sweep", "sweep": "matrix"})
    for row in rows:
        name = f"{row['task']}-{row['model']}-{row['method']}-s{row['seed']}"
        tags = {k: str(row[k]) for k in ("task", "model", "seed", "method")}
        run = tracker.open(f"{MATRIX}#{name}", name, tags, parent)
        if not run.complete:
            run.log_summary(numbers({"test_acc": row["test_acc"], "wall_s": row.get("wall_s")}), 0)
            run.finish("FINISHED")
    parent.finish("FINISHED")
    print(f"{len(rows)} rows in {tracker}; see them with: {tracker.ui}")


if __name__ == "__main__":
    main()
