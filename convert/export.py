"""Checkpoint -> GGUF: choose each tensor's type, stream load -> check -> encode -> write.

Only one source tensor and its encoding are in memory at a time: the tensor
infos are known from the shapes before any data is read (see
write_llama_gguf's `specs`), and each tensor is loaded from its memory-mapped
source when the writer asks for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, ConvertError, SourceTensor
from .gguf_writer import GGMLType, TensorData, TensorSpec, write_llama_gguf
from .quantize import FILE_TYPES, encode_tensor, tensor_type


@dataclass(frozen=True)
class Summary:
    path: Path
    n_tensors: int
    n_weights: int
    tensor_bytes: int
    file_bytes: int
    seconds: float

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / max(self.n_weights, 1)

    def __str__(self) -> str:
        return (f"wrote {self.path}: {self.n_tensors} tensors, {self.n_weights / 1e6:.1f}M weights, "
                f"{self.file_bytes / 2**20:.1f} MiB, {self.bits_per_weight:.2f} bits/weight, "
                f"{self.seconds:.1f} s")


def open_checkpoint(src: str | os.PathLike[str]) -> Checkpoint:
    """Recognise the source by what it contains: a GGUF file, a Meta folder or a Hugging Face folder."""
    src = Path(src)
    if not src.exists():
        raise ConvertError(f"{src}: no such file or folder")
    if src.is_file():
        with open(src, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ConvertError(f"{src}: not a GGUF file (magic {magic!r}); a Meta or HF source is a folder")
        from .gguf_source import open_gguf

        return open_gguf(src)
    if (src / "config.json").is_file():
        from .hf import open_hf

        return open_hf(src)
    # Meta's folder; open_meta names what is missing when it is not one
    from .meta import open_meta

    return open_meta(src)


def check_out_path(src: Path, out: Path) -> None:
    """OUT must never be the source or one of its files, whatever --force says."""
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or (out.exists() and src.exists() and os.path.samefile(src, out)):
        raise ConvertError(f"{out}: the output would overwrite the source {src}")
    if src_r.is_dir() and out_r.parent == src_r and out.exists() and out.suffix != ".gguf":
        raise ConvertError(f"{out}: the output would overwrite a file of the source folder {src}")


def _check_finite(array: np.ndarray, origin: str) -> None:
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        value = array[tuple(bad)]
        raise ConvertError(f"{origin}: {value} at index {bad.tolist()} (NaN or Inf in the weights)")


def export(
    ckpt: Checkpoint,
    out: str | os.PathLike[str],
    file_type: GGMLType = GGMLType.F32,
    *,
    output_type: GGMLType | None = None,
    importance: dict[str, np.ndarray] | None = None,
    search: bool = True,
    force: bool = False,
    progress: bool = True,
) -> Summary:
    """Write `ckpt` as a GGUF file whose matrices have `file_type` (see quantize.tensor_type)."""
    out = Path(out)
    check_out_path(ckpt.path, out)
    start = time.perf_counter()
    plan: list[tuple[SourceTensor, GGMLType]] = [
        (t, tensor_type(t.name, t.shape, file_type, output_type)) for t in ckpt.tensors
    ]
    specs = [TensorSpec(t.name, t.shape, qtype) for t, qtype in plan]
    n_weights = sum(int(np.prod(t.shape)) for t in ckpt.tensors)

    def encoded() -> Iterator[TensorData]:
        from tqdm import tqdm

        with tqdm(total=n_weights, unit="w", unit_scale=True, disable=not progress,
                  desc=f"{out.name}") as bar:
            for t, qtype in plan:
                bar.set_postfix_str(f"{t.name} {qtype.name}", refresh=False)
                if t.raw_type == qtype and t.load_raw is not None:
                    yield TensorData(t.name, t.shape, qtype, t.load_raw())
                else:
                    array = t.load()
                    if array.shape != t.shape:
                        raise ConvertError(f"{t.origin}: shape {list(array.shape)}, expected {list(t.shape)}")
                    _check_finite(array, t.origin)
                    imp = None if importance is None else importance.get(t.name)
                    yield encode_tensor(t.name, array, qtype, importance=imp, search=search)
                    del array
                bar.update(int(np.prod(t.shape)))

    write_llama_gguf(
        out, ckpt.hparams, encoded(), ckpt.tokenizer, specs=specs, chat_template=ckpt.chat_template,
        name=ckpt.name, file_type=FILE_TYPES.get(file_type), extra_kv=ckpt.extra_kv, force=force,
    )
    return Summary(out, len(specs), n_weights, sum(s.nbytes for s in specs), out.stat().st_size,
                   time.perf_counter() - start)
