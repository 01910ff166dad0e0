"""A sweep spec: grids of tasks, models, seeds, methods and settings in a TOML file (read with the stdlib
`tomllib`), expanded into jobs. Every combination is one `Job`, named from its grid coordinates.

    [sweep]                        # how to run it: `SweepConfig` fields (flags of `bbtune sweep` override them)
    out = "sweeps/sst2"
    retries = 1
    track = "mlflow"               # optional: a parent run in MLflow (or TensorBoard) with a child per finished job

    [grid]                         # every combination of these is one job
    methods = ["manual", "bbt_soft", "bbt_hard"]
    seeds = [13, 42, 100]
    models = ["smollm2"]           # local names/paths, or tables: {name = "vllm", backend = "remote", base_url = "...",
                                   #                                model = "...", mode = "top_logprobs"}
    tasks = [{name = "sst2", data = "../shared/data/sst2", preset = "sentiment", k = 16}]  # TaskConfig fields

    [grid.settings]                # optional axes over settings: one value per job
    budget_calls = [100, 300]

    [settings]                     # fixed TuneConfig fields and the methods' own (grad_steps, pt_lr, pez_lr, ...)
    popsize = 10

    >>> spec = SweepSpec.from_dict({"grid": {"methods": ["manual"], "seeds": [1, 2], "models": ["tiny"],
    ...                                      "tasks": ["demo"]}}, name="x")
    >>> [job.name for job in spec.jobs]
    ['demo-tiny-manual-s1', 'demo-tiny-manual-s2']
"""
from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from bbtune.app.compare import CompareConfig, check_methods
from bbtune.app.comparison import MethodSettings
from bbtune.backends.factory import LocalConfig
from bbtune.backends.remote import RemoteConfig
from bbtune.errors import ConfigError
from bbtune.core.secrets import remember_header
from bbtune.runs.folder import to_jsonable
from bbtune.runs.tracking import TRACK_FIELDS, Track, require
from bbtune.runs.tuner import TuneConfig
from bbtune.tasks import TaskConfig

TABLES = ("sweep", "grid", "settings")
GRID_KEYS = ("methods", "seeds", "models", "tasks", "settings")
TUNE_FIELDS = tuple(f.name for f in fields(TuneConfig)
                    if f.name != "seed" and f.name not in TRACK_FIELDS)  # the grid's seed is the seed; [sweep] tracks
METHOD_FIELDS = ("grad_steps", "grad_batch_size", "pt_lr", "pez_lr", "shots_per_class")  # CompareConfig's own
LIMITS = ("max_requests", "max_tokens", "max_cost")


@dataclass(frozen=True)
class SweepConfig:
    """How a sweep runs (not what it computes: a job's folder does not depend on these)."""

    out: str = field(default="", metadata={"help": "sweep folder (default: sweeps/<spec file name>)"})
    workers: int = field(default=0, metadata={"help": "local pool: worker processes; 0 = by cores and memory"})
    retries: int = field(default=1, metadata={"help": "times a failed job is run again before it is reported"})
    memory_per_job_mb: float = field(default=1500.0, metadata={
        "help": "memory one job needs (its model included): sizes the local pool, declared to Ray"})
    threads_per_job: int = field(default=0, metadata={"help": "torch threads per job; 0 = cores // workers"})
    ray_address: str = field(default="", metadata={
        "help": "run the jobs on Ray: 'auto' (a running cluster), 'ray://HOST:10001', or 'local' (start one here)"})
    ray_num_cpus: float = field(default=1.0, metadata={"help": "Ray: CPUs each job declares"})
    ray_num_gpus: float = field(default=0.0, metadata={"help": "Ray: GPUs each job declares (1 = a model replica per GPU)"})
    max_requests: int = field(default=0, metadata={
        "help": "remote models: HTTP requests for the whole sweep (0 = none), divided among the remote jobs up front"})
    max_tokens: int = field(default=0, metadata={"help": "remote models: tokens for the whole sweep, divided likewise"})
    max_cost: float = field(default=0.0, metadata={"help": "remote models: cost for the whole sweep, divided likewise"})
    track: Track = field(default=Track.NONE, metadata={
        "help": "report the sweep to mlflow or tensorboard: a parent run, a child per job as it finishes"})
    track_uri: str = field(default="", metadata={
        "help": "--track's store (default: sqlite mlruns/mlflow.db, or tensorboard/, beside the sweep folder)"})

    def __post_init__(self) -> None:
        for name in ("workers", "retries", "threads_per_job", *LIMITS):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.memory_per_job_mb <= 0:
            raise ConfigError(f"memory_per_job_mb must be > 0, got {self.memory_per_job_mb}")
        object.__setattr__(self, "track", require(self.track))


@dataclass(frozen=True)
class Job:
    """One grid point: one method on one seed, task and model, with its settings. `name` is its folder's name."""

    name: str
    method: str
    seed: int
    task: dict[str, Any]  # TaskConfig fields (data_seed is the seed)
    model: dict[str, Any]  # {"backend": "local" | "remote", **LocalConfig or RemoteConfig fields}
    settings: dict[str, Any]  # TuneConfig fields and METHOD_FIELDS
    coords: dict[str, Any]  # the grid coordinates: task, model, method, seed and the settings axes

    def __post_init__(self) -> None:
        headers = self.model.get("extra_headers") or ()
        for header in (headers.values() if isinstance(headers, Mapping) else headers):
            remember_header(str(header))  # the sweep's own files and messages hide them (job.json keeps names)

    def as_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Job":
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    def task_config(self) -> TaskConfig:
        return TaskConfig(**{**self.task, "data_seed": self.seed})

    def method_settings(self) -> MethodSettings:
        tune = TuneConfig(**{k: v for k, v in self.settings.items() if k in TUNE_FIELDS}, seed=self.seed)
        methods = CompareConfig(**{k: v for k, v in self.settings.items() if k in METHOD_FIELDS})
        return methods.settings(tune)

    @property
    def remote(self) -> bool:
        return self.model.get("backend", "local") == "remote"

    def backend_configs(self) -> tuple[str, LocalConfig | None, RemoteConfig | None]:
        """("local", LocalConfig, None) or ("remote", None, RemoteConfig)."""
        options = {k: v for k, v in self.model.items() if k not in ("backend", "name")}
        if self.remote:
            return "remote", None, RemoteConfig(**options)
        return "local", LocalConfig(**options), None

    def with_limits(self, shares: Mapping[str, float]) -> "Job":
        """A remote job with its share of the sweep's limits (the smaller where the model sets its own)."""
        if not self.remote or not shares:
            return self
        model = dict(self.model)
        for name, share in shares.items():
            own = model.get(name) or 0
            model[name] = min(own, share) if own else share
        return replace(self, model=model)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    jobs: tuple[Job, ...]
    config: SweepConfig
    source: dict[str, Any]  # the spec as read (kept in the sweep folder and the report)

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep spec {path} does not exist; give a TOML file (see benchmarks/specs/)")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"sweep spec {path} is not valid TOML: {err}") from None
        return cls.from_dict(data, name=path.stem)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "sweep") -> "SweepSpec":
        unknown = sorted(set(data) - set(TABLES))
        if unknown:
            raise ConfigError(f"sweep spec: unknown tables {unknown}; a spec has [{'], ['.join(TABLES)}]")
        config = _config(data.get("sweep", {}))
        jobs = expand(data.get("grid", {}), data.get("settings", {}))
        return cls(str(data.get("sweep", {}).get("name", name)), jobs, config, to_jsonable(dict(data)))

    def with_config(self, **changes: Any) -> "SweepSpec":
        return replace(self, config=replace(self.config, **changes))

    def limit_shares(self) -> dict[str, float]:
        """Each remote job's share of the sweep-wide limits: the limit divided by the number of remote jobs.

        Divided up front rather than drawn from a shared ledger: a job's share does not depend on which jobs ran
        first or where, so the same job gives the same folder on a laptop pool or a Ray cluster, a resumed sweep
        gives its jobs the same shares, and no lock has to work across machines (flock on network storage is not
        to be trusted). The cost: a job that stops under its share leaves the rest unused."""
        remote = sum(job.remote for job in self.jobs)
        shares: dict[str, float] = {}
        for name in LIMITS:
            limit = getattr(self.config, name)
            if limit and remote:
                shares[name] = limit / remote if name == "max_cost" else max(1, int(limit) // remote)
        return shares


def _config(table: Mapping[str, Any]) -> SweepConfig:
    known = {f.name for f in fields(SweepConfig)}
    unknown = sorted(set(table) - known - {"name"})
    if unknown:
        raise ConfigError(f"sweep spec [sweep]: unknown keys {unknown}; known: name, {', '.join(sorted(known))}")
    return SweepConfig(**{k: v for k, v in table.items() if k in known})


def expand(grid: Mapping[str, Any], settings: Mapping[str, Any]) -> tuple[Job, ...]:
    """Every combination of the grid, in order task, model, settings, method, seed (seeds vary fastest)."""
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"sweep spec [grid]: unknown keys {unknown}; known: {', '.join(GRID_KEYS)}")
    methods = check_methods(_list(grid, "methods", ["bbt_soft"]))
    seeds = [int(s) for s in _list(grid, "seeds", [13])]
    tasks = _named(_list(grid, "tasks", ["demo"]), "tasks", _task)
    models = _named(_list(grid, "models", ["smollm2"]), "models", _model)
    axes = dict(grid.get("settings", {}))
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep spec [grid.settings]: {key} must list its values, e.g. {key} = [1, 2]")
    for key in [*settings, *axes]:
        if key in TRACK_FIELDS:
            raise ConfigError(f"sweep spec: {key} is a [sweep] key (where the sweep is reported), not a setting")
        if key not in TUNE_FIELDS and key not in METHOD_FIELDS:
            raise ConfigError(f"sweep spec: setting {key!r} is not known; settings are TuneConfig fields "
                              f"({', '.join(TUNE_FIELDS)}) and {', '.join(METHOD_FIELDS)} (the seed is the grid's)")
    jobs = []
    points = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    for (task_name, task), (model_name, model), point, method, seed in itertools.product(
            tasks, models, points, methods, seeds):
        merged = {**settings, **point}
        coords = {"task": task_name, "model": model_name, "method": method, "seed": seed, **point}
        name = "-".join([_slug(task_name), _slug(model_name), method, f"s{seed}",
                         *(_slug(f"{k}{v}") for k, v in point.items())])
        jobs.append(Job(name, method, seed, task, model, to_jsonable(merged), to_jsonable(coords)))
    _check(jobs)
    return tuple(jobs)


def _check(jobs: list[Job]) -> None:
    """Bad settings fail before any job starts: every distinct config is built once."""
    names = [job.name for job in jobs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"sweep spec: jobs {twice} have the same name; give tasks and models distinct `name`s")
    seen: set[str] = set()
    for job in jobs:
        key = repr((job.task, job.model, job.settings))
        if key not in seen:
            seen.add(key)
            job.task_config(), job.method_settings(), job.backend_configs()


def _list(grid: Mapping[str, Any], key: str, default: list[Any]) -> list[Any]:
    value = grid.get(key, default)
    value = value if isinstance(value, list) else [value]
    if not value:
        raise ConfigError(f"sweep spec [grid]: {key} is empty; list at least one")
    return value


def _named(items: list[Any], key: str, parse: Any) -> list[tuple[str, dict[str, Any]]]:
    return [parse(item, key) for item in items]


def _task(item: Any, key: str) -> tuple[str, dict[str, Any]]:
    options = {"data": item} if isinstance(item, str) else dict(item)
    if "data" not in options:
        raise ConfigError(f"sweep spec [grid] {key}: {item!r} has no `data` (a folder, a file, hf:NAME or 'demo')")
    if "data_seed" in options:
        raise ConfigError("sweep spec: a task's data_seed is the grid's seed; list seeds in [grid] seeds")
    name = str(options.pop("name", "") or Path(str(options["data"])).name)
    known = {f.name for f in fields(TaskConfig)}
    bad = sorted(set(options) - known)
    if bad:
        raise ConfigError(f"sweep spec: task {name!r} has unknown options {bad}; known: {', '.join(sorted(known))}")
    return name, to_jsonable(options)


def _model(item: Any, key: str) -> tuple[str, dict[str, Any]]:
    options = {"model": item} if isinstance(item, str) else dict(item)
    kind = options.setdefault("backend", "local")
    if kind not in ("local", "remote"):
        raise ConfigError(f"sweep spec: model backend must be 'local' or 'remote', got {kind!r}")
    cls = RemoteConfig if kind == "remote" else LocalConfig
    known = {f.name for f in fields(cls)} | {"backend", "name"}
    bad = sorted(set(options) - known)
    if bad:
        raise ConfigError(f"sweep spec: {kind} model {options.get('name') or options.get('model')!r} has unknown "
                          f"options {bad}; known: {', '.join(sorted(known))}")
    name = str(options.get("name") or Path(str(options.get("model", kind))).name)
    return name, to_jsonable(options)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=]+", "_", str(text)).strip("_") or "x"
