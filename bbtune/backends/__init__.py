"""Backends: everything model- or server-specific lives behind `Backend.score`."""
from .base import Backend, Capabilities, CallStats

__all__ = ["Backend", "Capabilities", "CallStats"]
