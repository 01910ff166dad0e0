"""The tuner's side of its run folder: the config before the first request, the checks a resumed run must pass
(same config, same data, same subspace, a ledger where requests were paid), the settings a resume may change, and
what a run refused at start-up leaves behind (nothing). The folder's own format is `bbtune.runs.folder`."""
from __future__ import annotations

from typing import Any

from bbtune.backends.retry import should_retry
from bbtune.errors import BBTuneError, BudgetExceeded, CheckpointError
from bbtune.runs.folder import CHECKPOINT, CONFIG, LEDGER, RunFolder, changed_fields, fingerprint, to_jsonable

DATA_FIELDS = ("task.data_sha256", "task.n_train", "task.n_dev", "task.n_test")  # what an edited data file changes


class RunStore:
    """One run's folder as the tuner writes and resumes it. Constructor stores; nothing is read or written until
    `begin` or `resume`."""

    def __init__(self, folder: RunFolder, run_config: dict[str, Any], settings: dict[str, Any]):
        self.folder, self.run_config, self.settings = folder, run_config, settings

    def begin(self, overwrite: bool) -> None:
        """A new run: claim the folder (one holding another run only with `overwrite`), then write the config, so
        that even a run killed at once resumes, and keeps its ledger (the tuner checkpoints next)."""
        self.folder.claim(overwrite)
        self.folder.write_json(CONFIG, {**self.run_config, "settings": self.settings,
                                        "fingerprint": fingerprint(self.run_config)})

    def abandon(self, err: BBTuneError, resume: bool) -> None:
        """A new run refused at start-up (a verbalizer, an input too long, a 401) leaves no folder behind: the
        corrected command starts afresh instead of meeting "an unfinished run; --resume", which could not change
        the bad flag. A limit or a transient failure keeps it: raise the limit, or try later, and --resume."""
        if not resume and not isinstance(err, BudgetExceeded) and not should_retry(err):
            self.folder.clear()

    def resume(self, subspace_fingerprint: str) -> dict[str, Any] | None:
        """The checkpoint a resumed run continues from, checked against this run; None where the folder holds only
        its config (its first checkpoint failed: disk full, ...), which the resumed run then starts."""
        self.folder.refuse_finished()  # before any request: its test scores are paid for already
        if not (self.folder.path / CHECKPOINT).exists() and (self.folder.path / CONFIG).exists():
            saved = self.folder.read_json(CONFIG)
            self.check_same_config({k: v for k, v in saved.items() if k not in ("settings", "fingerprint")})
            self.save_settings()
            return None
        ckpt: dict[str, Any] = self.folder.load_checkpoint()
        self.check_same_config(ckpt.get("run_config", {}))
        if ckpt["fingerprint"] != subspace_fingerprint:
            raise CheckpointError("the rebuilt subspace differs from the checkpoint's (another model or vocabulary?)")
        self.check_ledger(ckpt.get("backend_stats") or {})
        self.save_settings()
        return ckpt

    def save_settings(self) -> None:
        """A resumed run's changed settings (raised limits, ...) are saved, so the next resume keeps them."""
        saved = self.folder.read_json(CONFIG) if (self.folder.path / CONFIG).exists() else None
        if saved is not None and self.settings and saved.get("settings") != to_jsonable(self.settings):
            self.folder.write_json(CONFIG, {**saved, "settings": self.settings})

    def check_same_config(self, saved: dict[str, Any]) -> None:
        """A resumed run must compute what the first one would have: its config, task and data are unchanged."""
        changed = changed_fields(saved, self.run_config)
        if not changed:
            return
        data_only = all(c.startswith(DATA_FIELDS) for c in changed)
        why = ("the data files changed since the run started (the examples differ from the ones it was tuned on); "
               "restore them to resume" if data_only else
               "resume with the saved config (config.json must not be edited; restore the data files if they "
               "changed)")
        raise CheckpointError(f"{self.folder.path} was made with another config: {'; '.join(changed)}; {why}, or "
                              "start a new run (another run_dir, or overwrite=True)")

    def check_ledger(self, stats: dict[str, Any]) -> None:
        """Limits hold against the ledger: without it, a run that sent requests would start counting from zero."""
        sent = int(stats.get("requests", 0) or 0)
        if sent and not (self.folder.path / LEDGER).exists():  # only paid backends count requests
            raise CheckpointError(f"{self.folder.path / LEDGER} is missing but the checkpoint says {sent} requests were "
                                  "sent: without the ledger the limits (RemoteConfig.max_requests, RemoteConfig.max_tokens, "
                                  "RemoteConfig.max_cost) would count from zero again. Restore ledger.jsonl, or start "
                                  "a new run (another run_dir, or overwrite=True)")
