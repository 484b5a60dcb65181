"""cpu_q4: 4-bit (Q4_0, Q4_1) weights with integer SIMD kernels; F32/F16 matrices are quantized to Q4_0 at load."""

from __future__ import annotations

from collections.abc import Callable

from llama2.native import NativeBackend, native_backend
from llama2.plugins import hookimpl


@hookimpl
def register_backends(register: Callable[[NativeBackend], None]) -> None:
    register(native_backend(__name__, "llama2_cpu_q4"))
