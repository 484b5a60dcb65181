"""Typed exceptions: every failure a user can cause has a class and a clear message."""

from __future__ import annotations


class Llama2Error(Exception):
    """Base class of every error this package raises on purpose."""


class ModelFormatError(Llama2Error, ValueError):
    """The model file is malformed, truncated or not a llama GGUF file."""


class UnsupportedModelError(Llama2Error, ValueError):
    """The file is well-formed but uses something we do not run (architecture, tensor type)."""


class BackendError(Llama2Error, RuntimeError):
    """A backend refused or failed an operation; the message is the backend's own."""


class BackendUnavailableError(BackendError):
    """The named backend is unknown or not usable on this machine."""


class ContextOverflowError(Llama2Error, ValueError):
    """More tokens were asked for than the context holds."""

    def __init__(self, message: str, *, requested: int = 0, capacity: int = 0) -> None:
        super().__init__(message)
        self.requested = requested
        self.capacity = capacity


class ChatTemplateError(Llama2Error, ValueError):
    """The messages cannot be rendered: a broken or refusing chat template, or roles out of order."""
