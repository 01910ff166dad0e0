"""Using a finished run: `load_run(dir)` rebuilds what `tune` wrote (the selected prompt, the task format and
the per-label calibration) and `predict(texts)` classifies new inputs exactly as the run scored its test set:
same prompt, same placement, the same readout (``readout.json``: the label scores and, where it reads them, the
top-k at the answer position, turned into class scores), argmax, chunks of `EVAL_BATCH` like `evaluate`. Runs
written without a readout score ``log p(label word) + label_bias`` (metrics.json's ``label_bias`` or a
``calibration.json``). ``metrics.json`` is read as a `RunMetrics`, whatever version wrote it.

    >>> # run = load_run("runs/sst2-hard-42")
    >>> # run.predict(["a moving, funny film"])[0].label
    'positive'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bbtune.backends.base import Backend
from bbtune.errors import CheckpointError, ConfigError, TaskError
from bbtune.search.evaluate import score_examples
from bbtune.search.losses import label_log_softmax
from bbtune.constants import EVAL_BATCH
from bbtune.core.options import known_fields
from bbtune.core.progress import progress_bar
from bbtune.core.prompts import HardPrompt, Prompt, SoftPrompt
from bbtune.runs.folder import BEST_PROMPT, CALIBRATION, CONFIG, CURVE, HARD_PROMPT, METRICS, READOUT, RunFolder
from bbtune.search.readouts.fitted import RunReadout
from bbtune.runs.metrics import RunMetrics
from bbtune.runs.tuner import TuneResult
from bbtune.search.selection import Decision
from bbtune.tasks import Example, TaskFormat, Template



@dataclass(frozen=True)
class Prediction:
    """One classified input: the label, and the calibrated label log-scores and probabilities (over labels)."""

    label: str
    scores: dict[str, float]
    probs: dict[str, float]


@dataclass
class TunedRun:
    """A tuned run, ready to classify: what `bbtune.tune` returns and `load_run` reads back from a run folder.

    `prompt` is the returned prompt (tuned, or the manual one where the run kept it), `metrics` every number of the
    run (a `RunMetrics`), `curve` the learning curve (one row per generation), `decision` why the run returned what it did, and
    `predict` classifies new inputs. `backend` is built from the run's config when first needed."""

    path: Path | None  # None: a run tuned in memory (no run_dir)
    format: TaskFormat
    prompt: Prompt
    label_bias: np.ndarray | None
    metrics: RunMetrics
    config: dict[str, Any]
    backend: Backend | None = field(default=None, repr=False)
    curve: list[dict[str, Any]] = field(default_factory=list, repr=False)  # one row per generation (curve.csv)
    readout: RunReadout | None = field(default=None, repr=False)  # how answers become labels (None: `label_bias`)

    @property
    def decision(self) -> Decision | None:
        """Why the run returned what it did: tuned or manual, the dev margins and the tests behind them."""
        return self.metrics.decision

    @property
    def prompt_text(self) -> str:
        """The text a person pastes: the hard prompt (for a soft run, its nearest tokens)."""
        return self.metrics.hard_prompt or ""

    def template_text(self) -> str:
        """The task's template with the prompt text in place (prefix: before the input; suffix: before the cue)."""
        return self.format.text(Example("{text}", "", "{text_b}"), self.prompt_text) + "{label}"

    def predict(self, texts: Sequence[str], text_b: Sequence[str] | None = None, *, backend: Backend | None = None,
                progress: bool = False) -> list[Prediction]:
        """Classify `texts` (and their `text_b` for a pair task) through `backend` (default: the run's own)."""
        examples = [Example(t, "", text_b[i] if text_b is not None else None) for i, t in enumerate(texts)]
        return self.predict_examples(examples, backend=backend, progress=progress)

    def predict_examples(self, examples: Sequence[Example], *, backend: Backend | None = None,
                         progress: bool = False) -> list[Prediction]:
        if self.format.is_generation:
            raise TaskError("predict classifies inputs, and this run tuned a generation task (free-text answers); "
                            "generate its answers with the backend's generate() and this run's prompt")
        scores = self.scores(examples, backend=backend, progress=progress)
        probs = np.exp(label_log_softmax(scores))
        labels = self.format.labels
        return [Prediction(labels[int(np.argmax(s))], dict(zip(labels, map(float, s))), dict(zip(labels, map(float, p))))
                for s, p in zip(scores, probs)]

    def scores(self, examples: Sequence[Example], *, backend: Backend | None = None,
               progress: bool = False) -> np.ndarray:
        """(B, L) class log-scores of `examples` as the run classified its test set: through its readout (which
        may read the top-k) where it has one, else its label scores plus `label_bias`; one model call per
        `EVAL_BATCH` examples."""
        backend = backend or self.default_backend()
        out = []
        bar = progress_bar(-(-len(examples) // EVAL_BATCH), "batch", desc="bbtune predict", enabled=progress)
        for start in range(0, len(examples), EVAL_BATCH):
            part = examples[start : start + EVAL_BATCH]
            if self.readout is not None:
                out.append(self.readout.log_scores(self.readout.answers(backend, self.prompt, part, self.format)))
            else:
                out.append(score_examples(backend, self.prompt, part, self.format, EVAL_BATCH)[0])
            bar.update(1)
        bar.close()
        scores = np.concatenate(out) if out else np.zeros((0, len(self.format.labels)))
        if self.readout is None and self.label_bias is not None:
            return scores + self.label_bias
        return scores

    def default_backend(self) -> Backend:
        if self.backend is None:
            self.backend = saved_backend(self.config)
        return self.backend

    def close(self) -> None:
        """Close the run's backend where it holds connections (a remote one); the run stays readable."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "TunedRun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_run(run_dir: str | Path, backend: Backend | None = None) -> TunedRun:
    """The finished run in `run_dir`; a missing folder or an unfinished run is a `CheckpointError`."""
    folder = RunFolder(run_dir)
    if not folder.path.is_dir():
        raise CheckpointError(f"run folder {folder.path} does not exist; give the run_dir of a tuning run")
    config = folder.read_json(CONFIG)
    if not (folder.path / METRICS).exists():
        raise CheckpointError(f"{folder.path} holds no metrics.json: the run has not finished; finish it with "
                              f"run_dir={folder.path}, resume=True")
    metrics = RunMetrics.from_json(folder.read_json(METRICS))
    fmt = saved_format(config["task"])
    curve = [_numbers(row) for row in folder.read_curve()] if (folder.path / CURVE).exists() else []
    readout = RunReadout.from_json(folder.read_json(READOUT)) if (folder.path / READOUT).exists() else None
    return TunedRun(folder.path, fmt, _prompt(folder), _label_bias(folder, metrics, fmt), metrics, config, backend,
                    curve, readout)


def tuned_run(result: TuneResult, fmt: TaskFormat, backend: Backend) -> TunedRun:
    """The run a `Tuner` just finished, ready to predict through `backend`: read back from its folder where it
    wrote one (exactly what `load_run` gives later), else built from the result in memory."""
    if result.run_dir is not None:
        run = load_run(result.run_dir, backend)
        run.curve = result.curve  # the numbers themselves, not their CSV text
        return run
    bias = _label_bias(None, result.metrics, fmt)
    return TunedRun(None, fmt, result.best_prompt, bias, result.metrics, {"backend": backend.name}, backend,
                    result.curve, result.readout)


def _numbers(row: dict[str, str]) -> dict[str, Any]:
    """A curve.csv row with its numbers as numbers (an empty cell: None)."""
    def value(text: str) -> Any:
        if text == "":
            return None
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text
    return {key: value(text) for key, text in row.items()}


def saved_format(task: dict[str, Any]) -> TaskFormat:
    """The task format a run was tuned with, from config.json's ``task`` entry."""
    return TaskFormat(Template(task["template"]), task["verbalizer"], task["placement"], task.get("kind", "classify"))


def _prompt(folder: RunFolder) -> Prompt:
    """The selected prompt: the tuned soft prompt where the run kept one, else the hard prompt's tokens."""
    if (folder.path / BEST_PROMPT).exists():
        tensors = folder.load_tensors(BEST_PROMPT)
        if "soft_prompt" in tensors:
            return SoftPrompt(tensors["soft_prompt"])
    hard = folder.read_json(HARD_PROMPT)
    return HardPrompt(tuple(hard["token_ids"]), hard["text"], tuple(hard.get("tokens", ())))


def _label_bias(folder: RunFolder | None, metrics: RunMetrics, fmt: TaskFormat) -> np.ndarray | None:
    """Per-label bias in the format's label order, from metrics.json or calibration.json (None: uncalibrated)."""
    bias: Any = metrics.label_bias
    if bias is None and folder is not None and (folder.path / CALIBRATION).exists():
        bias = folder.read_json(CALIBRATION).get("label_bias")
    if bias is None:
        return None
    if isinstance(bias, dict):
        return np.array([float(bias[label]) for label in fmt.labels])
    return np.asarray(bias, dtype=float)


def saved_backend(config: dict[str, Any], max_input_tokens: int = 0) -> Backend:
    """The backend a run was tuned with, from its config.json (CLI runs keep the whole backend config; a run
    started from Python keeps the local model's name). Remote runs get no header values: they are never saved.
    `max_input_tokens` (local models) truncates longer inputs instead of refusing them."""
    from bbtune.backends.factory import LocalConfig
    from bbtune.backends.remote import RemoteConfig

    cli = config.get("cli")
    truncate: dict[str, Any] = {"max_input_tokens": max_input_tokens} if max_input_tokens else {}
    if cli is None:
        name = str(config.get("backend", ""))
        if not name.startswith("local:"):
            raise CheckpointError(f"cannot rebuild backend {name!r} from the run folder; pass a backend (or a "
                                  "LocalConfig.model to score with)")
        return LocalConfig(model=name[len("local:"):], **truncate).build()
    if cli.get("backend_kind") == "remote":
        if truncate:
            raise ConfigError("max_input_tokens truncates inputs for a local model; this run's backend is a server "
                              "(score through a local one, LocalConfig.model, or shorten the inputs)")
        return RemoteConfig(**known_fields(RemoteConfig, {**cli["remote"], "extra_headers": ()})).build()
    return LocalConfig(**{**known_fields(LocalConfig, cli["backend"]), **truncate}).build()
