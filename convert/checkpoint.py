"""What every source format (Meta, Hugging Face, GGUF) is read into before export.

A source module turns a folder or file into a `Checkpoint`: hyper-parameters,
tokenizer, chat template, and a list of `SourceTensor`s in GGUF names whose
data is only read when `load()` is called, so the exporter holds one tensor
at a time.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .gguf_writer import GGMLType, LlamaHParams, TokenizerData


class ConvertError(ValueError):
    """Bad or inconsistent input; the message names the file and, where it applies, the tensor."""


@dataclass
class SourceTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # PyTorch shape ([out, in])
    load: Callable[[], np.ndarray]  # float32 data of `shape`
    origin: str  # "file: tensor" in the source's own names, for error messages
    raw_type: GGMLType | None = None  # the source's ggml type, when it already holds ggml blocks
    load_raw: Callable[[], np.ndarray] | None = None  # those blocks as bytes, copied without re-encoding


@dataclass
class Checkpoint:
    path: Path
    hparams: LlamaHParams
    tokenizer: TokenizerData
    tensors: list[SourceTensor]
    chat_template: str | None = None
    name: str = "llama"
    extra_kv: dict[str, object] = field(default_factory=dict)  # other keys to carry over (GGUF sources)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A source's JSON file (params.json, config.json); `what` says what kind of folder lacks it."""
    if not path.is_file():
        raise ConvertError(f"{path.parent}: no {path.name} (not {what}?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from e


def check_float_dtype(t: object, origin: str) -> None:
    import torch

    assert isinstance(t, torch.Tensor)
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConvertError(f"{origin}: unsupported dtype {t.dtype} (expected float32, float16 or bfloat16)")


def torch_to_float32(t: object, origin: str) -> np.ndarray:
    """A float32 numpy array that owns its memory, from a float tensor (F32, F16, BF16)."""
    import torch

    check_float_dtype(t, origin)
    assert isinstance(t, torch.Tensor)
    if t.dtype == torch.float32:
        return t.numpy().copy()  # the tensor may live in a mapping that is about to be released
    return t.to(torch.float32).numpy()  # already a new buffer: no second copy


_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
_MADV_DONTNEED = 4


def mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges where this process maps `path` (Linux; empty elsewhere)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    target = str(path.resolve())
    ranges = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == target:
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def release_pages(t: object, ranges: list[tuple[int, int]]) -> None:
    """Drop a memory-mapped tensor's (torch or numpy) pages from this process's resident set.

    Pages of a file mapping stay resident (and count in RSS) once read, until
    the mapping goes away, and torch.load(mmap=True) or GGUFReader keep a
    whole file mapped. We never write to them, so dropping them is safe: a
    later access reads the file again. Only ranges inside the file's own
    mappings are touched; on anonymous memory the same advice would zero the data.
    """
    if _libc is None:
        return
    if isinstance(t, np.ndarray):
        start, length = t.ctypes.data, t.nbytes
    else:
        storage = t.untyped_storage()  # type: ignore[attr-defined]
        start, length = storage.data_ptr(), storage.nbytes()
    page = mmap.PAGESIZE
    begin = start // page * page
    end = -(-(start + length) // page) * page
    for lo, hi in ranges:
        if lo <= begin and end <= hi and length > 0:
            _libc.madvise(ctypes.c_void_p(begin), ctypes.c_size_t(end - begin), _MADV_DONTNEED)
            return


def check_vocab(n_vocab: int, tokenizer: TokenizerData, where: str) -> None:
    if n_vocab != len(tokenizer.tokens):
        raise ConvertError(
            f"{where}: vocabulary size {n_vocab} disagrees with the tokenizer's "
            f"{len(tokenizer.tokens)} tokens"
        )
