"""The CPU kernel sets (scalar, AVX2, AVX-512 VNNI) against each other and float64.

Backend libraries export only their ABI getter, so the kernels are tested by a
C program (tests/c/test_kernels.c) built here with the system compiler from
the backends/common sources, once plainly and once under AddressSanitizer and
UndefinedBehaviorSanitizer where the compiler has them. Sets this CPU cannot
run are reported as skipped by the program itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMON = ROOT / "backends" / "common"
# the kernel tables and what they need; everything else in common/ is the engine
SOURCES = ["kernels.c", "kernels_scalar.c", "kernels_avx2.c", "kernels_avx512.c", "convert.c", "repack.c"]
CFLAGS = ["-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Werror"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler on PATH (set CC)")
    return cc


def _build(cc: str, out: Path, extra: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [cc, *CFLAGS, *extra, f"-I{COMMON}", f"-I{ROOT / 'backends' / 'include'}",
           str(ROOT / "tests" / "c" / "test_kernels.c"), *(str(COMMON / s) for s in SOURCES),
           "-lm", "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True)


def _run(exe: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LLAMA2_ISA"}
    env["ASAN_OPTIONS"] = "detect_leaks=1"
    proc = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{exe.name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "all passed" in proc.stdout
    return proc.stdout


def test_kernel_sets_match_scalar_and_float64(tmp_path: Path) -> None:
    cc = _compiler()
    build = _build(cc, tmp_path / "test_kernels", [])
    assert build.returncode == 0, build.stderr
    print(_run(tmp_path / "test_kernels"))

    # the same program under the sanitizers, when this compiler has them
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    if subprocess.run([cc, *SANITIZE, str(probe), "-o", str(tmp_path / "probe")],
                      capture_output=True).returncode != 0:
        print(f"{cc} cannot build with {' '.join(SANITIZE)}: sanitizer run left out")
        return
    build = _build(cc, tmp_path / "test_kernels_asan", SANITIZE)
    assert build.returncode == 0, build.stderr
    print(_run(tmp_path / "test_kernels_asan"))
