"""llama2: LLaMA-2 inference and quantization with pluggable C and CUDA backends."""

from __future__ import annotations

from .errors import (
    BackendError,
    BackendUnavailableError,
    ChatTemplateError,
    ContextOverflowError,
    InsufficientMemoryError,
    Llama2Error,
    ModelFormatError,
    UnsupportedModelError,
)
from .generation import Generation
from .model import Model, Session, load
from .plugins import backends as list_backends
from .plugins import hookimpl
from .sampling import Sampler, SamplingParams
from .streaming import StopReason

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ChatTemplateError",
    "ContextOverflowError",
    "Generation",
    "InsufficientMemoryError",
    "Llama2Error",
    "Model",
    "ModelFormatError",
    "Sampler",
    "SamplingParams",
    "Session",
    "StopReason",
    "UnsupportedModelError",
    "__version__",
    "hookimpl",
    "list_backends",
    "load",
]
