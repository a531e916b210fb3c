"""Errors that reach users, with a stable code (the server and client speak them).

Numpy-free and bpy-free: the add-on maps codes to messages with this module too.
"""

from __future__ import annotations


class LamHeadError(Exception):
    """An error the user can act on. ``message`` says what went wrong and what to do."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class BadInputError(LamHeadError):
    """The user's file (photo, avatar, motion, FLAME, checkpoint) is unusable."""

    code = "bad_input"


class NoFaceError(BadInputError):
    code = "no_face"


class MissingAssetError(LamHeadError):
    """A model asset is not installed; the message names the command that fixes it."""

    code = "missing_assets"


class CancelledError(LamHeadError):
    code = "cancelled"

    def __init__(self, message: str = "cancelled by the user"):
        super().__init__(message)


class CancelToken:
    """Cooperative cancellation: long jobs call :meth:`check` between steps."""

    def __init__(self) -> None:
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def check(self) -> None:
        if self._cancelled:
            raise CancelledError()
