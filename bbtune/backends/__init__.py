"""Backends: everything model- or server-specific lives behind `Backend.score`."""
from .base import Backend, Capabilities, CallStats
from .remote import RemoteBackend, RemoteConfig

__all__ = ["Backend", "Capabilities", "CallStats", "RemoteBackend", "RemoteConfig"]
