"""The backend as a subprocess service: JSON lines over stdin/stdout (no network port)."""

from .stdio_server import Server

__all__ = ["Server"]
