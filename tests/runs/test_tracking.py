"""Tracking: runs reported to MLflow's real store and TensorBoard's real event files, read back with their own
readers (MlflowClient; TensorBoard's EventAccumulator): params, curve steps, final metrics and artifacts are
there, no API key is anywhere in them, a killed-and-resumed run logs each step once, a failing or stalled tracker
never fails or stalls the run, and a sweep is a parent run with a child per job."""
from __future__ import annotations

import importlib.util
import json
import shutil
import threading
import warnings
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from bbtune.app.cli import main  # noqa: E402
from bbtune.app.sweep import run_sweep  # noqa: E402
from bbtune.app.sweepspec import SweepSpec  # noqa: E402
from bbtune.app.track import track  # noqa: E402
from bbtune.errors import ConfigError  # noqa: E402
from bbtune.runs.tracking import TrackingWarning, params_of, redact  # noqa: E402
from bbtune.runs.tuner import TuneConfig, run_tuner  # noqa: E402

FAST = dict(budget_calls=30, popsize=6, prompt_tokens=3, intrinsic_dim=10, eval_every=12)
CANARY = "sk-canary-7f3a9c"


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made once (MLflow's migrations take seconds); tests copy it."""
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def store_in(folder: Path, empty_store: Path) -> MlflowClient:
    """The default store beside the run folders in `folder` (mlruns/mlflow.db), made from the template."""
    (folder / "mlruns").mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_store, folder / "mlruns" / "mlflow.db")
    return MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")


def mlflow_runs(client: MlflowClient) -> list:
    return client.search_runs([client.get_experiment_by_name("bbtune").experiment_id])


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_an_mlflow_run_holds_config_curve_result_and_files(tiny_task, tiny_backend, empty_store, tmp_path):
    client = store_in(tmp_path, empty_store)
    result = run_tuner(tiny_task, tiny_backend, TuneConfig(**FAST, track="mlflow"), tmp_path / "x", progress=False)
    (run,) = mlflow_runs(client)
    data, calls = run.data, [row["calls"] for row in result.curve]
    assert run.info.status == "FINISHED" and run.info.run_name == "x"
    assert data.params["tune.popsize"] == "6" and data.params["task.name"] == "tiny-sentiment"
    assert "tune.track" not in data.params  # where it is reported is no part of the run's config
    assert {k: data.tags[k] for k in ("task", "seed", "method")} == {"task": "tiny-sentiment", "seed": "42",
                                                                     "method": "bbt_soft"}
    assert steps(client, run.info.run_id, "curve/train_loss") == calls
    assert steps(client, run.info.run_id, "curve/dev_acc") == [r["calls"] for r in result.curve if "dev_acc" in r]
    assert data.metrics["test_acc"] == result.metrics["test_acc"]
    assert data.metrics["decision.p_value"] == result.metrics["decision"]["p_value"]
    assert data.tags["selected"] == result.metrics["selected"] and data.tags["decision"]
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"prompt.txt", "config.json", "metrics.json", "curve.csv", "hard_prompt.json"} <= files
    assert "checkpoint.pkl" not in files
    prompt = Path(client.download_artifacts(run.info.run_id, "prompt.txt", str(tmp_path / "dl"))).read_text()
    assert prompt == result.metrics["hard_prompt"]


def test_tensorboard_event_files_hold_the_curve_the_prompt_and_hparams(tiny_task, tiny_backend, tmp_path):
    result = run_tuner(tiny_task, tiny_backend, TuneConfig(**FAST, track="tensorboard"), tmp_path / "x", progress=False)
    acc = events(tmp_path / "tensorboard" / "x")
    assert [e.step for e in acc.Scalars("curve/train_loss")] == [row["calls"] for row in result.curve]
    assert acc.Scalars("test_acc")[-1].value == pytest.approx(result.metrics["test_acc"])
    texts = acc.Tags()["tensors"]
    assert {"prompt.txt/text_summary", "config/text_summary", "metrics.json/text_summary"} <= set(texts)
    prompt = acc.Tensors("prompt.txt/text_summary")[0].tensor_proto.string_val[0].decode()
    assert result.metrics["hard_prompt"] in prompt


class Interrupt(Exception):
    pass


class DiesAfter:
    """The tiny backend, killed (an exception out of `score`) after `calls` scoring calls: the run stops between
    two checkpoints like a killed process."""

    def __init__(self, inner, calls: int):
        self.inner, self.left = inner, calls

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score(self, *args, **kwargs):
        self.left -= 1
        if self.left < 0:
            raise Interrupt("killed")
        return self.inner.score(*args, **kwargs)


@pytest.mark.parametrize("kind", ["mlflow", "tensorboard"])
def test_a_killed_and_resumed_run_logs_each_step_once_and_a_new_run_starts_anew(tiny_task, tiny_backend, empty_store, tmp_path, kind):
    client = store_in(tmp_path, empty_store)
    config, run_dir = TuneConfig(**FAST, track=kind), tmp_path / "x"
    with pytest.raises(Interrupt):
        run_tuner(tiny_task, DiesAfter(tiny_backend, 12), config, run_dir, progress=False)
    result = run_tuner(tiny_task, tiny_backend, config, run_dir, progress=False, resume=True)
    calls = [row["calls"] for row in result.curve]
    if kind == "mlflow":
        (run,) = mlflow_runs(client)
        assert steps(client, run.info.run_id, "curve/train_loss") == calls and run.info.status == "FINISHED"
    else:
        assert sorted(e.step for e in events(tmp_path / "tensorboard" / "x").Scalars("curve/train_loss")) == calls
    assert track(run_dir, kind).skipped == [str(run_dir)]  # held complete: logging it again adds nothing
    run_tuner(tiny_task, tiny_backend, config, run_dir, progress=False, overwrite=True)  # a new run in the same folder
    if kind == "mlflow":
        runs = mlflow_runs(client)
        assert len(runs) == 2 and all(steps(client, r.info.run_id, "curve/train_loss") == calls for r in runs)
    else:
        assert len([p for p in (tmp_path / "tensorboard").iterdir() if p.name.startswith("x")]) == 2


def test_no_api_key_reaches_the_tracker(tiny_task, tiny_backend, empty_store, tmp_path, monkeypatch):
    """A remote run whose key (environment), header value and Python-side config all hold the canary: neither
    the MLflow store nor the TensorBoard event files contain it."""
    from mock_server import MockServer, ServerConfig, shared_scorer

    monkeypatch.setenv("CANARY_KEY", CANARY)
    store_in(tmp_path, empty_store)
    server = MockServer(ServerConfig(model="tiny", port=0, max_logprobs=400, api_key=CANARY),
                        scorer=shared_scorer("tiny")).start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for kind in ("mlflow", "tensorboard"):
                assert main(["tune", "--data", "demo", "--k", "4", "--backend", "remote", "--remote-base-url", server.url,
                             "--remote-model", "tiny", "--remote-local-model", "tiny", "--remote-top-k", "400",
                             "--remote-api-key-env", "CANARY_KEY", "--remote-extra-headers", f"X-Team-Token: {CANARY}",
                             "--mode", "hard", "--budget-calls", "12", "--popsize", "6", "--prompt-tokens", "3",
                             "--intrinsic-dim", "10", "--eval-every", "6", "--no-progress", "--track", kind,
                             "--run-dir", str(tmp_path / f"remote-{kind}")]) == 0
        finally:
            server.stop()
    assert not [w for w in caught if issubclass(w.category, TrackingWarning)]  # every tracker call went through
    run_tuner(tiny_task, tiny_backend, TuneConfig(**FAST, track="mlflow"), tmp_path / "py", progress=False,
         extra_config={"remote": {"api_key": CANARY, "base_url": f"http://me:{CANARY}@host/v1"}})
    assert CANARY not in (tmp_path / "py" / "config.json").read_text()  # the folder redacts it (one policy) ...
    tracked = [p for d in ("mlruns", "tensorboard") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert tracked and not [p for p in tracked if CANARY.encode() in p.read_bytes()]  # ... the tracker never


def test_redact_keeps_variable_names_and_drops_values():
    config = {"remote": {"api_key_env": "OPENAI_API_KEY", "api_key": CANARY, "extra_headers": [f"Authorization: {CANARY}"],
                         "base_url": f"http://user:{CANARY}@host:8000/v1", "max_tokens": 100}}
    params = params_of(config)
    assert params["remote.api_key_env"] == "OPENAI_API_KEY" and params["remote.max_tokens"] == "100"
    assert CANARY not in json.dumps(params) and params["remote.base_url"] == "http://host:8000/v1"
    assert redact({"backend_stats": {"prompt_tokens": 12}}) == {"backend_stats": {"prompt_tokens": 12}}


class BrokenTracker:
    close_timeout_s, ui = 5.0, ""

    def open(self, key, name, tags, parent=None, fresh=False):
        raise ConnectionError("tracking server unreachable")


class StalledRun:
    complete = False

    def __init__(self, release: threading.Event):
        self.release = release

    def last_step(self):
        return -1

    def log_metrics(self, steps):
        self.release.wait()  # a server that never answers

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class StalledTracker:
    close_timeout_s, ui = 0.2, ""

    def __init__(self):
        self.release = threading.Event()

    def open(self, key, name, tags, parent=None, fresh=False):
        return StalledRun(self.release)


def test_a_failing_tracker_warns_once_and_the_run_ends_as_without_it(tiny_task, tiny_backend, tmp_path):
    plain = run_tuner(tiny_task, tiny_backend, TuneConfig(**FAST), tmp_path / "plain", progress=False)
    with pytest.warns(TrackingWarning, match="unreachable") as caught:
        tracked = run_tuner(tiny_task, tiny_backend, TuneConfig(**FAST), tmp_path / "t", progress=False,
                       tracker=BrokenTracker())
    assert len([w for w in caught if issubclass(w.category, TrackingWarning)]) == 1
    assert tracked.curve == plain.curve and tracked.metrics["test_acc"] == plain.metrics["test_acc"]


def test_a_stalled_tracker_does_not_stall_the_run(tiny_task, tiny_backend, tmp_path):
    tracker = StalledTracker()
    try:
        with pytest.warns(TrackingWarning, match="still busy"):
            result = run_tuner(tiny_task, tiny_backend, TuneConfig(**FAST), tmp_path / "t", progress=False, tracker=tracker)
        assert result.metrics["ending"] and (tmp_path / "t" / "metrics.json").is_file()
    finally:
        tracker.release.set()


def test_a_missing_extra_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'bbtune\[mlflow\]'"):
        TuneConfig(track="mlflow")
    assert main(["tune", "--data", "demo", "--model", "tiny", "--track", "mlflow", "--no-progress"]) == 2


def test_tracking_flags_are_settings_a_resume_keeps(tiny_task, empty_store, tmp_path):
    """--track is saved as a setting (not in the fingerprinted config), so a run made before tracking existed
    resumes, and a resumed run reports where it did unless --track says otherwise."""
    args = ["tune", "--data", "demo", "--k", "4", "--model", "tiny", "--budget-calls", "12", "--popsize", "6",
            "--prompt-tokens", "3", "--intrinsic-dim", "10", "--eval-every", "6", "--no-progress"]
    store_in(tmp_path, empty_store)
    assert main([*args, "--track", "tensorboard", "--run-dir", str(tmp_path / "x")]) == 0
    config = json.loads((tmp_path / "x" / "config.json").read_text())
    assert "track" not in config["tune"] and "track" not in config["cli"]["tune"]
    assert config["settings"]["track"] == {"track": "tensorboard", "track_uri": ""}


def test_a_sweep_is_a_parent_run_with_a_child_per_job_and_track_logs_it_again(empty_store, tmp_path, capsys):
    """A tiny-model sweep tracked as it runs; then `bbtune track` on its folder into TensorBoard, and into MLflow
    again (every child held complete: nothing is logged twice)."""
    out = tmp_path / "sweeps" / "s"
    client = store_in(tmp_path / "sweeps", empty_store)
    spec = SweepSpec.from_dict({"sweep": {"out": str(out), "workers": 1, "track": "mlflow"},
                                "grid": {"methods": ["manual", "bbt_soft"], "seeds": [1], "models": ["tiny"],
                                         "tasks": [{"name": "demo", "data": "demo", "k": 2, "test_limit": 8}]},
                                "settings": {"budget_calls": 20, "popsize": 10, "intrinsic_dim": 8, "eval_every": 10}},
                               name="s")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_sweep(spec, progress=False)
    assert not result.failed and not [w for w in caught if issubclass(w.category, TrackingWarning)]
    runs = {r.info.run_name: r for r in mlflow_runs(client)}
    parent = runs.pop("sweep s")
    assert {"report.md", "results.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert set(runs) == {"demo-tiny-manual-s1", "demo-tiny-bbt_soft-s1"}
    for name, run in runs.items():
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert (tags["task"], tags["model"], tags["seed"], tags["method"]) == ("demo", "tiny", "1", name.split("-")[2])
        assert "test_acc" in run.data.metrics and run.info.status == "FINISHED"
    soft = runs["demo-tiny-bbt_soft-s1"].info.run_id
    assert steps(client, soft, "curve/train_loss") == [0, 10, 20] and "run.decision.p_value" in client.get_run(soft).data.metrics

    assert main(["track", str(out)]) == 0
    assert "0 run(s) logged, 2 held complete already" in capsys.readouterr().out
    assert main(["track", str(out), "--track", "tensorboard"]) == 0
    children = sorted(p.name for p in (tmp_path / "sweeps" / "tensorboard" / "sweep_s").iterdir() if p.is_dir())
    assert children == ["demo-tiny-bbt_soft-s1", "demo-tiny-manual-s1"]
    acc = events(tmp_path / "sweeps" / "tensorboard" / "sweep_s" / "demo-tiny-bbt_soft-s1")
    assert [e.step for e in acc.Scalars("curve/train_loss")] == [0, 10, 20]


def test_track_refuses_a_folder_bbtune_did_not_write(tmp_path, capsys):
    assert main(["track", str(tmp_path)]) == 2
    assert "neither a run folder" in capsys.readouterr().err


def test_mlflows_file_store_works_where_mlflow_allows_it(tiny_task, tiny_backend, tmp_path, monkeypatch):
    """MLflow >= 3.7 refuses its file store (./mlruns folders) unless MLFLOW_ALLOW_FILE_STORE is set; given that
    (or MLflow 2), --track-uri file:... logs the same run into it."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    result = run_tuner(tiny_task, tiny_backend, TuneConfig(**FAST, track="mlflow", track_uri=uri), tmp_path / "x",
                  progress=False)
    client = MlflowClient(uri)
    (run,) = mlflow_runs(client)
    assert steps(client, run.info.run_id, "curve/train_loss") == [row["calls"] for row in result.curve]
    assert "prompt.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert (tmp_path / "mlruns").is_dir() and not (tmp_path / "mlruns" / "mlflow.db").exists()
