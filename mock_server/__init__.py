"""An OpenAI-compatible server over a local model (tiny or SmolLM2), with seeded fault injection.

Run it: ``python -m mock_server --model smollm2 --port 8000`` (see ``python -m mock_server --help``).
In tests: ``with MockServer(ServerConfig(model="tiny", port=0)) as server: ... server.url ...``, or with no
sockets at all: ``httpx.AsyncClient(transport=mock_transport(MockApp(...)))``.
"""
from .app import MockApp, Reply
from .config import EchoSupport, FaultConfig, FaultKind, FaultRule, ServerConfig
from .scorer import Scorer, shared_scorer
from .server import MockServer
from .transport import mock_transport

__all__ = ["EchoSupport", "FaultConfig", "FaultKind", "FaultRule", "MockApp", "MockServer", "Reply", "Scorer",
           "ServerConfig", "mock_transport", "shared_scorer"]
