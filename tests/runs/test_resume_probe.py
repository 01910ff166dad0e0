"""A resumed remote run probes the server on the sample its first run probed on: found on vLLM,
where a resumed BBT soft run's first call was a tuned candidate with 19% of its labels outside the top-1000,
and the probe refused a run it had let start (0% missing for the manual prompt)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bbtune.backends.remote import RemoteBackend, RemoteConfig
from bbtune.core.prompts import MANUAL_PROMPT
from bbtune.runs.folder import RunFolder
from bbtune.runs.tuner import TuneConfig, run_tuner
from bbtune.tasks import Task
from mock_server import MockApp, ServerConfig, mock_transport, shared_scorer

FAST = dict(prompt_tokens=3, intrinsic_dim=20, popsize=6, eval_every=12, p0="vocab", mode="soft")


class Recording(RemoteBackend):
    """Notes the prompt of every probe sample."""

    probed: list[Any] = []

    def check(self, sample: Any = None) -> Any:
        self.probed.append(sample[0] if sample else None)
        return super().check(sample)


def backend() -> Recording:
    app = MockApp(ServerConfig(model="tiny"), scorer=shared_scorer("tiny"))
    cfg = RemoteConfig(base_url="http://mock/v1", model="tiny", local_model="tiny", mode="prompt_embeds")
    return Recording(cfg, transport=mock_transport(app))


def test_a_resumed_run_probes_on_its_first_runs_sample_and_ends_as_an_uninterrupted_one(tiny_task: Task,
                                                                                          tmp_path: Path) -> None:
    cfg = TuneConfig(budget_calls=30, **FAST)  # type: ignore[arg-type]
    with backend() as whole:
        full = run_tuner(tiny_task, whole, cfg, tmp_path / "full", progress=False)
    with backend() as first:
        run_tuner(tiny_task, first, TuneConfig(budget_calls=12, **FAST), tmp_path / "part", progress=False)  # type: ignore[arg-type]
    # pretend the run was stopped after 12 calls: same folder, the whole budget
    folder = RunFolder(tmp_path / "part")
    ckpt = folder.load_checkpoint()
    ckpt["run_config"]["tune"]["budget_calls"] = 30
    folder.save_checkpoint(ckpt)
    (tmp_path / "part" / "metrics.json").unlink()
    Recording.probed.clear()
    with backend() as resumed_backend:
        resumed = run_tuner(tiny_task, resumed_backend, cfg, tmp_path / "part", progress=False, resume=True)
        reread = resumed_backend.stats.cache_hits
    assert len(Recording.probed) == 1 and Recording.probed[0] == MANUAL_PROMPT
    assert reread > 0  # the manual prompt's scores came from the run's saved replies
    assert np.array_equal(resumed.best_z, full.best_z) and resumed.curve == full.curve
