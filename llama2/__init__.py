"""llama2: LLaMA-2 inference and quantization with pluggable C and CUDA backends."""

from __future__ import annotations

from .errors import (
    BackendError,
    BackendUnavailableError,
    ContextOverflowError,
    Llama2Error,
    ModelFormatError,
    UnsupportedModelError,
)
from .model import Model, Session, load
from .plugins import backends as list_backends
from .plugins import hookimpl

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ContextOverflowError",
    "Llama2Error",
    "Model",
    "ModelFormatError",
    "Session",
    "UnsupportedModelError",
    "__version__",
    "hookimpl",
    "list_backends",
    "load",
]
