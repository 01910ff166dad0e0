"""The generalization matrix from a finished (or partial) sweep of `benchmarks/specs/matrix.toml`:
one row per task, model, seed and method with its test accuracy, the gain of each method over the calibrated
manual prompt per cell, and the goal checks.

    bbtune sweep benchmarks/specs/matrix.toml            # the runs (hours on 2 CPU cores; minutes on a GPU)
    python benchmarks/matrix.py sweeps/matrix            # benchmarks/results/matrix.json, matrix.md, matrix.png
Several sweep folders may be given (e.g. one sweep per seed, run one after another): their jobs are pooled, a
job found in two folders counted once (the first folder's). Rows can also come from an earlier matrix.json
(`--rows`: sweep folders are not committed) and from the selection study's test columns (`--selection`, see
`benchmarks/selection.py --test-limit`: the manual prompt raw and calibrated, BBT soft as the default returns it,
and `bbt_soft_paired`, its pick behind the paired guard; where `benchmarks/demos_lever.py` augmented the study, also
`in_context_train` and `bbt_soft_or_demos`). Later sources win a duplicate's accuracy: selection studies, then
sweep folders, then earlier rows; a wall time the winner lacks is kept.
Prints the Markdown tables (accuracy; wall time per job) and writes the three files. Cells missing from a
partial sweep are left out and listed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from readouts import rows_to_matrix
from task_args import ROOT

from bbtune.app.sweep import read_job
from bbtune.core.numbers import mean_std
from bbtune.core.table import markdown_table

BASELINE = "manual_calibrated"
ORDER = ("manual", "manual_calibrated", "in_context_calibrated", "in_context_train", "bbt_soft", "bbt_soft_paired",
         "bbt_soft_or_demos", "bbt_hard", "prompt_tuning")
OUT = ROOT / "benchmarks" / "results"
SPEC = ROOT / "benchmarks" / "specs" / "matrix.toml"


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per finished job: its grid coordinates, test accuracy (in points) and wall time."""
    rows = []
    for folder in sorted((sweep_dir / "jobs").iterdir()):
        result = read_job(folder)
        if result is None or result.test_acc is None:
            continue
        coords = json.loads((folder / "job.json").read_text())["coords"]
        rows.append({"task": coords["task"], "model": coords["model"], "seed": int(coords["seed"]),
                     "method": coords["method"], "test_acc": 100 * result.test_acc, "wall_s": result.cost.wall_s})
    return rows


SELECTION_METHODS = {"manual": "manual", "manual_calibrated": "manual_calibrated", "dev_acc+agree": "bbt_soft",
                     "dev_acc+paired": "bbt_soft_paired", "demos": "in_context_train",
                     "default|demos": "bbt_soft_or_demos"}  # selection.py's test columns -> matrix methods (the
# default run returns dev_acc's pick behind the agree guard; demos_lever.py adds the two last)


def from_selection(path: Path) -> list[dict[str, Any]]:
    """Matrix rows from a selection study's runs that scored the test set (the same search as a sweep's bbt_soft
    job at the defaults; BBT soft's wall time is its search alone, without scoring test)."""
    from selection import GUARD_ALPHA, with_guards  # beside this script

    rows = []
    for run in (with_guards(r, GUARD_ALPHA) for r in json.loads(path.read_text())["runs"]):
        for column, method in SELECTION_METHODS.items():
            if column in run.get("test_acc", {}):
                wall = run.get("search_wall_s") if method == "bbt_soft" else None  # runs before it was timed: None
                rows.append({"task": run["data"], "model": Path(run["model"]).name, "seed": int(run["seed"]),
                             "method": method, "test_acc": 100 * run["test_acc"][column], "wall_s": wall})
    return rows


def _matrix_row(row: dict[str, Any]) -> dict[str, Any]:
    """A readouts row as the matrix keeps it: coordinates, accuracy, calls and the chosen readout (not the whole
    out-of-fold evidence, which stays in the readouts file)."""
    keep = ("task", "model", "seed", "method", "test_acc", "wall_s", "top_k", "calls_per_run", "requests_per_run",
            "calls_per_input", "readout")
    return {k: row[k] for k in keep if k in row}


def gains(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each method's gain over the calibrated manual prompt on the same task, model and seed."""
    base = {(r["task"], r["model"], r["seed"]): r["test_acc"] for r in rows if r["method"] == BASELINE}
    return [{**r, "gain": r["test_acc"] - base[(r["task"], r["model"], r["seed"])]} for r in rows
            if r["method"] != BASELINE and (r["task"], r["model"], r["seed"]) in base]


def wall_table(rows: Sequence[dict[str, Any]]) -> str:
    """Task x model rows; per method the mean wall time of one job (one seed) in minutes, and their sum (one seed
    of every method timed there: methods may be timed on different seeds)."""
    rows = [r for r in rows if r["wall_s"] is not None]  # a selection study times BBT soft's search alone
    methods = [m for m in ORDER if any(r["method"] == m for r in rows)]
    out = []
    for task, model in dict.fromkeys((r["task"], r["model"]) for r in rows):
        line: dict[str, Any] = {"task": task, "model": model}
        means = []
        for method in methods:
            walls = [r["wall_s"] for r in rows if (r["task"], r["model"], r["method"]) == (task, model, method)]
            means += [statistics.fmean(walls) / 60] if walls else []
            line[method] = f"{means[-1]:.1f}" if walls else "-"
        line["all methods, one seed"] = f"{sum(means):.1f}"
        out.append(line)
    return markdown_table(out, ["task", "model", *methods, "all methods, one seed"])


def missing(rows: Sequence[dict[str, Any]], grid: dict[str, Any]) -> list[str]:
    """The cells of the matrix's grid (its sweep spec's `[grid]`) that have no row yet, as task-model-method-sSEED."""
    done = {(r["task"], r["model"], r["seed"], r["method"]) for r in rows}
    return [f"{t['name']}-{m}-{me}-s{s}" for t in grid["tasks"] for m in grid["models"] for s in grid["seeds"]
            for me in grid["methods"] if (t["name"], m, s, me) not in done]


def not_measured(left: Sequence[str]) -> str:
    """The missing cells in one line, counted per method (matrix.json lists them all)."""
    per_method = Counter(name.rsplit("-s", 1)[0].rsplit("-", 1)[-1] for name in left)
    return (f"Cells of the grid not measured yet: {len(left)}" +
            (f" ({', '.join(f'{m} {n}' for m, n in per_method.items())}; listed in matrix.json)" if left else ""))


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Task x model rows; per method the mean test accuracy over seeds and, for tuned methods, the mean gain."""
    present = {r["method"] for r in rows}
    methods = [m for m in ORDER if m in present] + sorted(present - set(ORDER))
    by_gain = {(g["task"], g["model"], g["method"], g["seed"]): g["gain"] for g in gains(rows)}
    out = []
    for task, model in dict.fromkeys((r["task"], r["model"]) for r in rows):
        line: dict[str, Any] = {"task": task, "model": model}
        for method in methods:
            accs = [r["test_acc"] for r in rows if (r["task"], r["model"], r["method"]) == (task, model, method)]
            if not accs:
                line[method] = "-"
                continue
            mean, _ = mean_std(accs)
            seed_gains = [v for (t, m, me, _), v in by_gain.items() if (t, m, me) == (task, model, method)]
            line[method] = f"{mean:.1f}" + (f" ({statistics.fmean(seed_gains):+.1f})" if seed_gains else "")
        out.append(line)
    return markdown_table(out, ["task", "model", *methods])


def goals(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[bool, str]]:
    """The matrix's goals over the cells present: safety (every cell >= max(manual, calibrated) - 1), mean gain
    >= 3, and BBT soft at least prompt tuning and calibrated in-context learning in 6 of 8 task x model pairs."""
    acc = {(r["task"], r["model"], r["seed"], r["method"]): r["test_acc"] for r in rows}
    cells = sorted({k[:3] for k in acc})
    safe = [c for c in cells if (*c, "bbt_soft") in acc and (*c, "manual") in acc and (*c, BASELINE) in acc]
    worst = min((acc[(*c, "bbt_soft")] - max(acc[(*c, "manual")], acc[(*c, BASELINE)]) for c in safe), default=None)
    soft_gains = [g["gain"] for g in gains(rows) if g["method"] == "bbt_soft"]
    pairs = sorted({c[:2] for c in cells})

    def beats(other: str) -> str:
        """Pairs where BBT soft's mean over the seeds both methods finished is at least the other's; counted over
        the pairs where both have a seed (a partial sweep has fewer than 8), the rest said."""
        both = {(t, m): [c[2] for c in cells if c[:2] == (t, m) and (t, m, c[2], "bbt_soft") in acc
                         and (t, m, c[2], other) in acc] for t, m in pairs}
        both = {pair: seeds for pair, seeds in both.items() if seeds}
        won = sum(statistics.fmean(acc[(t, m, s, "bbt_soft")] for s in seeds) >=
                  statistics.fmean(acc[(t, m, s, other)] for s in seeds) for (t, m), seeds in both.items())
        return f"{won} of {len(both)} pairs with both (of 8)"

    return {
        **hosted_api_goals(rows, acc, cells),
        "safety: every cell >= max(manual, calibrated) - 1.0": (worst is not None and worst >= -1.0,
                                                               f"worst {worst:+.1f}" if worst is not None else "-"),
        "gain: mean over cells >= calibrated manual + 3.0": (bool(soft_gains) and statistics.fmean(soft_gains) >= 3.0,
                                                             f"mean {statistics.fmean(soft_gains):+.1f}" if soft_gains else "-"),
        "BBT soft >= prompt tuning": (False, beats("prompt_tuning")),
        "BBT soft >= calibrated in-context (contextual)": (False, beats("in_context_calibrated")),
        "BBT soft >= calibrated in-context (bias fitted on train)": (False, beats("in_context_train")),
    }


# A readout of the top-20 an API returns; with the label words lifted by a second request where they fall below it
# (logit_bias: OpenAI honours it, vLLM does not); with 95 more tokens lifted (5 requests more per input); and the
# searched text prompt read the same two ways; the template showing 2 demonstrations per class, read with 95 lifted.
HOSTED = ("manual_readout_top20", "manual_readout_top20_labels", "manual_readout_top20_lift95", "bbt_hard_labels_top20",
          "bbt_hard_labels_top20_lift95", "in_context_readout_top20_lift95", "manual_or_in_context_readout_top20_lift95",
          "manual_or_in_context_readout_top20_lift95_acc")
DEEP = ("manual_readout_top1000", "in_context_readout_top1000")  # what a top-1,000 (llama.cpp) gives


def hosted_api_goals(rows: Sequence[dict[str, Any]], acc: dict[tuple, float], cells: Sequence[tuple]
                     ) -> dict[str, tuple[bool, str]]:
    """The hosted-API goals, for each hosted row over the cells it covers: mean gain >= +8.0 over the calibrated
    manual prompt, no cell below max(manual, calibrated) - 1.0, at least prompt tuning in 6 of 8 pairs; and TREC
    >= 80 on both models from a deep top-k."""
    found: dict[str, tuple[bool, str]] = {}
    for hosted in HOSTED:
        mine = [c for c in cells if (*c, hosted) in acc and (*c, BASELINE) in acc and (*c, "manual") in acc]
        if not mine:
            continue
        gains_ = [acc[(*c, hosted)] - acc[(*c, BASELINE)] for c in mine]
        below = [c for c in mine if acc[(*c, hosted)] < max(acc[(*c, "manual")], acc[(*c, BASELINE)]) - 1.0]
        pairs = sorted({c[:2] for c in mine if (*c, "prompt_tuning") in acc})
        won = sum(statistics.fmean(acc[(*c, hosted)] for c in mine if c[:2] == p) >=
                  statistics.fmean(acc[(*c, "prompt_tuning")] for c in mine if c[:2] == p) for p in pairs)
        found.update({
            f"hosted API ({hosted}): mean gain >= +8.0": (
                statistics.fmean(gains_) >= 8.0, f"mean {statistics.fmean(gains_):+.1f} over {len(mine)} cells"),
            f"hosted API ({hosted}): no cell below max(manual, calibrated) - 1.0": (
                not below, f"{len(below)} of {len(mine)} cells below"),
            f"hosted API ({hosted}) >= prompt tuning": (won >= 6, f"{won} of {len(pairs)} pairs with both (of 8)"),
        })
    for deep in DEEP:
        trec = {m: statistics.fmean(acc[(t, m, s, deep)] for t, m2, s in cells if t == "trec" and m2 == m
                                    and (t, m, s, deep) in acc) for m in {c[1] for c in cells if c[0] == "trec"
                                                                           and (*c, deep) in acc}}
        if trec:
            found[f"TREC >= 80 on both models ({deep})"] = (
                len(trec) == 2 and min(trec.values()) >= 80.0,
                ", ".join(f"{m} {v:.1f}" for m, v in sorted(trec.items())))
    return found


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Heatmap of BBT soft's gain over the calibrated manual prompt, one cell per task x model x seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    soft = [g for g in gains(rows) if g["method"] == "bbt_soft"]
    if not soft:
        return
    cols = sorted({(g["task"], g["model"]) for g in soft})
    seeds = sorted({g["seed"] for g in soft})
    grid = [[next((g["gain"] for g in soft if (g["task"], g["model"], g["seed"]) == (*c, s)), float("nan"))
             for c in cols] for s in seeds]
    fig = Figure(figsize=(1.6 * len(cols) + 2, 1.0 * len(seeds) + 1.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="RdYlGn", vmin=-10, vmax=10)
    ax.set_xticks(range(len(cols)), [f"{t}\n{m}" for t, m in cols], fontsize=8)
    ax.set_yticks(range(len(seeds)), [f"seed {s}" for s in seeds])
    for i, line in enumerate(grid):
        for j, value in enumerate(line):
            ax.text(j, i, "-" if value != value else f"{value:+.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, label="BBT soft - calibrated manual (test points)")
    ax.set_title("Gain over the calibrated manual prompt")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dirs", nargs="*", help="the sweep folder(s) of benchmarks/specs/matrix.toml")
    ap.add_argument("--spec", default=str(SPEC), help="the sweep spec whose grid says which cells are missing")
    ap.add_argument("--rows", nargs="+", default=[], metavar="JSON", help="rows of earlier matrix.json files")
    ap.add_argument("--selection", nargs="+", default=[], metavar="JSON",
                    help="benchmarks/selection.py outputs run with --test-limit")
    ap.add_argument("--readouts", nargs="+", default=[], metavar="JSON",
                    help="benchmarks/readouts.py outputs: their out-of-fold rows (manual_readout_topK) join the matrix")
    ap.add_argument("--runs", nargs="+", default=[], metavar="JSON",
                    help="rows of other studies in the matrix's row format (benchmarks/search_readout.py, "
                         "benchmarks/boosting.py)")
    ap.add_argument("--out", default=str(OUT), help="folder for matrix.json, matrix.md, matrix.png")
    args = ap.parse_args(argv)
    sweep_dirs = [Path(d) for d in args.sweep_dirs]
    sources = ([r for path in args.rows for r in json.loads(Path(path).read_text())["rows"]]
               + [r for d in reversed(sweep_dirs) for r in collect(d)]
               + [r for path in args.selection for r in from_selection(Path(path))]
               + [_matrix_row(r) for path in args.readouts for r in rows_to_matrix(Path(path))]
               + [_matrix_row(r) for path in args.runs for r in json.loads(Path(path).read_text())["rows"]])
    # later sources win
    cells: dict[tuple, dict[str, Any]] = {}
    for r in sources:  # a later source wins the accuracy; a wall time it lacks is kept from the earlier one
        key = (r["task"], r["model"], r["seed"], r["method"])
        earlier_wall = cells[key]["wall_s"] if key in cells else None
        cells[key] = {**r, "wall_s": r["wall_s"] if r["wall_s"] is not None else earlier_wall}
    rows = list(cells.values())
    grid = tomllib.loads(Path(args.spec).read_text())["grid"]
    order = {name: i for i, name in enumerate([t["name"] for t in grid["tasks"]] + list(grid["models"]))}
    rows.sort(key=lambda r: (order.get(r["task"], len(order)), order.get(r["model"], len(order)), r["seed"]))
    if not rows:
        raise SystemExit(f"no finished jobs in {args.sweep_dirs}; run `bbtune sweep benchmarks/specs/matrix.toml`")
    left = missing(rows, grid)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checks = goals(rows)
    md = "\n".join([table(rows), "", "Per cell: mean test accuracy over seeds (mean gain over the calibrated manual "
                    "prompt).", "", *(f"- {name}: {'met' if ok else 'not met'} ({detail})" if "pairs" not in detail
                                      else f"- {name}: {detail}" for name, (ok, detail) in checks.items()),
                    "", "Wall time of one job in minutes (2 CPU cores, two jobs at a time, one torch thread each; "
                    "bbt_soft from the selection study: its search alone, without test):", "",
                    wall_table(rows), "", not_measured(left)])
    print(md)
    (out / "matrix.md").write_text(md + "\n")
    (out / "matrix.json").write_text(json.dumps({"rows": rows, "gains": gains(rows), "goals": checks,
                                                        "unfinished": left}, indent=2))
    plot(rows, out / "matrix.png")
    print(f"wrote {out}/matrix.json, matrix.md, matrix.png ({len(rows)} runs)")


if __name__ == "__main__":
    main()
