"""The `bbtune` command. Its flags are generated from the config dataclasses, never listed twice.

    bbtune demo                       # manual vs BBT soft vs discretized vs hard, on the built-in data
    bbtune tune --data DIR --preset sentiment --mode hard --run-dir runs/x
    bbtune tune --resume runs/x       # continue a killed run; same result as an uninterrupted one
    bbtune predict runs/x --input new.jsonl --output predictions.jsonl
    bbtune export runs/x --format text   # the template with the tuned prompt in place (or peft, json)
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import sys
import time
import typing
from pathlib import Path
from typing import Any, Sequence

from .backends.factory import LocalConfig
from .backends.remote import RemoteConfig
from .compare import CompareConfig, run_compare
from .errors import BBTuneError
from .evaluate import evaluate
from .export import export
from .prompts import HardPrompt
from .results import RunFolder
from .runs import load_run
from .table import markdown_table
from .tasks import FieldMap, TaskConfig, parse_label_names, read_inputs
from .tuner import Mode, TuneConfig, TuneResult, tune

CONFIGS = {"task": TaskConfig, "backend": LocalConfig, "tune": TuneConfig}
REMOTE_PREFIX = "remote_"  # remote flags are --remote-*, so --model stays the local model's


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, title: str, prefix: str = "") -> None:
    """One flag per field: `--intrinsic-dim`, with the field's help, default and choices."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        flag = "--" + (prefix + f.name).replace("_", "-")
        help_ = f"{f.metadata.get('help', '')} (default: {_show(f.default)})"
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            group.add_argument(flag, choices=[e.value for e in kind], default=f.default.value, help=help_)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(flag, nargs="*", type=typing.get_args(kind)[0], default=list(f.default), help=help_)
        else:
            group.add_argument(flag, type=kind, default=f.default, help=help_)


def _show(value: Any) -> str:
    return repr(value.value if isinstance(value, enum.Enum) else value)


def from_args(cls: type, ns: argparse.Namespace | dict[str, Any], prefix: str = "") -> Any:
    values = vars(ns) if isinstance(ns, argparse.Namespace) else ns
    return cls(**{f.name: values[prefix + f.name] for f in dataclasses.fields(cls) if prefix + f.name in values})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bbtune", description="Black-box prompt tuning for models you can only query")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tune", help="run Black-Box Tuning on a task and write a run folder")
    for title, cls in CONFIGS.items():
        add_dataclass_args(t, cls, title)
    t.add_argument("--backend", choices=["local", "remote"], default="local",
                   help="score with a local model or an OpenAI-compatible server (--remote-* flags)")
    add_dataclass_args(t, RemoteConfig, "remote backend (with --backend remote)", prefix=REMOTE_PREFIX)
    t.add_argument("--run-dir", default="", help="results folder (default: runs/<task>-<mode>-<seed>)")
    t.add_argument("--resume", default="", metavar="RUN_DIR", help="continue the run in RUN_DIR with its saved config")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = sub.add_parser("compare", help="run several methods x seeds on one task and write a report folder")
    for title, cls in {**CONFIGS, "compare": CompareConfig}.items():
        add_dataclass_args(c, cls, title)
    d = sub.add_parser("demo", help="tune on the built-in sentiment set and print manual vs BBT results")
    d.add_argument("--model", default=LocalConfig.model, help="model to tune (default: embedded SmolLM2-135M)")
    d.add_argument("--budget-calls", type=int, default=200, help="model calls per tuning run")
    d.add_argument("--out", default="runs/demo", help="folder for the two run folders and summary files")
    d.add_argument("--seed", type=int, default=42)
    _add_use_commands(sub)
    return parser


def _add_use_commands(sub: Any) -> None:
    """`predict` and `export`: use what `tune` wrote in a run folder."""
    p = sub.add_parser("predict", help="classify inputs with a finished run's prompt (JSONL out)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by bbtune tune")
    p.add_argument("--input", required=True, help="JSONL, CSV or TSV file of inputs (labels, if present, are scored)")
    p.add_argument("--output", default="", help="JSONL file for the predictions (default: standard output)")
    p.add_argument("--model", default="", help="score with this local model instead of the run's backend")
    for name, default, help_ in (("text-field", "text", "field holding the input text"),
                                 ("text-b-field", "", "field holding a pair's second text"),
                                 ("label-field", "label", "field holding gold labels, if any"),
                                 ("label-names", "", "rename label values: 'negative,positive' or JSON")):
        p.add_argument("--" + name, default=default, help=f"{help_} (default: {default!r})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = sub.add_parser("export", help="write a finished run's prompt as a PEFT adapter, a template text or JSON")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by bbtune tune")
    e.add_argument("--format", default="text", help="peft (adapter folder), text (template with the prompt) or json")
    e.add_argument("--out", default="", help="file (text, json) or folder (peft; default RUN_DIR/peft)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "tune":
            result = _tune_command(args)
            print(summary_table([("bbtune " + result.metrics["mode"], result)]))
            print(f"\nresults in {result.run_dir}")
        elif args.command == "compare":
            configs = {name: from_args(cls, args) for name, cls in CONFIGS.items()}
            comparison = run_compare(from_args(CompareConfig, args), configs["task"], configs["backend"], configs["tune"])
            print(markdown_table(comparison.summary(), list(comparison.summary()[0])))
            print(f"\nreport in {comparison.out_dir}")
        elif args.command == "demo":
            print(run_demo(args.model, args.budget_calls, Path(args.out), args.seed))
        elif args.command == "predict":
            _predict_command(args)
        elif args.command == "export":
            print(export(args.run_dir, args.format, args.out or None))
    except BBTuneError as err:
        print(f"bbtune: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbbtune: interrupted; finished generations are checkpointed, continue with --resume RUN_DIR",
              file=sys.stderr)
        return 130
    return 0


def _tune_command(args: argparse.Namespace) -> TuneResult:
    if args.resume:
        saved = RunFolder(args.resume).read_json("config.json")["cli"]
        configs = {name: from_args(cls, saved[name]) for name, cls in CONFIGS.items()}
        # header values are never saved (they may hold credentials), so a resumed remote run has none
        kind = saved.get("backend_kind", "local")
        remote = from_args(RemoteConfig, {**saved.get("remote", {}), "extra_headers": ()})
        run_dir, resume = Path(args.resume), True
    else:
        configs = {name: from_args(cls, args) for name, cls in CONFIGS.items()}
        kind, remote = args.backend, from_args(RemoteConfig, args, REMOTE_PREFIX)
        cfg = configs["tune"]
        run_dir = Path(args.run_dir or f"runs/{Path(configs['task'].data or 'demo').name}-{cfg.mode.value}-{cfg.seed}")
        resume = False
    task = configs["task"].load()
    backend = remote.build() if kind == "remote" else configs["backend"].build()
    # RemoteConfig holds only the *name* of the key's variable; public() also drops header values and URL credentials
    cli_config = {**{name: dataclasses.asdict(c) for name, c in configs.items()}, "backend_kind": kind,
                  "remote": remote.public()}
    return tune(task, backend, configs["tune"], run_dir, progress=not args.no_progress, resume=resume,
                extra_config={"cli": cli_config})


def _predict_command(args: argparse.Namespace) -> None:
    """Predictions as JSONL (one row per input); accuracy on stderr when the inputs carry labels."""
    run = load_run(args.run_dir)
    fields = FieldMap(args.text_field, args.text_b_field or None, args.label_field, parse_label_names(args.label_names))
    examples = read_inputs(args.input, fields)
    backend = LocalConfig(model=args.model).build() if args.model else None
    predictions = run.predict_examples(examples, backend=backend, progress=not args.no_progress)
    lines = [json.dumps({"text": ex.text, **({"text_b": ex.text_b} if ex.text_b is not None else {}),
                         "label": p.label, "probs": p.probs, **({"gold": ex.label} if ex.label else {})},
                        ensure_ascii=False) for ex, p in zip(examples, predictions)]
    if args.output:
        Path(args.output).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    else:
        print("\n".join(lines))
    if examples and all(ex.label for ex in examples):
        correct = sum(ex.label == p.label for ex, p in zip(examples, predictions))
        print(f"accuracy {correct / len(examples):.4f} ({correct}/{len(examples)})", file=sys.stderr)


def summary_table(results: Sequence[tuple[str, TuneResult | dict[str, Any]]]) -> str:
    """Manual prompt and tuned results side by side, with each one's test gain over the manual prompt."""
    rows, manual_test = [], None
    for name, res in results:
        m = res.metrics if isinstance(res, TuneResult) else res
        if "manual_test_acc" in m and manual_test is None:  # a tuned run scores the manual prompt beside itself
            manual_test = m["manual_test_acc"]
            rows.append({"method": "manual prompt (template alone)", "dev acc": m.get("manual_dev_acc"),
                         "test acc": manual_test, "calls": 0})
            if "manual_calibrated_test_acc" in m:
                rows.append({"method": "  + label calibration", "dev acc": m.get("manual_calibrated_dev_acc"),
                             "test acc": m["manual_calibrated_test_acc"], "calls": 0})
        kept = " (kept the manual prompt: tuning did not beat it on dev)" if m.get("selected") == "manual" else ""
        rows.append({"method": name + kept, "dev acc": m.get("dev_acc"), "test acc": m.get("test_acc"),
                     "calls": m.get("calls", 0), "time s": m.get("wall_s"), "prompt": _short(m.get("prompt_shown"))})
        if "hard_test_acc" in m:
            rows.append({"method": f"  {name} -> nearest tokens", "dev acc": m.get("hard_dev_acc"),
                         "test acc": m.get("hard_test_acc"), "calls": "", "time s": None,
                         "prompt": _short(m.get("discretized_prompt", m.get("hard_prompt")))})
        elif m.get("mode") == "hard":
            rows[-1]["prompt"] = _short(m.get("hard_prompt"))
    for row in rows:
        if manual_test is not None and isinstance(row.get("test acc"), float):
            row["gain vs manual"] = f"{100 * (row['test acc'] - manual_test):+.1f} pts"
    return markdown_table(rows, ["method", "dev acc", "test acc", "gain vs manual", "calls", "time s", "prompt"])


def _short(text: str | None, width: int = 40) -> str | None:
    if text is None:
        return None
    shown = json.dumps(text, ensure_ascii=False)
    return shown if len(shown) <= width else shown[: width - 4] + '..."'


def run_demo(model: str, budget_calls: int, out: Path, seed: int) -> str:
    """Manual prompt, BBT soft (+ its nearest tokens) and BBT hard on the built-in set; returns the table."""
    task_cfg = TaskConfig(data="demo", k=8)
    task = task_cfg.load()
    backend = LocalConfig(model=model).build()
    started = time.perf_counter()
    manual = HardPrompt((), "")
    results: list[tuple[str, Any]] = [("manual prompt (template only)", {
        "dev_acc": evaluate(backend, manual, task.dev, task.format).accuracy,
        "test_acc": evaluate(backend, manual, task.test, task.format).accuracy,
        "calls": 0, "wall_s": round(time.perf_counter() - started, 2), "prompt_shown": task.format.template.pattern})]
    for mode in (Mode.SOFT, Mode.HARD):
        cfg = TuneConfig(mode=mode, budget_calls=budget_calls, seed=seed, eval_every=40)
        cli = {"task": dataclasses.asdict(task_cfg), "backend": dataclasses.asdict(LocalConfig(model=model)),
               "tune": dataclasses.asdict(cfg)}
        print(f"tuning a {mode.value} prompt ({budget_calls} calls)...", file=sys.stderr)
        results.append((f"BBT {mode.value}", tune(task, backend, cfg, out / mode.value, extra_config={"cli": cli})))
    table = summary_table(results)
    RunFolder(out).write_json("summary.json", {name: (r.metrics if isinstance(r, TuneResult) else r) for name, r in results})
    (out / "summary.md").write_text(table + "\n")
    return f"{table}\n\nrun folders and summary in {out}/"


if __name__ == "__main__":
    sys.exit(main())
