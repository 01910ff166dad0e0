"""bbtune's exceptions, one hierarchy with one root.

    BBTuneError
    ├── ConfigError (ValueError)          bad option value in a config dataclass
    │   └── OutputExistsError             an output file or folder exists and --overwrite was not given
    ├── TaskError (ValueError)            data / template / verbalizer problems
    │   └── VerbalizerError               label word missing or not a single token
    ├── CapabilityError                   a backend cannot do what the run asks (soft prompts, echo, ...)
    ├── BudgetExceeded                    a hard limit (calls, requests, tokens, cost) would be crossed
    ├── CheckpointError                   a run folder cannot be resumed
    │   └── RunFolderError                in use by another process, or holds another run
    └── BackendError                      anything that went wrong talking to a model
        ├── APIConnectionError            no reply at all (refused, dropped, timed out)
        │   └── APITimeoutError
        ├── APIStatusError                a reply with an error status; carries status_code and body
        │   ├── AuthenticationError   401/403
        │   ├── NotFoundError         404 (unknown model or endpoint)
        │   ├── BadRequestError       400/422
        │   ├── RateLimitError        429
        │   └── ServerError           5xx
        └── MalformedResponseError        a 2xx reply we cannot read (never a silent zero score)

Connection errors are kept apart from status errors so retry policy can treat them separately.
"""
from __future__ import annotations


class BBTuneError(Exception):
    """Root of every error bbtune raises on purpose."""


class ConfigError(BBTuneError, ValueError):
    """A configuration field has a bad value; the message names the field."""


class OutputExistsError(ConfigError):
    """A command would replace files the user has (predictions, a report, an export) without --overwrite."""


class TaskError(BBTuneError, ValueError):
    """The task's data, template or verbalizer cannot be used as given."""


class VerbalizerError(TaskError):
    """A label has no verbalizer word, or its word is not exactly one token."""


class CapabilityError(BBTuneError):
    """The backend lacks a capability the run needs (e.g. soft prompts)."""


class BudgetExceeded(BBTuneError):
    """Running the next request would cross a hard limit the user set."""


class CheckpointError(BBTuneError):
    """A run folder is missing files or belongs to a different config."""


class RunFolderError(CheckpointError):
    """The run folder is locked by another process, or holds a run that must not be overwritten."""


class BackendError(BBTuneError):
    """Talking to a model failed."""


class APIConnectionError(BackendError):
    """The server could not be reached or dropped the connection."""


class APITimeoutError(APIConnectionError):
    """The server did not answer in time."""


class APIStatusError(BackendError):
    """The server answered with an error status."""

    def __init__(self, message: str, *, status_code: int, body: object = None):
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class AuthenticationError(APIStatusError):
    """401/403: the API key is missing or wrong."""


class NotFoundError(APIStatusError):
    """404: unknown model or endpoint."""


class BadRequestError(APIStatusError):
    """400/422: the server rejected the request's shape or options."""


class RateLimitError(APIStatusError):
    """429: too many requests."""


class ServerError(APIStatusError):
    """5xx: the server failed."""


class MalformedResponseError(BackendError):
    """A success reply whose body is not what the API promises."""
