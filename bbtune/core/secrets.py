"""One policy for secrets (API keys, HTTP header values): what counts as one, how it is hidden, how it is checked.

Every file bbtune writes as text (`RunFolder.write_json`, `write_text`: run, sweep, report, errors) and every line
the CLI prints (`redacting_streams`, argparse errors included) goes through `redact`. It hides

- every value `remember`ed this process: the key read from the environment, header values, the values of
  key-like flags (found in argv before parsing, so a flag before the subcommand is covered too), and
- whatever has a key's shape even when nobody said it was one (``sk-...``, ``Bearer ...``).

Keys are checked before first use (`check_key`: no newline, control or non-ASCII character) and a key given where
a variable *name* goes is refused (`check_env_name`); neither error shows the value.

>>> remember("team-" + "abcdefgh")
>>> redact("Illegal header value b'Bearer sk-" + "abcdefgh12345678' for team-" + "abcdefgh")
"Illegal header value b'Bearer ***' for ***"
"""
from __future__ import annotations

import io
import re
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Sequence, TextIO

from bbtune.errors import ConfigError

MASK = "***"
SECRET_HINTS = ("auth", "key", "cookie", "token", "secret", "password")  # in a header or flag name: a secret value
# key-shaped text (OpenAI/Anthropic-style 'sk-...', Groq 'gsk_...', xAI 'xai-...', what follows Bearer or Basic)
_SHAPES = re.compile(r"(?<![A-Za-z0-9])(?:sk|gsk|xai)[-_][A-Za-z0-9_\-]{8,}"
                     r"|(?<=Bearer )[^\s'\"\\]+|(?<=Basic )[A-Za-z0-9+/=]{8,}", re.I)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MIN_LEN, _MIN_DISTINCT = 6, 4  # shorter or plainer values ('nlp', '000000') would mask ordinary text
_known: set[str] = set()


def is_secret_name(name: str) -> bool:
    """A header or flag whose name says it carries a credential (Authorization, X-Api-Key, --remote-api-key...)."""
    lowered = name.lower()
    return any(hint in lowered for hint in SECRET_HINTS)


def remember(value: str | None) -> None:
    """Hide `value` (stripped: a key file's newline is not part of it) in everything written or printed from now
    on."""
    value = (value or "").strip()
    if len(value) >= _MIN_LEN and len(set(value)) >= _MIN_DISTINCT:
        _known.add(value)


def forget() -> None:
    """Forget every remembered value (between tests; a long-lived process between unrelated jobs)."""
    _known.clear()


def remember_header(header: str) -> None:
    """Hide the value of a 'Name: value' header (whatever its name: a team id may be a credential too)."""
    value = header.partition(":")[2] if ":" in header else header
    if value.strip() not in ("Bearer", "Basic"):  # the shell split 'Authorization: Bearer KEY': KEY comes next
        remember(value)


def remember_argv(argv: Sequence[str]) -> None:
    """The values of key-like flags (``--remote-api-key sk-...``, ``--remote-extra-headers 'Authorization: ...'``),
    wherever they stand, before argparse sees (and may echo) them. A valid variable name is not a secret."""
    flag = ""
    for token in argv:
        if token.startswith("-"):
            name, eq, value = token.partition("=")
            flag = name.lower() if is_secret_name(name) or "header" in name.lower() else ""
            if eq and flag:
                _remember_flag_value(flag, value)
                flag = ""
        elif flag:
            _remember_flag_value(flag, token)
            flag = flag if "header" in flag else ""  # headers take several values


def _remember_flag_value(flag: str, value: str) -> None:
    if flag.endswith("-env") and _ENV_NAME.fullmatch(value) and not _SHAPES.search(value):
        return  # a variable's name, shown in messages ("set $OPENAI_API_KEY")
    remember_header(value) if "header" in flag else remember(value)


def redact(text: str) -> str:
    """`text` with every remembered value and everything key-shaped replaced by ``***``."""
    for value in sorted(_known, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return _SHAPES.sub(MASK, text)


def redact_json(obj: Any) -> Any:
    """`redact` over a JSON-like object; header lists ('Name: value') keep their names only."""
    if isinstance(obj, dict):
        return {k: (header_names(v) if k == "extra_headers" and isinstance(v, (list, tuple)) else redact_json(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_json(v) for v in obj]
    return redact(obj) if isinstance(obj, str) else obj


def header_names(headers: Sequence[Any]) -> list[str]:
    """'Name: ***' for each 'Name: value' header (the name says which header was sent, never what)."""
    return [f"{str(h).partition(':')[0].strip()}: {MASK}" for h in headers]


def check_key(value: str, where: str) -> None:
    """Refuse a key (or header value) that cannot go into an HTTP header, in one line that names `where` and never
    shows the value."""
    bad = next((c for c in value if not (32 <= ord(c) < 127)), None)
    if bad is None:
        return
    what = {"\n": "a newline", "\r": "a carriage return"}.get(bad, "a control character" if ord(bad) < 32 or
                                                              ord(bad) == 127 else "a non-ASCII character")
    raise ConfigError(f"{where} holds {what} (a key file read with its line end?); strip it, e.g. "
                      "export NAME=\"$(tr -d '\\r\\n' < keyfile)\" (the value is not shown)")


def check_env_name(name: str, field: str) -> None:
    """`name` must name an environment variable; a key given there is refused without echoing it."""
    if name and (not _ENV_NAME.fullmatch(name) or _SHAPES.search(name)):
        remember(name)
        raise ConfigError(f"{field} takes the name of an environment variable holding the key (e.g. OPENAI_API_KEY), "
                          "not the key itself; the value given is not a variable name and is not shown")


class _Redacting(io.TextIOBase):
    """A text stream that redacts what it writes to `inner` (the CLI's stdout and stderr)."""

    def __init__(self, inner: TextIO):
        self.inner = inner

    def write(self, text: str) -> int:
        self.inner.write(redact(text))
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")


@contextmanager
def redacting_streams() -> Iterator[None]:
    """stdout and stderr redacted while the CLI runs (its messages, progress bars, warnings, argparse errors)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Redacting(saved[0]), _Redacting(saved[1])  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
