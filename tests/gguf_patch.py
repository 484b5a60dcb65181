"""Byte-level surgery on GGUF files, for tests of malformed input."""

from __future__ import annotations

import struct
from pathlib import Path


def tensor_info_offset(data: bytes, name: str) -> int:
    """Offset of the field right after a tensor's name in the tensor-info table (its n_dims)."""
    encoded = name.encode()
    needle = struct.pack("<Q", len(encoded)) + encoded
    pos = data.rfind(needle)
    if pos < 0:
        raise KeyError(name)
    return pos + len(needle)


def patch_tensor(path: Path, out: Path, name: str, *, dims: list[int] | None = None, type_id: int | None = None,
                 offset: int | None = None) -> Path:
    """Copy path to out with one tensor-info entry changed (same number of dims)."""
    data = bytearray(path.read_bytes())
    pos = tensor_info_offset(bytes(data), name)
    (n_dims,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if dims is not None:
        assert len(dims) == n_dims
        struct.pack_into(f"<{n_dims}Q", data, pos, *dims)
    pos += 8 * n_dims
    if type_id is not None:
        struct.pack_into("<I", data, pos, type_id)
    pos += 4
    if offset is not None:
        struct.pack_into("<Q", data, pos, offset)
    out.write_bytes(bytes(data))
    return out
