"""BBT soft through vLLM against the same run on the local model: the run folders' curves side by
side, generation by generation, with requests, wall time and the ledger's word on what was paid.

The runs are ordinary CLI runs (same task, seed and budget; only the backend differs), made first:

    bbtune tune --data ../shared/data/sst2 --preset sst2 --k 16 --test-limit 200 --mode soft \\
        --backend remote --remote-base-url http://127.0.0.1:8000/v1 --remote-model smollm2 \\
        --remote-mode prompt_embeds --remote-local-model smollm2 --run-dir runs/sst2-vllm
    bbtune tune --data ../shared/data/sst2 --preset sst2 --k 16 --test-limit 200 --mode soft --run-dir runs/sst2-local
    python benchmarks/vllm_bbt.py sst2=runs/sst2-vllm:runs/sst2-local [trec=...] --out benchmarks/results/vllm_bbt.json

A run whose server was killed and restarted mid-run (then ``--resume``) is compared the same way: its ledger
shows whether a request was paid twice.
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CURVE_COLUMNS = ("train_loss", "best_train_loss", "dev_loss")
METRICS = ("calls", "generations", "best_train_loss", "dev_acc", "test_acc", "test_n", "manual_test_acc", "wall_s",
           "selected")
STATS = ("requests", "retries", "failovers", "cache_hits", "missing_rate", "prompt_tokens", "server_seconds")


def curve(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "curve.csv") as f:
        return list(csv.DictReader(f))


def curve_gaps(remote: Path, local: Path) -> dict[str, Any]:
    """Per logged generation, |remote - local| of each loss column both runs logged; the largest of each."""
    there, here = curve(remote), curve(local)
    if [r["calls"] for r in there] != [r["calls"] for r in here]:
        raise ValueError(f"{remote} and {local} logged different generations: not the same run")
    rows, worst = [], dict.fromkeys(CURVE_COLUMNS, 0.0)
    for a, b in zip(there, here):
        row: dict[str, Any] = {"generation": int(a["generation"]), "calls": int(a["calls"])}
        for col in CURVE_COLUMNS:
            if a.get(col) and b.get(col):
                row[f"{col} vllm"], row[f"{col} local"] = float(a[col]), float(b[col])
                row[f"{col} gap"] = abs(float(a[col]) - float(b[col]))
                worst[col] = max(worst[col], row[f"{col} gap"])
        rows.append(row)
    return {"max gap": worst, "generations": rows}


def ledger(run_dir: Path) -> dict[str, Any]:
    """Requests booked and paid in the run's write-ahead ledger; a request number paid twice would show here."""
    booked: Counter[int] = Counter()
    paid: Counter[int] = Counter()
    for line in (run_dir / "ledger.jsonl").read_text().splitlines():
        entry = json.loads(line)
        (booked if "book" in entry else paid)[entry["n"]] += 1
    return {"booked": sum(booked.values()), "paid": sum(paid.values()), "paid twice": sum(c > 1 for c in paid.values()),
            "booked, never paid": len(set(booked) - set(paid))}


def summary(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = {k: metrics.get(k) for k in METRICS}
    stats = metrics.get("backend_stats") or {}
    out.update({k: stats[k] for k in STATS if k in stats})
    return out


def compare(remote: Path, local: Path) -> dict[str, Any]:
    return {"vllm": summary(remote), "local": summary(local), "ledger": ledger(remote), **curve_gaps(remote, local)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", help="NAME=VLLM_RUN_DIR:LOCAL_RUN_DIR")
    ap.add_argument("--note", action="append", default=[], help="NAME=text kept beside the numbers (how it was run)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vllm_bbt.json"))
    args = ap.parse_args(argv)
    notes = dict(n.split("=", 1) for n in args.note)
    # the tasks not compared this time are kept: one task's pair can be measured again alone
    out: dict[str, Any] = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    for pair in args.pairs:
        name, dirs = pair.split("=", 1)
        remote, local = (Path(d) for d in dirs.split(":"))
        out[name] = {"note": notes.get(name, ""), **compare(remote, local)}
        gaps = out[name]["max gap"]
        print(f"{name}: max |loss gap| " + ", ".join(f"{k} {v:.2e}" for k, v in gaps.items())
              + f"; vllm {out[name]['vllm']}; local {out[name]['local']}; ledger {out[name]['ledger']}")
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
