"""Where a sweep's jobs run: a local process pool (the default) or Ray. Both take a top-level function and its
arguments, and hand back what it returned or the `WorkerDied` that stopped it; neither knows what a job is.

- `PoolRunner`: `concurrent.futures.ProcessPoolExecutor` with the ``spawn`` context (a fresh interpreter per
  worker: no forked torch threads or CUDA state), sized by `pool_size` to the cores and the memory (one model per
  worker), each worker with ``cores // workers`` torch threads so workers do not fight over cores. A worker
  killed mid-job (``kill -9``, the OOM killer) breaks the pool: the jobs it held come back as `WorkerDied` and
  the next `submit` starts a new pool. The other way round, workers die with the sweep process (Linux), so a
  killed sweep leaves no job running; `--resume` finishes it.
- `RayRunner`: each job a Ray task declaring ``num_cpus``, ``num_gpus`` and ``memory``; Ray places it on any node,
  so the sweep folder must be on storage every node sees. Ray is optional (``pip install 'bbtune[ray]'``) and
  imported only here, only when asked for.

    >>> # with PoolRunner(*pool_size(n_jobs=8, memory_per_job_mb=1500)) as runner:
    >>> #     handle = runner.submit(run_job, job, folder); done = runner.wait()
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable

from bbtune.errors import BBTuneError, ConfigError

RAY_HINT = "pip install 'bbtune[ray]'"


class WorkerDied(BBTuneError):
    """The process running a job ended without an answer (killed, out of memory, a lost Ray node)."""


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_memory_mb() -> float | None:
    """MemAvailable of /proc/meminfo (None where there is none: then only the cores bound the pool)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def pool_size(n_jobs: int, memory_per_job_mb: float, workers: int = 0, threads: int = 0) -> tuple[int, int]:
    """(workers, torch threads per worker): as many workers as cores, jobs and memory allow (one model each),
    unless `workers` is given; threads share the cores among them."""
    if not workers:
        memory = available_memory_mb()
        by_memory = int(memory // memory_per_job_mb) if memory is not None else cores()
        workers = max(1, min(cores(), by_memory, max(n_jobs, 1)))
    return workers, threads or max(1, cores() // workers)


def set_threads(threads: int) -> None:
    """One worker's share of the cores, for torch and the BLAS/OpenMP pools behind it."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel sends this worker SIGTERM when the sweep process dies (killed, even by SIGKILL), so a
    stopped sweep never leaves workers running jobs on its cores; elsewhere a no-op. A parent already gone before
    the request took effect is caught by the pid check."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def init_worker(threads: int, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    set_threads(threads)


class PoolRunner:
    """Jobs on a local `spawn` process pool; see the module docstring."""

    def __init__(self, workers: int, threads: int):
        self.workers, self.threads = workers, threads
        self._pool: ProcessPoolExecutor | None = None
        self._pending: dict[Future[Any], Any] = {}

    def __enter__(self) -> "PoolRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _live_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=init_worker, initargs=(self.threads, os.getpid()))
        return self._pool

    def submit(self, fn: Callable[..., Any], *args: Any, tag: Any = None) -> None:
        try:
            future = self._live_pool().submit(fn, *args)
        except BrokenProcessPool:  # a worker died since the last wait: start over with a new pool
            self._restart()
            future = self._live_pool().submit(fn, *args)
        self._pending[future] = tag

    def wait(self) -> list[tuple[Any, Any]]:
        """(tag, returned value or WorkerDied) of at least one finished job."""
        done, _ = wait(list(self._pending), return_when=FIRST_COMPLETED)
        out, broken = [], False
        for future in done:
            tag = self._pending.pop(future)
            try:
                out.append((tag, future.result()))
            except BrokenProcessPool as err:
                broken = True
                out.append((tag, WorkerDied(f"a pool worker process died while the job ran or waited ({err})")))
        if broken:
            self._restart()
        return out

    def _restart(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"running a sweep on Ray (--ray-address) needs Ray: {RAY_HINT}") from None
    return ray


def _on_ray(fn: Callable[..., Any], threads: int, *args: Any) -> Any:
    set_threads(threads)
    return fn(*args)


class RayRunner:
    """Each job a Ray task with declared resources; `address` '' joins a Ray already initialized in this process,
    'local' starts one here, else it is passed to `ray.init` ('auto', 'ray://HOST:10001')."""

    def __init__(self, address: str, num_cpus: float = 1.0, num_gpus: float = 0.0, memory_mb: float = 1500.0,
                 threads: int = 0):
        self.ray = ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=None if address in ("", "local") else address, log_to_driver=False)
        self.threads = threads or max(1, int(num_cpus))
        self._task = ray.remote(_on_ray).options(num_cpus=num_cpus, num_gpus=num_gpus,
                                                 memory=int(memory_mb * 2**20), max_retries=0)
        self._pending: dict[Any, Any] = {}

    def __enter__(self) -> "RayRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def submit(self, fn: Callable[..., Any], *args: Any, tag: Any = None) -> None:
        self._pending[self._task.remote(fn, self.threads, *args)] = tag

    def wait(self) -> list[tuple[Any, Any]]:
        done, _ = self.ray.wait(list(self._pending), num_returns=1)
        out = []
        for ref in done:
            tag = self._pending.pop(ref)
            try:
                out.append((tag, self.ray.get(ref)))
            except Exception as err:  # a crashed worker or lost node: Ray's own error types
                out.append((tag, WorkerDied(f"the Ray task ended without an answer: {type(err).__name__}: {err}")))
        return out

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def close(self) -> None:
        for ref in self._pending:
            self.ray.cancel(ref, force=True)
        self._pending.clear()
