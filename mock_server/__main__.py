"""``python -m mock_server --model smollm2 --port 8000``: serve a model over the OpenAI API, faults optional.

The flags are built from `ServerConfig` and `FaultConfig`; faults are ``--fault KIND:every=N,prob=P,limit=M``
(repeatable, KIND one of 429, 500, 503, malformed, truncated, drop) or ``--faults-config faults.json``.

Examples:
    python -m mock_server --model smollm2 --port 8000
    python -m mock_server --model tiny --port 8001 --api-key-env MOCK_KEY --fault 429:every=5 --latency-s 0.05
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import MISSING, fields, replace
from enum import Enum
from typing import Any, Sequence

from .config import FaultConfig, FaultRule, ServerConfig
from .server import MockServer


def _add_fields(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per dataclass field, typed from its default, with the field's help."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flag, default = "--" + f.name.replace("_", "-"), f.default if f.default is not MISSING else None
        kwargs: dict[str, Any] = {"default": default, "help": f.metadata.get("help", "")}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, Enum):
            kwargs.update(default=default.value, choices=[e.value for e in type(default)])
        elif isinstance(default, tuple):
            kwargs.update(nargs="*", default=list(default))
        elif isinstance(default, (int, float)):
            kwargs["type"] = type(default)
        parser.add_argument(flag, **kwargs)


def _pick(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for f in fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mock_server", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_fields(parser, ServerConfig)
    parser.add_argument("--api-key-env", help="read the required API key from this environment variable "
                                              "(keeps it out of the process list)")
    _add_fields(parser, FaultConfig, skip=("rules",))
    parser.add_argument("--fault", action="append", default=[], type=FaultRule.parse, metavar="KIND:every=N,...",
                        help="inject a fault; repeatable (kinds: 429, 500, 503, malformed, truncated, drop)")
    parser.add_argument("--faults-config", help="JSON file with FaultConfig fields (replaces the fault flags)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads (0 = torch's default); forwards run one at a time, and on a "
                             "busy CPU more threads make small models much slower")
    return parser


def configs(args: argparse.Namespace) -> tuple[ServerConfig, FaultConfig]:
    """The two configs the parsed flags describe (the key read from --api-key-env if given)."""
    config = ServerConfig(**_pick(ServerConfig, args))
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise SystemExit(f"error: ${args.api_key_env} is not set")
        config = replace(config, api_key=key)
    faults = (FaultConfig.from_json(args.faults_config) if args.faults_config
              else FaultConfig(rules=tuple(args.fault), **_pick(FaultConfig, args)))
    return config, faults


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    config, faults = configs(args)
    server = MockServer(config, faults, verbose=args.verbose)

    def announce(url: str) -> None:
        print(f"mock server: model {config.name!r} at {url} (key {'required' if config.api_key else 'not checked'}; "
              f"{len(faults.rules)} fault rule(s); stats at {url.removesuffix('/v1')}/stats)", flush=True)

    try:
        server.serve_forever(announce)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
