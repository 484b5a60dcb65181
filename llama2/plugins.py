"""The backend registry: one plugin manager, entry points loaded in one place.

Built-in backends are plugins exactly like third-party ones: each is a module
listed under the `llama2.backends` entry-point group. Set LLAMA2_LOAD_PLUGINS
to a comma-separated list of distribution names to load only those third-party
packages (empty: built-ins only), e.g. in tests.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading

import pluggy

from . import hookspecs
from .errors import BackendUnavailableError
from .hookspecs import hookimpl
from .native import NativeBackend

__all__ = ["backend", "backends", "hookimpl", "pm"]

ENTRY_POINT_GROUP = "llama2.backends"
_BUILTIN_DIST = "llama2"

pm = pluggy.PluginManager("llama2")
pm.add_hookspecs(hookspecs)

_lock = threading.Lock()
_loaded = False
_backends: dict[str, NativeBackend] = {}
_origins: dict[str, str] = {}  # plugin name -> "distribution version"
_collected: set[str] = set()


def _load_entry_points() -> None:
    allowed = os.environ.get("LLAMA2_LOAD_PLUGINS")
    allowed_set = None if allowed is None else {a.strip() for a in allowed.split(",") if a.strip()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        if allowed_set is not None and dist != _BUILTIN_DIST and dist not in allowed_set:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        pm.register(ep.load(), name=ep.name)
        _origins[ep.name] = f"{dist} {ep.dist.version}" if ep.dist is not None else "?"
    pm.check_pending()
    _collect()


def _collect() -> None:
    """Call every plugin's register_backends, remembering which package each backend came from."""
    for impl in pm.hook.register_backends.get_hookimpls():
        if impl.plugin_name in _collected:
            continue
        _collected.add(impl.plugin_name)
        origin = _origins.get(impl.plugin_name, "in-process")

        def register(b: NativeBackend, origin: str = origin) -> None:
            if not isinstance(b, NativeBackend):
                raise TypeError(f"register() takes a NativeBackend, got {type(b).__name__}")
            if b.name in _backends:
                raise ValueError(f"backend {b.name!r} registered twice ({_backends[b.name].origin} and {origin})")
            b.origin = origin
            _backends[b.name] = b

        impl.function(register=register)


def register_plugin(plugin: object, name: str, origin: str = "in-process") -> None:
    """Register a plugin object directly (for applications embedding llama2)."""
    with _lock:
        _ensure_loaded()
        pm.register(plugin, name=name)
        pm.check_pending()
        _origins[name] = origin
        _collect()


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        _load_entry_points()


def backends() -> dict[str, NativeBackend]:
    """Every registered backend by name, usable or not."""
    with _lock:
        _ensure_loaded()
        return dict(_backends)


def backend(name: str) -> NativeBackend:
    all_backends = backends()
    if name not in all_backends:
        known = ", ".join(sorted(all_backends)) or "none"
        raise BackendUnavailableError(f"no backend named {name!r} (registered: {known})")
    return all_backends[name]
