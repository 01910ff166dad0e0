"""The two experiment trackers behind `bbtune.runs.tracking.Tracker`: MLflow (through `MlflowClient`: a local
SQLite file by default, any tracking URI: a file store, a `mlflow server`) and TensorBoard (event files written
by torch's `SummaryWriter`, read back with TensorBoard's own loader). Each library is imported when its tracker
first opens a run, on the tracking thread, never by ``import bbtune``.

A run is found again by its key (a run folder's path), so a resumed run or a second ``bbtune track`` adds to the
run the tracker holds instead of starting another: `last_step` says how far its curve got, `complete` whether
it was finished (then nothing more is logged). A new run in the same folder (``--overwrite``) opens with
``fresh=True``: the old tracked run is set aside (MLflow: its key tag renamed; TensorBoard: its folder renamed)
and a new one starts.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from bbtune.constants import TRACK_CLOSE_TIMEOUT_S

KEY_TAG = "bbtune.key"  # sha256 of the run's key: how a resumed run finds its tracked run again
COMPLETE_TAG = "bbtune.complete"  # set last, on a finished run: it holds everything
STEP_KEY = "curve/calls"  # logged at every curve step: the last one the tracker holds
PARAM_BATCH, METRIC_BATCH = 100, 1000  # MLflow's limits per log_batch request


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class MlflowTracker:
    """Runs of one MLflow experiment at tracking URI `uri`. A new experiment in a local SQLite database keeps its
    artifacts in ``artifacts/`` beside the database (MLflow's default would be ./mlruns under the current folder).

    >>> # MlflowTracker("sqlite:///runs/mlruns/mlflow.db").open("runs/x", "x", {"task": "sst2"})
    """

    close_timeout_s = TRACK_CLOSE_TIMEOUT_S

    def __init__(self, uri: str, experiment: str = "bbtune"):
        self.uri, self.experiment = uri, experiment
        self._client: Any = None
        self._experiment_id = ""

    def __str__(self) -> str:
        return f"mlflow ({self.uri}, experiment {self.experiment!r})"

    @property
    def ui(self) -> str:
        return f"open {self.uri}" if self.uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {self.uri}"

    def _connect(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self.uri)
            found = client.get_experiment_by_name(self.experiment)
            self._experiment_id = (found.experiment_id if found else
                                   client.create_experiment(self.experiment, artifact_location=_artifact_root(self.uri)))
            self._client = client
        return self._client

    def open(self, key: str | None, name: str, tags: Mapping[str, str], parent: Any = None,
             fresh: bool = False) -> "MlflowRun":
        client = self._connect()
        found = []
        if key is not None:
            found = client.search_runs([self._experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key_hash(key)}'",
                                       max_results=1)
        if found and fresh:
            client.set_tag(found[0].info.run_id, KEY_TAG, f"{key_hash(key)}.replaced")  # type: ignore[arg-type]
        elif found:
            run = MlflowRun(client, found[0])
            if not run.complete:
                client.update_run(run.id, status="RUNNING")
            return run
        own = {**tags, **({KEY_TAG: key_hash(key), "bbtune.key_path": key} if key is not None else {})}
        if parent is not None:
            own["mlflow.parentRunId"] = parent.id
        return MlflowRun(client, client.create_run(self._experiment_id, tags=own, run_name=name))


class MlflowRun:
    """One MLflow run; params it holds already are not sent again (MLflow refuses a changed value)."""

    def __init__(self, client: Any, run: Any):
        self.client, self.id = client, run.info.run_id
        self.complete = run.data.tags.get(COMPLETE_TAG) == "yes"
        self._params = dict(run.data.params)

    def last_step(self) -> int:
        return max((m.step for m in self.client.get_metric_history(self.id, STEP_KEY)), default=-1)

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        new = [Param(k, v) for k, v in params.items() if k not in self._params]
        for start in range(0, len(new), PARAM_BATCH):
            self.client.log_batch(self.id, params=new[start : start + PARAM_BATCH])
        self._params.update((p.key, p.value) for p in new)

    def log_metrics(self, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for step, values in steps for k, v in values.items()]
        for start in range(0, len(metrics), METRIC_BATCH):
            self.client.log_batch(self.id, metrics=metrics[start : start + METRIC_BATCH])

    def log_summary(self, metrics: Mapping[str, float], step: int) -> None:
        self.log_metrics([(step, metrics)])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_text(self, name: str, text: str) -> None:
        self.client.log_text(self.id, text, name)

    def log_file(self, path: Path) -> None:
        self.client.log_artifact(self.id, str(path))

    def finish(self, status: str) -> None:
        """FINISHED marks the run complete; FAILED or KILLED leaves it open to a resumed run."""
        if status == "FINISHED":
            self.set_tags({COMPLETE_TAG: "yes"})
        self.client.set_terminated(self.id, status)


def _artifact_root(uri: str) -> str | None:
    """``artifacts/`` beside a local SQLite database; None (the store's own default) for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()


class TensorBoardTracker:
    """Runs as folders of event files under `logdir` (a child under its parent's folder): point
    ``tensorboard --logdir`` at it. Params become a text table and, with the final metrics, the HParams view."""

    close_timeout_s = TRACK_CLOSE_TIMEOUT_S

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)

    def __str__(self) -> str:
        return f"tensorboard ({self.logdir})"

    @property
    def ui(self) -> str:
        return f"tensorboard --logdir {self.logdir}"

    def open(self, key: str | None, name: str, tags: Mapping[str, str], parent: Any = None,
             fresh: bool = False) -> "TensorBoardRun":
        base = parent.path if parent is not None else self.logdir
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = base / (_slug(name) if key is not None else f"{_slug(name)}-{stamp}")
        if fresh and path.is_dir():
            path.rename(path.with_name(f"{path.name}.replaced-{stamp}"))
        return TensorBoardRun(path, tags)


class TensorBoardRun:
    """One TensorBoard run folder. What it holds already is read with TensorBoard's event loader; a resumed run
    appends a new event file to the same folder (TensorBoard reads a folder's files as one run)."""

    def __init__(self, path: Path, tags: Mapping[str, str]):
        from torch.utils.tensorboard import SummaryWriter

        self.path, self.tags = path, dict(tags)
        self.complete, self._last = _scan(path)
        self.writer = SummaryWriter(str(path))
        if not self.complete:
            self.writer.add_text("tags", _table(self.tags))

    def last_step(self) -> int:
        return self._last

    def log_params(self, params: Mapping[str, str]) -> None:
        self.writer.add_text("config", _table(params))

    def log_metrics(self, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        for step, values in steps:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
        self._last = max([self._last, *(step for step, _ in steps)])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)
        self.writer.add_text("tags", _table(self.tags))

    def log_text(self, name: str, text: str) -> None:
        self.writer.add_text(name, "```\n" + text + "\n```")

    def log_file(self, path: Path) -> None:
        """Text files as text summaries (TensorBoard keeps no files); binary ones are left in the run folder."""
        try:
            self.log_text(path.name, path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            pass

    def log_summary(self, metrics: Mapping[str, float], step: int) -> None:
        """The final metrics, and the tags with them in the HParams view (runs side by side)."""
        from torch.utils.tensorboard.summary import hparams

        for summary in hparams(self.tags, dict(metrics)):
            self.writer.file_writer.add_summary(summary)  # type: ignore[attr-defined,union-attr]
        self.log_metrics([(step, metrics)])

    def finish(self, status: str) -> None:
        if status == "FINISHED":
            self.writer.add_text(COMPLETE_TAG, "yes")
        self.writer.close()


def _scan(path: Path) -> tuple[bool, int]:
    """(complete, last curve step) of the events already in `path`, read with TensorBoard's own loader."""
    if not path.is_dir():
        return False, -1
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    complete, last = False, -1
    for file in sorted(path.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(file)).Load():
            for value in event.summary.value:
                complete |= value.tag.startswith(COMPLETE_TAG)
                if value.tag == STEP_KEY:
                    last = max(last, event.step)
    return complete, last


def _table(values: Mapping[str, Any]) -> str:
    """A Markdown table TensorBoard's text view renders."""
    rows = [f"| {k} | {json.dumps(v) if not isinstance(v, str) else v} |" for k, v in values.items()]
    return "\n".join(["| name | value |", "|---|---|", *rows])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "run"
