"""Loading backend libraries through the C ABI (cffi, ABI mode).

The declarations come from the one header, backends/include/llama2_backend.h,
so Python and C cannot drift apart. cffi releases the GIL during calls, so
two threads can drive two contexts at once.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import sys
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cffi import FFI

from .errors import BackendError, BackendUnavailableError, ContextOverflowError, Llama2Error

if TYPE_CHECKING:
    from .model_file import ModelFile

ABI_MAJOR = 1

# libgomp reads this once, when the first backend library loads it. Its default
# spins ~300k iterations at every barrier, which is fastest on an idle machine but
# 5-10x slower when threads outnumber free cores (two chats at once in the web UI,
# a busy desktop). 10k spins measured as fast as the default on an idle 2-core
# machine (SmolLM2 Q4_0 decode 127 vs 119 tok/s) while yielding the core under load.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
_ERR_LEN = 1024
_STATUS_NAMES = {1: "invalid", 2: "unsupported", 3: "out of memory", 4: "context full", 5: "device error",
                 6: "internal error"}


@lru_cache(maxsize=1)
def header_text() -> str:
    return (importlib.resources.files("llama2.backends") / "include" / "llama2_backend.h").read_text()


@lru_cache(maxsize=1)
def ffi() -> FFI:
    text = header_text()
    match = re.search(r"/\* CFFI-BEGIN \*/(.*)/\* CFFI-END \*/", text, re.S)
    if match is None:
        raise Llama2Error("llama2_backend.h lacks its CFFI-BEGIN/CFFI-END markers")
    f = FFI()
    f.cdef(match.group(1))
    return f


def _library_file_name(stem: str) -> str:
    if sys.platform == "darwin":
        return f"lib{stem}.dylib"
    if sys.platform == "win32":
        return f"{stem}.dll"
    return f"lib{stem}.so"


def find_library(package: str, stem: str) -> Path | None:
    """Locate lib<stem>.so installed inside `package` (also in editable installs).

    Folders in $LLAMA2_LIBRARY_PATH (':'-separated) are searched first, so a
    sanitizer or debug build can stand in for the installed libraries.
    """
    import importlib

    file_name = _library_file_name(stem)
    candidates = [Path(d) / file_name for d in os.environ.get("LLAMA2_LIBRARY_PATH", "").split(os.pathsep) if d]
    try:
        candidates.append(Path(str(importlib.resources.files(package) / file_name)))
    except (ModuleNotFoundError, TypeError):
        pass
    module = importlib.import_module(package)
    for entry in getattr(module, "__path__", []):
        candidates.append(Path(entry) / file_name)
    # editable installs keep compiled files in site-packages, the Python files in the source tree
    rel = Path(*package.split("."))
    for entry in sys.path:
        if entry:
            candidates.append(Path(entry) / rel / file_name)
    for c in candidates:
        if c.is_file():
            return c
    return None


class NativeBackend:
    """One backend library: its function table and what it says about itself."""

    def __init__(self, lib_path: str | os.PathLike[str] | None, *, expected_name: str | None = None,
                 unavailable_reason: str | None = None) -> None:
        self.lib_path = Path(lib_path) if lib_path else None
        self.name = expected_name or "?"
        self.description = ""
        self.native_types: tuple[int, ...] = ()
        self.origin = "?"  # set by the registry: "package version"
        self._api: Any = None
        self._lib: Any = None
        self._load_error = unavailable_reason
        if self.lib_path is not None and unavailable_reason is None:
            self._open(expected_name)

    def _open(self, expected_name: str | None) -> None:
        f = ffi()
        try:
            self._lib = f.dlopen(str(self.lib_path))
            api = self._lib.llama2_backend_get()
        except (OSError, AttributeError) as exc:
            self._load_error = f"cannot load {self.lib_path}: {exc}"
            return
        if api == f.NULL:
            self._load_error = f"{self.lib_path}: llama2_backend_get() returned NULL"
            return
        if api.abi_major != ABI_MAJOR:
            self._load_error = f"{self.lib_path}: ABI version {api.abi_major}, this llama2 needs {ABI_MAJOR}"
            return
        if api.struct_size < f.sizeof("llama2_backend_api"):
            self._load_error = f"{self.lib_path}: function table too small ({api.struct_size} bytes)"
            return
        self._api = api
        self.name = f.string(api.name).decode()
        if expected_name is not None and self.name != expected_name:
            self._load_error = f"{self.lib_path} calls itself {self.name!r}, expected {expected_name!r}"
            self._api = None
            return
        self.description = f.string(api.description).decode() if api.description != f.NULL else ""
        types = []
        if api.native_types != f.NULL:
            i = 0
            while api.native_types[i] >= 0 and i < 64:
                types.append(int(api.native_types[i]))
                i += 1
        self.native_types = tuple(types)

    def probe(self) -> tuple[bool, str]:
        """(usable here, reason if not)."""
        if self._api is None:
            return False, self._load_error or "library not loaded"
        f = ffi()
        buf = f.new("char[]", 256)
        ok = bool(self._api.probe(buf, 256))
        return ok, "" if ok else (f.string(buf).decode(errors="replace") or "unusable")

    @property
    def api(self) -> Any:
        ok, reason = self.probe()
        if not ok:
            raise BackendUnavailableError(f"backend {self.name} is not usable here: {reason}")
        return self._api

    def load_model(self, model_file: ModelFile) -> NativeModel:
        return NativeModel(self, model_file)


def _raise_status(status: int, buf: Any, what: str) -> None:
    message = ffi().string(buf).decode(errors="replace") or _STATUS_NAMES.get(status, f"status {status}")
    if status == 4:
        raise ContextOverflowError(f"{what}: {message}")
    raise BackendError(f"{what}: {message}")


class NativeModel:
    """Weights loaded by a backend; shared read-only by every context made from it."""

    def __init__(self, backend: NativeBackend, model_file: ModelFile) -> None:
        f = ffi()
        self.backend = backend
        self.file = model_file
        hp = model_file.hparams
        tensors = list(model_file.tensors.values())
        self._keep: list[Any] = []  # cffi buffers and names must outlive the C model
        table = f.new("llama2_tensor[]", len(tensors))
        for i, t in enumerate(tensors):
            name = f.new("char[]", t.name.encode())
            buf = f.from_buffer("char[]", t.data, require_writable=False)
            self._keep += [name, buf]
            table[i].name = name
            table[i].type = t.type
            table[i].n_dims = len(t.ne)
            for d in range(4):
                table[i].ne[d] = t.ne[d] if d < len(t.ne) else 1
            table[i].data = buf
            table[i].n_bytes = t.n_bytes
        desc = f.new("llama2_model_desc *")
        desc.n_vocab, desc.n_embd, desc.n_layer = hp.n_vocab, hp.n_embd, hp.n_layer
        desc.n_head, desc.n_head_kv, desc.n_ff, desc.n_rot = hp.n_head, hp.n_head_kv, hp.n_ff, hp.rot_dims
        desc.n_ctx_train = hp.n_ctx_train
        desc.rms_eps, desc.rope_freq_base = hp.rms_eps, hp.rope_freq_base
        desc.n_tensors, desc.tensors = len(tensors), table
        self._keep += [table, desc]
        out = f.new("llama2_model **")
        err = f.new("char[]", _ERR_LEN)
        api = backend.api
        status = api.model_load(desc, out, err, _ERR_LEN)
        if status != 0:
            _raise_status(status, err, f"{backend.name} could not load {model_file.path.name}")
        self._ptr = out[0]
        self._lock = threading.Lock()
        self._contexts = 0
        model_file.release_resident_pages()

    @property
    def memory_bytes(self) -> int:
        return int(self.backend.api.model_memory(self._ptr)) if self._ptr is not None else 0

    def new_context(self, n_ctx: int, threads: int) -> NativeContext:
        if self._ptr is None:
            raise BackendError("the model was closed")
        return NativeContext(self, n_ctx, threads)

    def close(self) -> None:
        with self._lock:
            if self._ptr is not None and self._contexts == 0:
                self.backend.api.model_free(self._ptr)
                self._ptr = None
                self._keep.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to report to
            pass


class NativeContext:
    """One KV cache. Not thread-safe by itself: one thread drives a context at a time."""

    def __init__(self, model: NativeModel, n_ctx: int, threads: int) -> None:
        f = ffi()
        self.model = model
        self.n_ctx = n_ctx
        self.n_vocab = model.file.hparams.n_vocab
        out = f.new("llama2_context **")
        err = f.new("char[]", _ERR_LEN)
        status = model.backend.api.context_new(model._ptr, n_ctx, threads, out, err, _ERR_LEN)
        if status != 0:
            _raise_status(status, err, f"{model.backend.name} could not create a context of {n_ctx} tokens")
        self._ptr = out[0]
        self._err = err
        with model._lock:
            model._contexts += 1

    def eval(self, tokens: Sequence[int], pos: int, all_logits: bool = False) -> np.ndarray:
        """Logits [n_vocab] for the last token, or [len(tokens), n_vocab] with all_logits."""
        f = ffi()
        if self._ptr is None:
            raise BackendError("the session was closed")
        n = len(tokens)
        if n == 0:
            raise ValueError("eval needs at least one token")
        ids = np.asarray(tokens, dtype=np.int32)
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            bad = int(ids[(ids < 0) | (ids >= self.n_vocab)][0])
            raise ValueError(f"token id {bad} is outside the vocabulary of {self.n_vocab} tokens")
        if pos + n > self.n_ctx:
            raise ContextOverflowError(
                f"{pos + n} tokens do not fit in the context of {self.n_ctx}", requested=pos + n,
                capacity=self.n_ctx)
        logits = np.empty((n if all_logits else 1, self.n_vocab), dtype=np.float32)
        status = self.model.backend.api.eval(
            self._ptr, f.from_buffer("int32_t[]", ids), n, pos, 1 if all_logits else 0,
            f.from_buffer("float[]", logits), self._err, _ERR_LEN)
        if status != 0:
            _raise_status(status, self._err, f"{self.model.backend.name} eval failed")
        return logits if all_logits else logits[0]

    def truncate(self, n_pos: int) -> None:
        if self._ptr is not None:
            status = self.model.backend.api.truncate(self._ptr, n_pos)
            if status != 0:
                raise BackendError(f"truncate to {n_pos} failed (status {status})")

    def set_threads(self, threads: int) -> None:
        if self._ptr is not None:
            status = self.model.backend.api.set_threads(self._ptr, threads)
            if status != 0:
                raise BackendError(f"cannot use {threads} threads (status {status})")

    def close(self) -> None:
        if self._ptr is not None:
            self.model.backend.api.context_free(self._ptr)
            self._ptr = None
            with self.model._lock:
                self.model._contexts -= 1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to report to
            pass


def estimated_host_bytes(model_file: ModelFile, backend: NativeBackend, n_ctx: int) -> dict[str, int]:
    """Host memory a CPU backend will allocate for this file and one n_ctx-token context, by part.

    Mirrors the CPU engine's load policy (backends/common/model.c): a matrix of a type the
    backend does not compute natively is converted to its first native type; a quantized matrix
    is repacked into a copy of the same size; F32 matrices of cpu_f32 and the embedding table
    (unless tied to the output) stay in the mapped file. The KV cache is two f32 tensors of
    n_layer x n_ctx x kv_dim. An estimate, to refuse hopeless loads before allocating.
    """
    from .model_file import TYPE_IDS, tensor_nbytes

    hp = model_file.hparams
    native = set(backend.native_types)
    target = backend.native_types[0] if backend.native_types else TYPE_IDS["F32"]
    weights = 0
    for t in model_file.tensors.values():
        if len(t.ne) != 2 or (t.name == "token_embd.weight" and not model_file.tied_output):
            continue
        if t.type not in native:
            weights += tensor_nbytes(target, t.n_elements)
        elif t.type != TYPE_IDS["F32"]:
            weights += t.n_bytes
    kv_cache = 2 * 4 * hp.n_layer * n_ctx * hp.n_head_kv * hp.head_dim
    return {"weights": weights, "kv_cache": kv_cache}


def native_backend(package: str, stem: str) -> NativeBackend:
    """The backend whose library lib<stem> is installed in `package`; unusable with a reason if absent."""
    path = find_library(package, stem)
    name = package.rsplit(".", 1)[-1]
    if path is None:
        return NativeBackend(None, expected_name=name,
                             unavailable_reason=f"library {_library_file_name(stem)} was not built or installed")
    return NativeBackend(path, expected_name=name)
