"""The plugin surface: what a backend package implements (pluggy hooks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .native import NativeBackend

hookspec = pluggy.HookspecMarker("llama2")
hookimpl = pluggy.HookimplMarker("llama2")


@hookspec
def register_backends(register: Callable[[NativeBackend], None]) -> None:
    """Register backends by calling register(backend) for each."""
