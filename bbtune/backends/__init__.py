"""Backends: everything model- or server-specific lives behind `Backend.score`."""
from bbtune.backends.base import Backend, Capabilities, CallStats
from bbtune.backends.remote import RemoteBackend, RemoteConfig

__all__ = ["Backend", "Capabilities", "CallStats", "RemoteBackend", "RemoteConfig"]
