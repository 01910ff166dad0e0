"""A checkpoint runs no code when read back, whatever a shared run folder holds; every run state bbtune
writes (soft, hard, random search, calibrated) reads back under the allow-list, and so does a plain new field."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from bbtune.app.cli import main
from bbtune.errors import CheckpointError
from bbtune.runs import safepickle
from bbtune.runs.folder import CHECKPOINT, METRICS, RunFolder
from bbtune.runs.tuner import _State

RUN = ["--data", "demo", "--k", "4", "--test-limit", "8", "--model", "tiny", "--prompt-tokens", "2",
       "--intrinsic-dim", "8", "--popsize", "4", "--budget-calls", "8", "--eval-every", "8", "--no-progress"]


class _Evil:
    """Unpickled plainly, it creates the canary file (the reported `os.system` payload, without a shell)."""

    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return os.mkdir, (str(self.canary),)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ck") / "run"
    assert main(["tune", *RUN, "--run-dir", str(run_dir)]) == 0
    return run_dir


def _unfinished(finished_run: Path, tmp_path: Path) -> Path:
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / METRICS).unlink()
    return run_dir


@pytest.mark.parametrize("header", [b"", safepickle.MAGIC], ids=["old-plain-pickle", "with-header"])
def test_a_malicious_checkpoint_runs_nothing_on_resume(finished_run, tmp_path, capsys, header):
    run_dir = _unfinished(finished_run, tmp_path)
    canary = tmp_path / "canary"
    (run_dir / CHECKPOINT).write_bytes(header + pickle.dumps({"state": _Evil(canary)}))
    assert main(["tune", "--resume", str(run_dir), "--no-progress"]) == 2
    assert not canary.exists()
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("bbtune: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert "was not read" in lines[0] and "--overwrite" in lines[0]
    assert ("posix.mkdir" in lines[0]) if header else ("older versions wrote a plain pickle" in lines[0])


def test_an_old_checkpoint_is_refused_with_the_reason(finished_run, tmp_path):
    run_dir = _unfinished(finished_run, tmp_path)
    state = safepickle.loads((run_dir / CHECKPOINT).read_bytes())
    (run_dir / CHECKPOINT).write_bytes(pickle.dumps(state))  # what bbtune wrote before the allow-list
    with pytest.raises(CheckpointError, match="not in this bbtune's checkpoint format"):
        RunFolder(run_dir).load_checkpoint()


def test_a_plain_new_state_field_needs_no_allow_list_change(tmp_path):
    state = _State()
    state.__dict__["added"] = {"arr": np.arange(3.0), "ints": np.int64(4), "f": np.float32(0.5), "s": "x",
                               "nested": [1, 2.5, None, True, {"k": (1, 2)}], "b": b"raw", "set": {1, 2}}
    folder = RunFolder(tmp_path)
    folder.save_checkpoint({"state": state})
    back = folder.load_checkpoint()["state"].added
    assert back["nested"] == [1, 2.5, None, True, {"k": (1, 2)}] and back["set"] == {1, 2}
    np.testing.assert_array_equal(back["arr"], np.arange(3.0))


@pytest.mark.parametrize("flags", [["--mode", "hard"], ["--optimizer", "random"], ["--calibrate"],
                                   ["--popsize", "5", "--budget-calls", "10", "--eval-every", "5"]],
                         ids=["hard", "random", "calibrate", "two-generations"])
def test_every_kind_of_run_resumes_under_the_allow_list(tmp_path, flags):
    run_dir = tmp_path / "run"
    assert main(["tune", *RUN, *flags, "--run-dir", str(run_dir)]) == 0
    RunFolder(run_dir).load_checkpoint()  # every global it names is allowed (a new one fails here, by name)
    (run_dir / METRICS).unlink()
    assert main(["tune", "--resume", str(run_dir), "--no-progress"]) == 0


def test_a_prompt_embeds_payload_runs_nothing_when_decoded(tmp_path):
    """The other file-like input bbtune unpickles: a `prompt_embeds` tensor (torch's weights-only loader)."""
    import base64
    import io

    import torch

    from bbtune.backends.wire import decode_embeds

    canary = tmp_path / "canary"
    buf = io.BytesIO()
    torch.save({"t": _Evil(canary)}, buf)
    with pytest.raises(Exception):  # noqa: B017 - torch's own refusal (UnpicklingError), whatever its type
        decode_embeds(base64.b64encode(buf.getvalue()))
    assert not canary.exists()


UNSAFE = ("pickle.load(", "pickle.loads(", "joblib", "eval(", "exec(", "marshal.load", "shelve", "dill")


def test_nothing_in_bbtune_reads_back_with_a_loader_that_runs_code():
    """Every file bbtune reads back is JSON, CSV, safetensors, or the allow-listed checkpoint (runs/safepickle.py);
    torch.load only with weights_only=True."""
    root = Path(__file__).resolve().parents[2]
    found = []
    for path in [*(root / "bbtune").rglob("*.py"), *(root / "mock_server").rglob("*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0].replace("safepickle.loads(", "")
            if path.name != "safepickle.py" and any(word in code for word in UNSAFE) and ".eval()" not in code:
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not found, found
