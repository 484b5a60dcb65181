"""Reading and validating llama GGUF model files.

Everything a backend will dereference is checked here first: the header,
every tensor's type, shape and byte range, and the hyper-parameters the
shapes must agree with. A malformed file raises ModelFormatError with the
reason; it never reaches C.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from .convert.gguf_writer import LlamaHParams, llama_tensor_shapes
from .errors import ModelFormatError, UnsupportedModelError

GGUF_MAGIC = b"GGUF"

# ggml type id -> (name, elements per block, bytes per block)
TENSOR_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    8: ("Q8_0", 32, 34),
}
TYPE_IDS = {name: type_id for type_id, (name, _, _) in TENSOR_TYPES.items()}

# Far above any real llama model, far below what would overflow 64-bit byte counts.
_MAX_DIM = 1 << 24
_MAX_ELEMENTS = 1 << 40
# gguf's reader keeps ~100 bytes of Python objects per array item: bound what a file can make it build.
# Real vocabularies have at most a few hundred thousand tokens and merges.
_MAX_ARRAY_ITEMS = 1 << 22
_MAX_ARRAY_NESTING = 4
_GGUF_ARRAY = int(gguf.GGUFValueType.ARRAY)  # a plain int: comparing numpy ints to the enum is slow
_ITEMSIZE: dict[Any, int] = {}  # numpy scalar type -> bytes, for the reader's bounds check


class FastGGUFReader(gguf.GGUFReader):
    """gguf's reader over a plain ndarray view of the mapping.

    np.memmap's per-slice hooks made opening SmolLM2 (49k tokens, 49k merges)
    take 5-10 s; a plain view of the same mapping takes under 2 s.
    """

    _nesting = 0  # depth of the array being read

    @property  # type: ignore[override]
    def data(self) -> np.ndarray:
        return self._plain_data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._plain_data = np.asarray(value)

    # gguf's _get returns a short (even empty) array past the end of the file
    # instead of failing, so an array declaring 2**40 items looped forever while
    # its list of empty parts grew without bound (found by fuzzing).
    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        itemsize = _ITEMSIZE.get(dtype) or _ITEMSIZE.setdefault(dtype, np.dtype(dtype).itemsize)
        end = offset + itemsize * int(count)
        if end > self._plain_data.size:
            raise ModelFormatError(
                f"truncated or corrupt: a read of bytes {offset}..{end} runs past the end of the file "
                f"({self._plain_data.size} bytes)")
        return super()._get(offset, dtype, count, override_order)

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list[np.ndarray], list[int], list[Any]]:
        if raw_type != _GGUF_ARRAY:  # the common case, once per array item: no more work
            return super()._get_field_parts(orig_offs, raw_type)
        count = int(self._get(orig_offs + 4, np.uint64)[0])
        if count > _MAX_ARRAY_ITEMS:
            raise ModelFormatError(f"a metadata array declares {count} items (at most {_MAX_ARRAY_ITEMS})")
        if self._nesting >= _MAX_ARRAY_NESTING:
            raise ModelFormatError(f"metadata arrays nested more than {_MAX_ARRAY_NESTING} deep")
        self._nesting += 1
        try:
            return super()._get_field_parts(orig_offs, raw_type)
        finally:
            self._nesting -= 1


def _is_kind(value: Any, kind: type) -> bool:
    """value has the GGUF type kind: int (not bool), float (int or float), str or bool."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def type_name(type_id: int) -> str:
    return TENSOR_TYPES[type_id][0] if type_id in TENSOR_TYPES else f"type {type_id}"


def tensor_nbytes(type_id: int, n_elements: int) -> int:
    _, block, size = TENSOR_TYPES[type_id]
    return n_elements // block * size


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: int
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    data: np.ndarray  # uint8 view into the mapped file

    @property
    def shape(self) -> tuple[int, ...]:
        """PyTorch order ([out, in] for a weight matrix)."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))

    @property
    def n_bytes(self) -> int:
        return int(self.data.nbytes)


class ModelFile:
    """A validated, memory-mapped llama GGUF file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no model file at {self.path}")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ModelFormatError(f"{self.path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')")
        self.file_size = size
        try:
            self._reader = FastGGUFReader(self.path)
        except ModelFormatError as exc:
            raise ModelFormatError(f"{self.path}: malformed GGUF: {exc}") from exc
        except (ValueError, IndexError, KeyError, OverflowError, MemoryError, UnicodeDecodeError,
                TypeError, AssertionError) as exc:
            raise ModelFormatError(f"{self.path}: malformed GGUF: {type(exc).__name__}: {exc}") from exc
        self._fields = self._reader.fields
        arch = self.get("general.architecture")
        if arch != "llama":
            raise UnsupportedModelError(f"{self.path}: architecture {arch!r} is not supported (only 'llama')")
        self.tensors = self._read_tensors()
        self.hparams = self._read_hparams()
        self._check_shapes()

    # --- metadata -----------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        field = self._fields.get(key)
        if field is None:
            return default
        try:
            return field.contents()
        except (ValueError, IndexError, UnicodeDecodeError, TypeError) as exc:
            raise ModelFormatError(f"{self.path}: metadata {key} is malformed: {exc}") from exc

    def keys(self) -> list[str]:
        return list(self._fields)

    def _int(self, key: str, default: int | None = None) -> int:
        value = self.get(key, default)
        if value is None:
            raise ModelFormatError(f"{self.path}: missing required metadata {key}")
        if not _is_kind(value, int):  # a float here (NaN, 32.5) is as malformed as a string
            raise ModelFormatError(f"{self.path}: metadata {key} should be an integer, found {value!r:.100}")
        if not 0 < value <= _MAX_DIM:
            raise ModelFormatError(f"{self.path}: metadata {key} = {value} is out of range")
        return int(value)

    def _float(self, key: str, default: float) -> float:
        value = self.get(key, default)
        if not _is_kind(value, float):
            raise ModelFormatError(f"{self.path}: metadata {key} should be a number, found {value!r:.100}")
        value = float(value)
        if not np.isfinite(value) or value <= 0:
            raise ModelFormatError(f"{self.path}: metadata {key} = {value} must be positive and finite")
        return value

    def _read_hparams(self) -> LlamaHParams:
        n_embd = self._int("llama.embedding_length")
        n_head = self._int("llama.attention.head_count")
        n_head_kv = self._int("llama.attention.head_count_kv", n_head)
        if n_embd % n_head or n_head % n_head_kv:
            raise ModelFormatError(
                f"{self.path}: n_embd={n_embd}, n_head={n_head}, n_head_kv={n_head_kv} do not divide evenly"
            )
        emb = self.tensors.get("token_embd.weight")
        if emb is None:
            raise ModelFormatError(f"{self.path}: missing tensor token_embd.weight")
        n_vocab = emb.ne[1] if len(emb.ne) == 2 else 0
        declared_vocab = self.get("llama.vocab_size")
        if declared_vocab is not None and (not _is_kind(declared_vocab, int) or declared_vocab != n_vocab):
            raise ModelFormatError(
                f"{self.path}: llama.vocab_size={declared_vocab} but token_embd.weight has {n_vocab} rows"
            )
        hp = LlamaHParams(
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_layer=self._int("llama.block_count"),
            n_head=n_head,
            n_head_kv=n_head_kv,
            n_ff=self._int("llama.feed_forward_length"),
            n_ctx_train=self._int("llama.context_length", 2048),
            rms_eps=self._float("llama.attention.layer_norm_rms_epsilon", 1e-5),
            rope_freq_base=self._float("llama.rope.freq_base", 10000.0),
            n_rot=self._int("llama.rope.dimension_count", n_embd // n_head),
        )
        if hp.rot_dims % 2 or hp.rot_dims > hp.head_dim:
            raise ModelFormatError(
                f"{self.path}: llama.rope.dimension_count={hp.rot_dims} must be even and at most "
                f"the head size {hp.head_dim}"
            )
        return hp

    # --- tensors ------------------------------------------------------------
    def _read_tensors(self) -> dict[str, TensorInfo]:
        tensors: dict[str, TensorInfo] = {}
        for t in self._reader.tensors:
            name = str(t.name)
            type_id = int(t.tensor_type)
            if type_id not in TENSOR_TYPES:
                raise UnsupportedModelError(
                    f"{self.path}: tensor {name} has type {getattr(t.tensor_type, 'name', type_id)}; "
                    f"supported: {', '.join(n for n, _, _ in TENSOR_TYPES.values())}"
                )
            ne = tuple(int(d) for d in t.shape)
            if not 1 <= len(ne) <= 4 or any(d <= 0 or d > _MAX_DIM * 64 for d in ne):
                raise ModelFormatError(f"{self.path}: tensor {name} has an invalid shape {list(ne)}")
            n_elements = int(np.prod(ne, dtype=np.float64))
            if n_elements > _MAX_ELEMENTS:
                raise ModelFormatError(f"{self.path}: tensor {name} declares {n_elements} elements")
            _, block, _ = TENSOR_TYPES[type_id]
            if ne[0] % block:
                raise ModelFormatError(
                    f"{self.path}: tensor {name} rows of {ne[0]} are not a multiple of {type_name(type_id)}'s "
                    f"block of {block}"
                )
            expected = tensor_nbytes(type_id, n_elements)
            start = int(t.data_offset)
            if start < 0 or start + expected > self.file_size:
                raise ModelFormatError(
                    f"{self.path}: tensor {name} needs bytes {start}..{start + expected} but the file has "
                    f"{self.file_size} (truncated or corrupt)"
                )
            data = np.asarray(t.data).reshape(-1).view(np.uint8)
            if data.nbytes != expected:
                raise ModelFormatError(
                    f"{self.path}: tensor {name} holds {data.nbytes} bytes, expected {expected}"
                )
            if name in tensors:
                raise ModelFormatError(f"{self.path}: tensor {name} appears twice")
            tensors[name] = TensorInfo(name, type_id, ne, data)
        return tensors

    def _check_shapes(self) -> None:
        # the writer's list of tensors, in PyTorch order; messages use the file's (ggml) order
        for name, shape in llama_tensor_shapes(self.hparams, tied_output=self.tied_output).items():
            t = self.tensors.get(name)
            if t is None:
                raise ModelFormatError(f"{self.path}: missing tensor {name}")
            if t.shape != shape:
                raise ModelFormatError(
                    f"{self.path}: tensor {name} has shape {list(t.ne)}, expected {list(reversed(shape))} "
                    f"from the hyper-parameters"
                )
        for t in self.tensors.values():
            if len(t.ne) == 1 and t.type != 0:
                raise UnsupportedModelError(f"{self.path}: 1-D tensor {t.name} must be F32")

    # --- summaries ----------------------------------------------------------
    @property
    def tied_output(self) -> bool:
        return "output.weight" not in self.tensors

    def weight_bytes_by_type(self) -> dict[str, int]:
        """Bytes of 2-D weights per type, which decides the default backend."""
        totals: dict[str, int] = {}
        for t in self.tensors.values():
            if len(t.ne) == 2:
                totals[type_name(t.type)] = totals.get(type_name(t.type), 0) + t.n_bytes
        return totals

    def typed(self, key: str, kind: type, *, array: bool = False, default: Any = None) -> Any:
        """The value of key, checked to be of kind (int, float, str or bool), or an array of them."""
        value = self.get(key)
        if value is None:
            return default
        ok = isinstance(value, list) and all(_is_kind(v, kind) for v in value) if array else _is_kind(value, kind)
        if not ok:
            what = f"an array of {kind.__name__}" if array else kind.__name__
            raise ModelFormatError(f"{self.path}: metadata {key} should be {what}, found {value!r:.100}")
        return value

    def tokenizer_metadata(self) -> dict[str, Any]:
        """tokenizer.ggml.* values, each checked to have its GGUF type (the tokenizer checks ranges)."""
        g = "tokenizer.ggml."
        return {
            "model": self.typed(g + "model", str),
            "pre": self.typed(g + "pre", str),
            "tokens": self.typed(g + "tokens", str, array=True),
            "scores": self.typed(g + "scores", float, array=True),
            "types": self.typed(g + "token_type", int, array=True),
            "merges": self.typed(g + "merges", str, array=True),
            "bos": self.typed(g + "bos_token_id", int),
            "eos": self.typed(g + "eos_token_id", int),
            "unk": self.typed(g + "unknown_token_id", int, default=0),
            "add_bos": self.typed(g + "add_bos_token", bool, default=True),
            "add_space_prefix": self.typed(g + "add_space_prefix", bool, default=True),
        }

    @property
    def chat_template(self) -> str | None:
        value = self.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    def release_resident_pages(self) -> None:
        """Unmap this process's resident pages of the file; the page cache keeps them.

        A backend that repacks or converts a tensor at load never reads the
        file's copy again, but the pages its load read stay in this process's
        resident set: a 7B Q8_0 model on cpu_q8 showed 14.0 GB resident, twice
        the file. The mapping is read-only and shared, so dropping its pages
        loses nothing: a later read (a tensor used in place, an embedding row)
        faults its page back in from the page cache, and the next load of the
        file still finds it there.
        """
        data = getattr(self._reader, "data", None)
        while data is not None and not isinstance(data, mmap.mmap):
            data = getattr(data, "_mmap", None) or getattr(data, "base", None)
        if data is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:
                data.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # advice only
                pass

    def close(self) -> None:
        """Drop the mapping; tensors' data must not be used afterwards."""
        self.tensors = {}
        self._reader = None  # type: ignore[assignment]
