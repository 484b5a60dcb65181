"""cpu_q8: Q8_0 weights with integer SIMD kernels; other types are requantized to Q8_0 at load."""

from __future__ import annotations

from collections.abc import Callable

from llama2.native import NativeBackend, native_backend
from llama2.plugins import hookimpl


@hookimpl
def register_backends(register: Callable[[NativeBackend], None]) -> None:
    register(native_backend(__name__, "llama2_cpu_q8"))
