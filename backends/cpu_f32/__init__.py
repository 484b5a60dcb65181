"""cpu_f32: the reference-precision CPU backend; other file types are dequantized at load."""

from __future__ import annotations

from collections.abc import Callable

from llama2.native import NativeBackend, native_backend
from llama2.plugins import hookimpl


@hookimpl
def register_backends(register: Callable[[NativeBackend], None]) -> None:
    register(native_backend(__name__, "llama2_cpu_f32"))
