"""cuda_q4: the 4-bit forward pass on an NVIDIA GPU; unusable, with the reason, where there is none."""

from __future__ import annotations

from collections.abc import Callable

from llama2.native import NativeBackend, native_backend
from llama2.plugins import hookimpl


@hookimpl
def register_backends(register: Callable[[NativeBackend], None]) -> None:
    register(native_backend(__name__, "llama2_cuda_q4"))
