"""Loading refuses, with a message and before allocating, files that cannot fit.

Declared sizes past the end of the file (a truncated download) are refused by
the model file reader; sizes that fit on disk but not in memory (converted
weights plus the KV cache, against MemAvailable) are refused before the
backend is asked to load.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import llama2
from llama2 import model as model_module
from llama2.errors import InsufficientMemoryError, ModelFormatError
from llama2.model_file import ModelFile
from llama2.native import NativeBackend, estimated_host_bytes
from llama2.plugins import backend as get_backend


def test_truncated_smollm2_is_refused_before_any_tensor_is_read(smollm2_path: Path, tmp_path: Path) -> None:
    """A download cut after its metadata: every declared tensor lies past the end of the file."""
    mf = ModelFile(smollm2_path)
    data_start = int(mf._reader.data_offset)
    mf.close()
    cut = tmp_path / "smollm2-truncated.gguf"
    with open(smollm2_path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(data_start + 4096))  # metadata, tensor table and 4 kB of weights
    with pytest.raises(ModelFormatError, match="truncated"):
        llama2.load(cut)


def test_file_cut_inside_the_metadata(smollm2_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "smollm2-cut.gguf"
    with open(smollm2_path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(300_000))  # inside the token array
    with pytest.raises(ModelFormatError, match="truncated or corrupt"):
        llama2.load(cut)


def _refuse_to_load(self: NativeBackend, model_file: ModelFile) -> None:
    raise AssertionError("the backend was asked to load a model the memory check should have refused")


def test_memory_check_refuses_before_the_backend_allocates(tiny_model, monkeypatch) -> None:
    path = tiny_model("gqa", "Q8_0")
    monkeypatch.setattr(model_module, "available_memory_bytes", lambda: 64 * 1024)
    monkeypatch.setattr(NativeBackend, "load_model", _refuse_to_load)
    with pytest.raises(InsufficientMemoryError, match=r"cpu_f32 would need about .* GiB is available"):
        llama2.load(path, backend="cpu_f32", n_ctx=256)
    monkeypatch.setenv("LLAMA2_IGNORE_MEMORY_CHECK", "1")
    with pytest.raises(AssertionError, match="asked to load"):
        llama2.load(path, backend="cpu_f32", n_ctx=256)


def test_an_absurd_context_is_refused_with_the_real_available_memory(smollm2_path: Path, monkeypatch) -> None:
    """2^24 positions of SmolLM2's KV cache are 720 GiB: refused, not attempted."""
    monkeypatch.setattr(NativeBackend, "load_model", _refuse_to_load)
    with pytest.raises(InsufficientMemoryError, match=r"KV cache of 16777216 tokens: 720\.0 GiB"):
        llama2.load(smollm2_path, backend="cpu_f32", n_ctx=1 << 24)


def test_estimate_matches_what_the_backend_allocates(tiny_model) -> None:
    """The estimate of converted weights agrees with the backend's own count (model_memory)."""
    for qtype in ("Q8_0", "Q4_0", "F32"):
        path = tiny_model("gqa", qtype)
        m = llama2.load(path, backend="cpu_f32", n_ctx=16)
        estimate = estimated_host_bytes(m.file, get_backend("cpu_f32"), 16)["weights"]
        actual = m.native.memory_bytes
        # the backend adds its structs and the norms it owns: a few kilobytes
        assert estimate <= actual <= estimate + 64 * 1024, (qtype, estimate, actual)
        m.close()


def test_available_memory_is_read() -> None:
    from llama2.system import available_memory_bytes

    available = available_memory_bytes()
    if Path("/proc/meminfo").is_file():
        assert available is not None and available > 0
