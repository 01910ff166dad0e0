"""What `bbtune tune --resume RUN_DIR` may change, and the configs it rebuilds from the run folder.

A resumed run must compute exactly what the interrupted one would have, so every flag that shapes the
result (task, model, tuning, scoring) is refused with the reason. Flags that only decide how much may be
spent or how patiently the server is asked are applied, listed, and saved for the next resume:

    RESUMABLE = limits (--remote-max-requests/-tokens/-cost), --remote-max-retries, --remote-timeout-s,
                --remote-concurrency, --remote-replica-concurrency, --remote-api-key-env, --remote-extra-headers

Header values are never saved (they may hold credentials): give --remote-extra-headers again on resume.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from bbtune.app.flags import REMOTE_PREFIX, flag
from bbtune.backends.remote import RemoteConfig
from bbtune.core.options import known_fields
from bbtune.errors import ConfigError
from bbtune.runs.tracking import TRACK_FIELDS, redact

RESUMABLE = ("max_requests", "max_tokens", "max_cost", "max_retries", "timeout_s", "concurrency",
             "replica_concurrency", "api_key_env", "extra_headers")
ALWAYS_OK = frozenset({"resume", "no_progress", *TRACK_FIELDS})  # flags that never change what a run computes


def given_dests(argv: Sequence[str]) -> set[str]:
    """Dests of the flags written on the command line (argparse cannot tell a default from a given value)."""
    names = {token[2:].split("=", 1)[0].replace("-", "_") for token in argv if token.startswith("--")}
    return {n[3:] if n.startswith("no_") and n not in ALWAYS_OK else n for n in names}  # --no-calibrate: calibrate


def split_settings(remote: RemoteConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fingerprinted part, resumable settings) of the remote config as saved (no header values, no URL
    credentials: `RemoteConfig.public`)."""
    public = remote.public()
    return ({k: v for k, v in public.items() if k not in RESUMABLE},
            {k: v for k, v in public.items() if k in RESUMABLE})


def resumed_remote(saved_cli: dict[str, Any], settings: dict[str, Any], values: dict[str, Any],
                   given: set[str]) -> tuple[RemoteConfig, list[str]]:
    """The saved remote config with the given resumable flags applied; the applied ones as 'flag old -> new'.
    Raises ConfigError naming every other given flag and why it cannot change."""
    refused = sorted(given - ALWAYS_OK - {REMOTE_PREFIX + name for name in RESUMABLE})
    if refused:
        reasons = [f"{flag(d)} (" + ("--overwrite starts the run over" if d == "overwrite" else
                                     "would change what the run computes") + ")" for d in refused]
        raise ConfigError(f"--resume continues a run with its saved config; refused: {', '.join(reasons)}. Flags a "
                          f"resumed run takes: {', '.join(flag(REMOTE_PREFIX + n) for n in RESUMABLE)}. To change "
                          "anything else start a new run (another --run-dir, or --overwrite)")
    remote = {**saved_cli.get("remote", {}), **settings.get("remote", {}), "extra_headers": ()}
    applied = []
    for name in RESUMABLE:
        dest = REMOTE_PREFIX + name
        if dest in given:
            applied.append(f"{flag(dest)} {_shown(remote.get(name), name)} -> {_shown(values[dest], name)}")
            remote[name] = values[dest]
    return RemoteConfig(**known_fields(RemoteConfig, remote)), applied


def _shown(value: Any, name: str) -> str:
    if name == "extra_headers":  # values may be credentials
        return "[" + ", ".join(str(h).split(":", 1)[0] for h in (value or ())) + "]"
    return repr(value)


def tracking_settings(tune: Any) -> dict[str, Any]:
    """Where a run is reported (`TuneConfig.track`, `track_uri` without URL credentials), saved as a setting."""
    return redact({name: getattr(tune, name) for name in TRACK_FIELDS})


def resumed_tracking(tune: Any, settings: dict[str, Any], values: dict[str, Any], given: set[str]) -> Any:
    """The rebuilt TuneConfig reporting where the run did (its saved settings), or where --track now says."""
    saved = settings.get("track") or {}
    return dataclasses.replace(tune, **{name: values[name] if name in given else saved.get(name, getattr(tune, name))
                                        for name in TRACK_FIELDS})
