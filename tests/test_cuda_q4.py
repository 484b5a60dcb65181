"""cuda_q4 without a GPU: block arithmetic on the host, the library's probe and validation.

The GPU tests at the end run only where a CUDA device is usable; everywhere
else they skip, saying why.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "backends" / "cuda_q4"
CHECK_SRC = Path(__file__).with_name("cuda_q4_math_check.cpp")
QT = gguf.GGMLQuantizationType
WORDS = {QT.Q4_0: 4, QT.Q4_1: 4, QT.Q8_0: 8, QT.F16: 16, QT.F32: 16}


# ---- the shared header, compiled as plain C++ and by nvcc -----------------------------------------

def _compilers() -> list[tuple[str, list[str]]]:
    found = []
    if shutil.which("g++"):
        found.append(("g++", ["g++", "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror"]))
    if shutil.which("nvcc"):
        # -x cu: the header takes its __host__ __device__ branch, as in the kernels
        found.append(("nvcc", ["nvcc", "-std=c++17", "-O2", "-x", "cu", "-Xcompiler=-Wall,-Wextra,-Werror"]))
    return found


@pytest.fixture(scope="module", params=[name for name, _ in _compilers()] or ["none"])
def math_check(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    compilers = dict(_compilers())
    if request.param not in compilers:
        pytest.skip("neither g++ nor nvcc is installed")
    exe = tmp_path_factory.mktemp(request.param) / "math_check"
    cmd = [*compilers[request.param], f"-I{CUDA_DIR}", f"-I{ROOT / 'backends' / 'common'}", str(CHECK_SRC),
           "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


def _expected_split(raw: np.ndarray, qtype: QT, rows: int, nb: int) -> tuple[np.ndarray, np.ndarray]:
    """The device layout, written from the q4_math.h comment independently of the C code."""
    if qtype == QT.F32:
        return raw.view(np.float32).astype(np.float16).view(np.uint32).reshape(-1), np.zeros(rows * nb, np.uint32)
    if qtype == QT.F16:
        return raw.view(np.uint32).reshape(-1), np.zeros(rows * nb, np.uint32)
    bsize = {QT.Q4_0: 18, QT.Q4_1: 20, QT.Q8_0: 34}[qtype]
    blocks = raw.reshape(rows * nb, bsize)
    head = 4 if qtype == QT.Q4_1 else 2
    words = np.ascontiguousarray(blocks[:, head:]).view(np.uint32).reshape(-1)
    scales = np.ascontiguousarray(blocks[:, :head])
    scales = scales.view(np.uint32) if head == 4 else scales.view(np.uint16).astype(np.uint32)
    return words, scales.reshape(-1)


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q4_1, QT.Q8_0, QT.F16, QT.F32], ids=lambda t: t.name)
@pytest.mark.parametrize(("rows", "cols"), [(3, 32), (5, 576), (17, 64 * 32 + 32 * 5)])
def test_block_math_matches_numpy(math_check: Path, tmp_path: Path, qtype: QT, rows: int, cols: int) -> None:
    rng = np.random.default_rng(rows * 1000 + cols + int(qtype))
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block: scale 0 must not divide by zero
    x = (rng.standard_normal(cols) * 3).astype(np.float32)
    x[:32] = 0.0
    if qtype == QT.F32:
        raw = np.frombuffer(w.tobytes(), np.uint8)
    elif qtype == QT.F16:
        raw = np.frombuffer(w.astype(np.float16).tobytes(), np.uint8)
    else:
        raw = np.asarray(gguf.quants.quantize(w, qtype)).reshape(-1)
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    inp.write_bytes(np.array([int(qtype), rows, cols], np.int32).tobytes() + raw.tobytes() + x.tobytes())
    subprocess.run([str(math_check), str(inp), str(out)], check=True)

    nb = cols // 32
    n_words = rows * nb * WORDS[qtype]
    sizes = [n_words * 4, rows * nb * 4, rows * cols * 4, cols, nb * 8, rows * 4, cols * 2, rows * 4]
    blob = out.read_bytes()
    assert len(blob) == sum(sizes)
    parts, off = [], 0
    for s in sizes:
        parts.append(blob[off:off + s])
        off += s
    words, scales = np.frombuffer(parts[0], np.uint32), np.frombuffer(parts[1], np.uint32)
    deq = np.frombuffer(parts[2], np.float32).reshape(rows, cols)
    xq = np.frombuffer(parts[3], np.int8)
    xds = np.frombuffer(parts[4], np.float32).reshape(nb, 2)
    y = np.frombuffer(parts[5], np.float32).astype(np.float64)
    xh = np.frombuffer(parts[6], np.uint16)
    y_float_act = np.frombuffer(parts[7], np.float32).astype(np.float64)

    want_words, want_scales = _expected_split(raw, qtype, rows, nb)
    np.testing.assert_array_equal(words, want_words)
    np.testing.assert_array_equal(scales, want_scales)

    if qtype == QT.F32:
        w_ref = w.astype(np.float16).astype(np.float64)
    else:
        w_ref = np.asarray(gguf.quants.dequantize(raw, qtype), np.float64).reshape(rows, cols)
    np.testing.assert_allclose(deq, w_ref, rtol=1e-6, atol=1e-7)

    # activations: d = amax / 127 per block, q = round-half-even(x / d)
    xb = x.reshape(nb, 32)
    d = (np.abs(xb).max(axis=1) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(d[:, None] > 0, np.rint(xb / d[:, None]), 0).astype(np.int8)
    np.testing.assert_array_equal(xq.reshape(nb, 32), q)
    np.testing.assert_array_equal(xds[:, 0], d)
    np.testing.assert_allclose(xds[:, 1], d * q.astype(np.float32).sum(axis=1), rtol=1e-6)

    np.testing.assert_array_equal(xh, x.astype(np.float16).view(np.uint16))

    # the dot products: tight against the same quantized activations in float64,
    # loose against the exact activations (what int8 rounding costs)
    integer = qtype not in (QT.F16, QT.F32)
    x_used = (q.astype(np.float64) * d[:, None].astype(np.float64)).reshape(-1) if integer else x.astype(np.float64)
    exact = w_ref @ x_used
    scale = np.abs(w_ref) @ np.abs(x_used) + 1e-30
    assert np.max(np.abs(y - exact) / scale) < 1e-5
    full = w_ref @ x.astype(np.float64)
    assert np.linalg.norm(y - full) <= 2e-2 * np.linalg.norm(full)
    # float activations: only float32 rounding
    full_scale = np.abs(w_ref) @ np.abs(x.astype(np.float64)) + 1e-30
    assert np.max(np.abs(y_float_act - full) / full_scale) < 1e-5


def test_f16_conversion_edge_cases(math_check: Path, tmp_path: Path) -> None:
    special = [0.0, -0.0, 1.0, -2.5, 65504.0, 65520.0, 1e6, -1e6, 6.1e-5, 6.0e-8, 2.9e-8, 3.0e-8, 1e-10,
               np.inf, -np.inf, 0.333333, 1.0009765625, 1.00048828125, 1.00146484375]
    x = np.zeros(64, np.float32)
    x[: len(special)] = special
    x[len(special):] = np.random.default_rng(7).standard_normal(64 - len(special)) * 1e-5
    inp, out = tmp_path / "in.bin", tmp_path / "out.bin"
    inp.write_bytes(np.array([int(QT.F32), 1, 64], np.int32).tobytes() + x.tobytes() + x.tobytes())
    subprocess.run([str(math_check), str(inp), str(out)], check=True)
    xh = np.frombuffer(out.read_bytes()[-128 - 4:-4], np.uint16)
    with np.errstate(over="ignore"):  # the overflow to inf is the case under test
        want = x.astype(np.float16)
    np.testing.assert_array_equal(xh, want.view(np.uint16))


# ---- the built library: loads, says why it is unusable here, validates before touching a device ----

def _gpu_present() -> bool:
    """Whether this machine has a usable CUDA GPU, asked of torch rather than of the code under test."""
    import torch

    return bool(torch.cuda.is_available())


@pytest.fixture(scope="module")
def cuda_backend():
    from llama2.native import native_backend

    backend = native_backend("llama2.backends.cuda_q4", "llama2_cuda_q4")
    if backend.lib_path is None:
        pytest.skip("libllama2_cuda_q4 was not built (no nvcc when the package was installed)")
    return backend


def test_library_loads_and_probe_gives_a_reason(cuda_backend) -> None:
    assert cuda_backend.name == "cuda_q4"
    assert "CUDA" in cuda_backend.description
    assert set(cuda_backend.native_types) >= {2, 3}  # Q4_0, Q4_1
    ok, reason = cuda_backend.probe()
    if _gpu_present():
        assert ok, reason
    else:
        assert not ok
        assert "CUDA" in reason and ("device" in reason or "driver" in reason), reason


def test_registered_and_listed_with_status() -> None:
    from llama2 import plugins

    backends = plugins.backends()
    assert "cuda_q4" in backends
    ok, reason = backends["cuda_q4"].probe()
    assert ok or reason


class _Unprobed:
    """The backend's raw table, so that model_load runs even where probe says no."""

    def __init__(self, backend) -> None:
        self._backend = backend

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    @property
    def api(self):
        return self._backend._api


def _load(cuda_backend, model_file):
    from llama2.native import NativeModel

    return NativeModel(_Unprobed(cuda_backend), model_file)  # type: ignore[arg-type]


def _broken(path: Path, how: str):
    """A valid model file whose description is then broken in one way the C side must catch."""
    import dataclasses

    from llama2.model_file import ModelFile

    mf = ModelFile(path)
    hp = mf.hparams
    if how == "n_ff":
        mf.hparams = dataclasses.replace(hp, n_ff=hp.n_ff + 32)
    elif how == "groups":
        mf.hparams = dataclasses.replace(hp, n_head_kv=hp.n_head - 1)
    elif how == "n_rot":
        mf.hparams = dataclasses.replace(hp, n_rot=hp.head_dim + 2)
    elif how == "missing":
        del mf.tensors["blk.1.ffn_up.weight"]
    elif how == "bytes":
        t = mf.tensors["blk.0.attn_k.weight"]
        mf.tensors[t.name] = dataclasses.replace(t, data=t.data[:-18])
    elif how == "type":
        t = mf.tensors["blk.0.ffn_down.weight"]
        mf.tensors[t.name] = dataclasses.replace(t, type=12)  # Q4_K
    elif how == "norm_shape":
        t = mf.tensors["output_norm.weight"]
        mf.tensors[t.name] = dataclasses.replace(t, ne=(t.ne[0] // 2, 2))
    return mf


BROKEN = {
    "n_ff": "ffn_gate.weight has shape",
    "groups": "n_head_kv",
    "n_rot": "n_rot",
    "missing": "blk.1.ffn_up.weight is missing",
    "bytes": "holds",
    "type": "supported are",
    "norm_shape": "output_norm.weight has shape",
}


@pytest.mark.parametrize("how", sorted(BROKEN))
def test_model_description_is_validated_first(cuda_backend, tiny_model, how: str) -> None:
    from llama2.errors import BackendError

    with pytest.raises(BackendError, match=BROKEN[how]):
        _load(cuda_backend, _broken(tiny_model("gqa", "Q4_0"), how))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "F16", "F32"])
def test_valid_model_reaches_the_device(cuda_backend, tiny_model, qtype: str) -> None:
    from llama2.errors import BackendError
    from llama2.model_file import ModelFile

    mf = ModelFile(tiny_model("mqa_rot", qtype, tied=qtype == "Q4_1"))
    if _gpu_present():
        model = _load(cuda_backend, mf)
        assert model.memory_bytes > 0
        model.close()
    else:
        with pytest.raises(BackendError, match="no CUDA"):
            _load(cuda_backend, mf)


# ---- the whole backend on the CPU: the real .cu sources against tests/cuda_emu -------------------

EMU_DIR = Path(__file__).with_name("cuda_emu")


@pytest.fixture(scope="module")
def emulated_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libllama2_cuda_q4.so built by g++ from the real sources, CUDA replaced by tests/cuda_emu."""
    import re

    if not shutil.which("g++"):
        pytest.skip("g++ is not installed")
    out = tmp_path_factory.mktemp("cuda_emu")
    sources = []
    for name in ("backend.cu", "kernels.cu"):
        text = (CUDA_DIR / name).read_text()
        # kernel<<<grid, block, smem, stream>>>(args) -> l2emu_launch(grid, block, smem, stream, kernel, args)
        text = re.sub(r"(\b[\w:]+(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\(", r"l2emu_launch(\2, \1, ", text, flags=re.S)
        src = out / name.replace(".cu", ".cpp")
        src.write_text(text)
        sources.append(str(src))
    lib = out / "libllama2_cuda_q4.so"
    cmd = ["g++", "-std=c++20", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
           "-Wno-unknown-pragmas", "-Wno-clobbered", f"-I{EMU_DIR}", f"-I{CUDA_DIR}",
           f"-I{ROOT / 'backends' / 'include'}", f"-I{ROOT / 'backends' / 'common'}", *sources, "-o", str(lib)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def _run_emulated(lib_dir: Path, code: str, **env: str) -> str:
    import os
    import sys

    full_env = {**os.environ, "LLAMA2_LIBRARY_PATH": str(lib_dir), **env}
    done = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# split_keys 4: decode attention over several key ranges merged by the second kernel
EMU_CASES = [("mha", "Q4_0", False, 6, 4), ("gqa", "Q4_1", True, 5, 0), ("mqa_rot", "Q8_0", False, 4, 3)]


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "qtype", "tied", "n_prompt", "split_keys"), EMU_CASES,
                         ids=[c[0] + "-" + c[1] for c in EMU_CASES])
def test_emulated_backend_matches_reference(emulated_library: Path, tiny_model, shape: str, qtype: str, tied: bool,
                                            n_prompt: int, split_keys: int) -> None:
    """Prefill (GEMM), decode (graph replay and direct launches) against the float64 reference."""
    path = tiny_model(shape, qtype, tied=tied)
    out = _run_emulated(emulated_library, (
        "from llama2.backends.cuda_q4 import device_check as d\n"
        f"r = d.check_logits({str(path)!r}, n_prompt={n_prompt}, n_decode=3)\n"
        "print(r.max_rel_err, r.graph_vs_direct)"), LLAMA2_CUDA_SPLIT_KEYS=str(split_keys))
    err, graph_diff = (float(v) for v in out.split())
    assert err < 2e-3, out  # fp16 KV cache and fp16 prefill tiles; float activations in decode
    assert graph_diff == 0.0


def test_emulated_memory_plan_says_what_does_not_fit(emulated_library: Path, tiny_model) -> None:
    """Weights, then a context, against the free memory the (emulated) device reports."""
    code = ("import llama2\n"
            f"path = {str(tiny_model('mha', 'Q4_0'))!r}\n"
            "for n_ctx in (64, 4096):\n"
            "    try:\n"
            "        llama2.load(path, backend='cuda_q4', n_ctx=n_ctx).session()\n"
            "        print('loaded')\n"
            "    except llama2.BackendError as e:\n"
            "        print(e)\n")
    out = _run_emulated(emulated_library, code, L2EMU_FREE_MIB="1")
    assert "the weights need" in out and "1 MiB free" in out, out
    # 65 MiB: the weights fit (64 MiB is kept in reserve), a 64-token context too, 4096 tokens do not
    out = _run_emulated(emulated_library, code, L2EMU_FREE_MIB="65").splitlines()
    assert out[0] == "loaded", out
    assert "a context of 4096 tokens needs" in out[1] and "use a smaller n_ctx" in out[1], out


# ---- on a GPU: the checks of device_check.py, as tests ---------------------------------------------

@pytest.fixture
def cuda_device(cuda_backend):
    ok, reason = cuda_backend.probe()
    if not ok:
        pytest.skip(f"cuda_q4 is not usable here: {reason}")
    return cuda_backend


@pytest.mark.gpu
@pytest.mark.parametrize("shape", ["mha", "gqa", "mqa_rot"])
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_gpu_logits_match_reference(cuda_device, tiny_model, shape: str, qtype: str) -> None:
    from llama2.backends.cuda_q4 import device_check

    result = device_check.check_logits(tiny_model(shape, qtype, tied=shape == "gqa"))
    assert result.max_rel_err < 1e-2, result


@pytest.mark.gpu
def test_gpu_greedy_smollm2(cuda_device, smollm2_path: Path) -> None:
    from llama2.backends.cuda_q4 import device_check

    text, _ = device_check.greedy_smollm2(smollm2_path)
    assert "Paris" in text
