"""The `bbtune` command. Its flags are generated from the config dataclasses, never listed twice.

    bbtune demo                       # manual vs BBT soft vs discretized vs hard, on the built-in data
    bbtune tune --data DIR --preset sentiment --mode hard --run-dir runs/x
    bbtune tune --resume runs/x       # continue a killed run; same result as an uninterrupted one
    bbtune predict runs/x --input new.jsonl --output predictions.jsonl
    bbtune export runs/x --format text   # the template with the tuned prompt in place (or peft, json)
    bbtune sweep spec.toml --workers 2   # a grid of jobs on a process pool (or --ray-address auto), one report
    bbtune track sweeps/x                # run or sweep folders into MLflow (or --track tensorboard) after the fact
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from bbtune.app.compare import CompareConfig, compare
from bbtune.app.comparison import Comparison
from bbtune.app.demo import run_demo
from bbtune.app.dryrun import dry_run_compare, dry_run_tune
from bbtune.app.exits import BAD_INPUT, EPILOG, INTERRUPTED, budget_rounding, ending_line, exit_code, gave_up_line
from bbtune.app.export import check_parent, export
from bbtune.app.flags import CONFIGS, REMOTE_PREFIX, add_dataclass_args, flag_words, from_args
from bbtune.app.report import PLOT_PNG, REPORT_MD, RESULTS_JSON
from bbtune.app.resume import given_dests, resumed_remote, resumed_tracking, split_settings, tracking_settings
from bbtune.app.summary import decision_line, readout_line, summary_table
from bbtune.app.sweep import dry_run_sweep, run_sweep
from bbtune.app.sweepspec import SweepConfig, SweepSpec
from bbtune.app.track import track
from bbtune.backends.base import Backend
from bbtune.backends.factory import LocalConfig, transfer_backend
from bbtune.backends.remote import RemoteConfig
from bbtune.backends.retry import should_retry
from bbtune.constants import API_KEY_ENV, OPENAI_API_KEY_ENV
from bbtune.core import secrets
from bbtune.core.table import markdown_table
from bbtune.errors import BackendError, BBTuneError, BudgetExceeded, ConfigError, OutputExistsError
from bbtune.runs.endings import Ending
from bbtune.runs.folder import CONFIG, RunFolder, refuse_overwrite
from bbtune.runs.load import load_run, saved_backend
from bbtune.runs.tracking import untracked
from bbtune.runs.tuner import TuneConfig, TuneResult, run_tuner
from bbtune.search.objective import skipped_for_generation
from bbtune.tasks import FieldMap, TaskConfig, overlaps, parse_label_names, read_inputs

REPORT_FILES = (REPORT_MD, RESULTS_JSON, PLOT_PNG)  # what `compare` writes in --out
__all__ = ["CompareConfig", "build_parser", "flag_words", "from_args", "main", "run_compare"]


def run_compare(config: CompareConfig, task: TaskConfig = TaskConfig(), backend: LocalConfig = LocalConfig(),
                tune: TuneConfig = TuneConfig(), *, transfer_to: Backend | None = None,
                progress: bool = True) -> Comparison:
    """`bbtune compare`: build the backend and the per-seed tasks (`data_seed` <- seed), run, write `config.out`.

    `transfer_to` (any Backend) overrides `config.transfer_model` / `config.transfer_url`.
    """
    model = backend.build()
    target = transfer_to or transfer_backend(backend, config.transfer_model, config.transfer_url,
                                             config.transfer_served_model)
    record = {"task": asdict(task), "backend": asdict(backend), "compare": asdict(config)}
    return compare(lambda seed: replace(task, data_seed=seed).load(), model, config.methods, config.seeds,
                   config.settings(tune), config.out, transfer_to=target, transfer_limit=config.transfer_limit or None,
                   progress=progress, record=record)


class Parser(argparse.ArgumentParser):
    """argparse without prefix matching (``--remote-api-key`` must not become ``--remote-api-key-env`` and land in
    config.json), whose sub-parsers inherit that, and whose "unrecognized arguments" error names the unknown flags
    without echoing their values (a mistyped key flag is followed by the key)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(unknown_arguments(unknown))
        return parsed


def unknown_arguments(tokens: Sequence[str]) -> str:
    """The error for tokens argparse could not place: flag names only, values counted, never shown."""
    flags = [t.split("=", 1)[0] for t in tokens if t.startswith("-")]
    hidden = len(tokens) - len(flags) + sum("=" in t for t in tokens if t.startswith("-"))
    shown = " ".join(flags) if flags else "(values only)"
    return (f"unrecognized arguments: {shown}" + (f" ({hidden} value(s) not shown)" if hidden else "")
            + "; see `bbtune COMMAND --help` for the flags (names must be given in full)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bbtune", description="Black-box prompt tuning for models you can only query")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tune", help="run Black-Box Tuning on a task and write a run folder", epilog=EPILOG)
    for title, cls in CONFIGS.items():
        add_dataclass_args(t, cls, title)
    t.add_argument("--backend", choices=["local", "remote"], default="local",
                   help="score with a local model or an OpenAI-compatible server (--remote-* flags)")
    add_dataclass_args(t, RemoteConfig, "remote backend (with --backend remote)", prefix=REMOTE_PREFIX)
    t.add_argument("--run-dir", default="", help="results folder (default: runs/<task>-<mode>-<seed>)")
    t.add_argument("--resume", default="", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR with its saved config (limits, retries, timeouts, concurrency "
                        "may be given again to change them)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --run-dir (else refused)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--dry-run", action="store_true",
                   help="print the calls, requests, tokens and cost the run would spend at most; send nothing")
    c = sub.add_parser("compare", help="run several methods x seeds on one task and write a report folder")
    for title, cls in {**CONFIGS, "compare": CompareConfig}.items():
        add_dataclass_args(c, cls, title)
    c.add_argument("--dry-run", action="store_true",
                   help="print the calls, requests, tokens and cost the comparison would spend at most; send nothing")
    c.add_argument("--overwrite", action="store_true", help="replace a report already in --out (else refused)")
    d = sub.add_parser("demo", help="tune on the built-in sentiment set and print manual vs BBT results")
    d.add_argument("--model", default=LocalConfig.model, help="model to tune (default: embedded SmolLM2-135M)")
    d.add_argument("--budget-calls", type=int, default=200, help="model calls per tuning run")
    d.add_argument("--out", default="runs/demo", help="folder for the two run folders and summary files")
    d.add_argument("--seed", type=int, default=42, help="first few-shot seed")
    d.add_argument("--seeds", type=int, default=1, help="how many few-shot splits (seed, seed+1, ...): mean and spread")
    _add_use_commands(sub)
    s = sub.add_parser("sweep", help="run a grid of jobs (tasks x models x methods x seeds) from a TOML spec, on a "
                                     "process pool or Ray, and write one report")
    s.add_argument("spec", metavar="SPEC", help="the sweep's TOML file (see benchmarks/specs/)")
    add_dataclass_args(s, SweepConfig, "sweep (override the spec's [sweep] table)")
    s.add_argument("--resume", action="store_true", help="continue the sweep in --out: finished jobs are kept")
    s.add_argument("--dry-run", action="store_true", help="print the jobs and the calls (and cost) each would spend")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    k = sub.add_parser("track", help="report run or sweep folders to MLflow or TensorBoard after the fact")
    k.add_argument("path", metavar="RUN_OR_SWEEP_DIR", help="a folder that bbtune tune or bbtune sweep wrote")
    k.add_argument("--track", choices=["mlflow", "tensorboard"], default="mlflow", help="the tracker (default: mlflow)")
    k.add_argument("--track-uri", default="", help=flag_words(TuneConfig.__dataclass_fields__["track_uri"].metadata["help"]))
    return parser


def _add_use_commands(sub: Any) -> None:
    """`predict` and `export`: use what `tune` wrote in a run folder."""
    p = sub.add_parser("predict", help="classify inputs with a finished run's prompt (JSONL out)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by bbtune tune")
    p.add_argument("--input", required=True, help="JSONL, CSV or TSV file of inputs (labels, if present, are scored)")
    p.add_argument("--output", default="", help="JSONL file for the predictions (default: standard output)")
    p.add_argument("--model", default="", help="score with this local model instead of the run's backend")
    p.add_argument("--backend", choices=["run", "remote"], default="run",
                   help="the run's own backend (or --model), or an OpenAI-compatible server (--remote-* flags)")
    add_dataclass_args(p, RemoteConfig, "remote backend (with --backend remote)", prefix=REMOTE_PREFIX)
    for name, default, help_ in (("text-field", "text", "field holding the input text"),
                                 ("text-b-field", "", "field holding a pair's second text"),
                                 ("label-field", "label", "field holding gold labels, if any"),
                                 ("label-names", "", "rename label values: 'negative,positive' or JSON")):
        p.add_argument("--" + name, default=default, help=f"{help_} (default: {default!r})")
    p.add_argument("--encoding", default="utf-8", help="text encoding of --input, e.g. cp1252 (default: 'utf-8')")
    p.add_argument("--max-input-tokens", type=int, default=0,
                   help="local models: truncate inputs to this many tokens (default: 0 = error on overflow)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file (else refused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = sub.add_parser("export", help="write a finished run's prompt as a PEFT adapter, a template text or JSON")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by bbtune tune")
    e.add_argument("--format", default="text", help="peft (adapter folder), text (template with the prompt) or json")
    e.add_argument("--out", default="", help="file (text, json) or folder (peft; default RUN_DIR/peft)")
    e.add_argument("--overwrite", action="store_true", help="replace files already at --out (else refused)")


def main(argv: Sequence[str] | None = None) -> int:
    """`bbtune ...`: every line it prints (argparse's errors too) passes the secrets policy
    (`bbtune.core.secrets`), which knows the key-like flags' values before argparse sees them."""
    words = sys.argv[1:] if argv is None else list(argv)
    secrets.remember_argv(words)
    for env in (API_KEY_ENV, OPENAI_API_KEY_ENV):
        secrets.remember(os.environ.get(env))
    with secrets.redacting_streams(), warnings.catch_warnings(), _flag_words_logging():
        warnings.showwarning = _warning_line
        return _main(build_parser().parse_args(words), words)


class _FlagWordsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return flag_words(super().format(record))


@contextmanager
def _flag_words_logging() -> Iterator[None]:
    """The library's logged notes (a probe's finding) in flags, like its errors and warnings; the handler is made
    here, inside `redacting_streams`, so its lines pass the secrets policy too."""
    logger, handler = logging.getLogger("bbtune"), logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FlagWordsFormatter())
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _warning_line(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    """A library warning (PEFT placement, a raised budget) as one line, not Python's file:line and source."""
    print(f"bbtune: warning: {flag_words(str(message))}", file=sys.stderr)


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    try:
        if args.command == "tune" and args.dry_run:
            print(_dry_run_tune(args))
        elif args.command == "tune":
            return _tune_main(args, argv)
        elif args.command == "compare" and args.dry_run:
            print(_dry_run_compare(args))
        elif args.command == "compare":
            configs = {name: from_args(cls, args) for name, cls in CONFIGS.items()}
            refuse_overwrite([Path(args.out) / name for name in REPORT_FILES], args.overwrite)
            comparison = run_compare(from_args(CompareConfig, args), configs["task"], configs["backend"], configs["tune"])
            print(markdown_table(comparison.summary(), list(comparison.summary()[0])))
            print(f"\nreport in {comparison.out_dir}")
        elif args.command == "demo":
            print(run_demo(args.model, args.budget_calls, Path(args.out), args.seed, args.seeds))
        elif args.command == "predict":
            _predict_command(args)
        elif args.command == "export":
            print(export(args.run_dir, args.format, args.out or None, overwrite=args.overwrite))
        elif args.command == "sweep":
            return _sweep_command(args, given_dests(sys.argv[1:] if argv is None else argv))
        elif args.command == "track":
            done = track(args.path, args.track, args.track_uri)
            print(f"{len(done.logged)} run(s) logged, {len(done.skipped)} held complete already, in {done.store}; "
                  f"see them with: {done.ui}")
    except BBTuneError as err:
        print(f"bbtune: error: {flag_words(str(err))}", file=sys.stderr)
        return BAD_INPUT
    except OSError as err:  # a disk that is full or read-only, a path that is not allowed: one line, no traceback
        print(f"bbtune: error: {os_error_line(err, args.command)}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print("\nbbtune: interrupted; finished generations are checkpointed, continue with --resume RUN_DIR",
              file=sys.stderr)
        return INTERRUPTED
    return 0


def os_error_line(err: OSError, command: str = "tune") -> str:
    """A failed read or write in one line: what failed, on which file, and what to check (`--resume` only where
    the command has it)."""
    where = f" {err.filename}" if err.filename else ""
    resume = {"tune": " (a run that stopped here continues with --resume RUN_DIR)",
              "sweep": " (finished jobs are kept: continue with --resume)"}.get(command, "")
    return (f"could not read or write{where}: {err.strerror or err}; check the path, its permissions and free disk "
            f"space, then run again{resume}")


def _tune_main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run `tune`, print the table and how the run ended; the exit code says whether the result is usable
    (see `bbtune.app.exits`)."""
    try:
        result, tune_cfg = _tune_command(args, given_dests(argv))
    except BudgetExceeded as err:  # a limit reached before the first generation (the probe, the start point)
        print(f"bbtune: stopped by a limit before the first generation: {flag_words(str(err))}", file=sys.stderr)
        return exit_code(Ending.LIMIT)
    except BackendError as err:
        if not should_retry(err):
            raise
        retries = getattr(args, "remote_max_retries", RemoteConfig.max_retries)
        print(f"bbtune: {flag_words(gave_up_line(err, retries, args.resume or args.run_dir or 'RUN_DIR'))}",
              file=sys.stderr)
        return exit_code(Ending.GAVE_UP)
    print(summary_table([("bbtune " + result.metrics.mode, result)]))
    print(decision_line(result.metrics))
    if (readout := readout_line(result.metrics)) is not None:
        print(readout)
    print(f"\nresults in {result.run_dir}")
    code = exit_code(result.metrics.ending)
    print(f"bbtune: {flag_words(ending_line(result.metrics, tune_cfg.budget_calls, tune_cfg.popsize))}",
          file=sys.stderr if code else sys.stdout)
    return code


def _tune_command(args: argparse.Namespace, given: set[str]) -> tuple[TuneResult, TuneConfig]:
    if args.resume:
        folder = RunFolder(args.resume)
        folder.refuse_finished()  # before the model is loaded or any flag applied
        saved_all = folder.read_json(CONFIG)
        saved = saved_all["cli"]
        configs = {name: from_args(cls, saved[name]) for name, cls in CONFIGS.items()}
        configs["tune"] = resumed_tracking(configs["tune"], saved_all.get("settings") or {}, vars(args), given)
        kind = saved.get("backend_kind", "local")
        remote, applied = resumed_remote(saved, saved_all.get("settings") or {}, vars(args), given)
        for line in applied:
            print(f"bbtune: applied to the resumed run: {line}", file=sys.stderr)
        run_dir, resume = Path(args.resume), True
    else:
        configs = {name: from_args(cls, args) for name, cls in CONFIGS.items()}
        kind, remote = args.backend, from_args(RemoteConfig, args, REMOTE_PREFIX)
        cfg = configs["tune"]
        run_dir = Path(args.run_dir or f"runs/{Path(configs['task'].data or 'demo').name}-{cfg.mode.value}-{cfg.seed}")
        resume = False
    task = configs["task"].load()
    _notes(task, configs["tune"])
    backend = remote.build() if kind == "remote" else configs["backend"].build()
    # RemoteConfig holds only the *name* of the key's variable; public() also drops header values and URL credentials
    fixed, settings = split_settings(remote)
    cli_config = {**{name: dataclasses.asdict(c) for name, c in configs.items()}, "backend_kind": kind, "remote": fixed}
    cli_config["tune"] = untracked(cli_config["tune"])  # where the run is reported is a setting, not its config
    result = run_tuner(task, backend, configs["tune"], run_dir, progress=not args.no_progress, resume=resume,
                       extra_config={"cli": cli_config}, overwrite=args.overwrite,
                       settings={"remote": settings, "track": tracking_settings(configs["tune"])})
    return result, configs["tune"]


def _notes(task: Any, cfg: TuneConfig) -> None:
    """Say what a run will silently do otherwise: no test split, a budget rounded down to whole generations."""
    if not task.test:
        print("bbtune: note: the task has no test split (no test file found): only dev numbers are reported",
              file=sys.stderr)
    for split, n in overlaps(task).items():
        print(f"bbtune: warning: {n} of {len(getattr(task, split))} {split} examples have the same text as a training "
              f"example (duplicate rows in the data?): {split} numbers overrate the prompt; remove the duplicates",
              file=sys.stderr)
    if task.format.is_generation:
        for skipped in skipped_for_generation(cfg.calibrate, cfg.loss):
            print(f"bbtune: note: skipped for this generation task: {flag_words(skipped)}", file=sys.stderr)
    rounding = budget_rounding(cfg.budget_calls, cfg.popsize)
    if rounding:
        print(f"bbtune: note: {rounding}", file=sys.stderr)


def _dry_run_tune(args: argparse.Namespace) -> str:
    configs = {name: from_args(cls, args) for name, cls in CONFIGS.items()}
    remote = from_args(RemoteConfig, args, REMOTE_PREFIX)
    task = configs["task"].load()
    if task.format.is_generation:
        raise ConfigError("--dry-run estimates label-word scoring; for a generation task (free-text answers) it is "
                          "not built yet: try a small --budget-calls on the real backend instead")
    estimate = dry_run_tune(task, configs["tune"], args.backend, configs["backend"], remote)
    return f"dry run: nothing was sent; this run would spend at most\n\n{estimate.table()}"


def _dry_run_compare(args: argparse.Namespace) -> str:
    configs = {name: from_args(cls, args) for name, cls in CONFIGS.items()}
    estimates = dry_run_compare(from_args(CompareConfig, args), configs["task"], configs["backend"], configs["tune"])
    parts = [f"## {name}\n\n{est.table()}" for name, est in estimates.items()]
    return "dry run: nothing was sent; this comparison would spend at most\n\n" + "\n\n".join(parts)


def _sweep_command(args: argparse.Namespace, given: set[str]) -> int:
    """`bbtune sweep`: the spec's [sweep] table, with the flags given on the command line on top."""
    spec = SweepSpec.load(args.spec)
    spec = spec.with_config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SweepConfig)
                               if f.name in given})
    if args.dry_run:
        print(dry_run_sweep(spec))
        return 0
    result = run_sweep(spec, resume=args.resume, progress=not args.no_progress)
    summary = result.comparison.summary()
    if summary:
        print(markdown_table(summary, ["method", "dev_acc_mean", "test_acc_mean", "calls", "wall_s"]))
    print(f"\n{len(result.ran)} job(s) run, {len(result.skipped)} finished before, {len(result.failed)} failed; "
          f"report in {result.out_dir}")
    for name, error in result.failed.items():
        print(f"bbtune: job {name} failed: {error.splitlines()[0]}", file=sys.stderr)
    return 1 if result.failed else 0


def _predict_command(args: argparse.Namespace) -> None:
    """Predictions as JSONL (one row per input); accuracy on stderr when the inputs carry labels."""
    _check_output(args)
    run = load_run(args.run_dir)
    fields = FieldMap(args.text_field, args.text_b_field or None, args.label_field, parse_label_names(args.label_names),
                      TaskConfig(encoding=args.encoding).encoding)
    examples = read_inputs(args.input, fields)
    predictions = run.predict_examples(examples, backend=_predict_backend(args, run.config),
                                       progress=not args.no_progress)
    lines = [json.dumps({"text": ex.text, **({"text_b": ex.text_b} if ex.text_b is not None else {}),
                         "label": p.label, "probs": p.probs, **({"gold": ex.label} if ex.label else {})},
                        ensure_ascii=False) for ex, p in zip(examples, predictions)]
    if args.output:
        Path(args.output).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    else:
        print("\n".join(lines))
    if examples and all(ex.label for ex in examples):
        print(_accuracy_line(examples, [p.label for p in predictions], run.format.labels, args.input), file=sys.stderr)


def _accuracy_line(examples: Sequence[Any], predicted: Sequence[str], labels: Sequence[str], source: str) -> str:
    """The accuracy on labelled inputs; gold labels the run does not know (1/0 against negative/positive) would
    score a meaningless 0, so they get a warning that says how to map them instead."""
    unknown = sorted({ex.label for ex in examples} - set(labels))
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        return (f"bbtune: warning: no accuracy: the gold labels in {source} ({shown}) are not the run's labels "
                f"({', '.join(labels)}); map them with --label-names, e.g. --label-names '{','.join(labels)}' "
                "names 0, 1, ... in that order")
    correct = sum(ex.label == p for ex, p in zip(examples, predicted))
    return f"accuracy {correct / len(examples):.4f} ({correct}/{len(examples)})"


def _check_output(args: argparse.Namespace) -> None:
    """Before any scoring: --output is not the input, replaces nothing without --overwrite, and its folder exists."""
    if not args.output:
        return
    output = Path(args.output)
    if output.resolve() == Path(args.input).resolve():
        raise OutputExistsError(f"--output {output} is the --input file; write the predictions to another file")
    refuse_overwrite([output], args.overwrite)
    check_parent(output, "--output")


def _predict_backend(args: argparse.Namespace, run_config: dict[str, Any]) -> Backend | None:
    """The backend `predict` scores with: a server, another local model, or the run's own (None: as saved)."""
    if args.backend == "remote":
        return from_args(RemoteConfig, args, REMOTE_PREFIX).build()
    if args.model:
        return LocalConfig(model=args.model, max_input_tokens=args.max_input_tokens).build()
    return saved_backend(run_config, args.max_input_tokens) if args.max_input_tokens else None


if __name__ == "__main__":
    sys.exit(main())
