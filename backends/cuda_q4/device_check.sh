#!/usr/bin/env bash
# cuda_q4 on a GPU in one go, within 5 minutes: build, logits against the PyTorch
# reference at several shapes, greedy SmolLM2, compute-sanitizer memcheck and
# racecheck on a tiny model, decode/prefill speed of a 7B-shaped random Q4_0
# model against the bandwidth limit. Prints a short table last.
#
#   backends/cuda_q4/device_check.sh [SMOLLM2.gguf]      on the GPU machine, from anywhere
#   backends/cuda_q4/device_check.sh --prepare [SMOLLM2]  on the CPU machine, once, beforehand
#
# The GPU machine of this workplace has no network and lacks two of the Python
# packages (cffi, gguf): --prepare downloads their wheels into .whl/ (ignored by
# git; name it in the device run's `carry`). SmolLM2 (98 MB) is larger than
# what one run may carry (64 MiB), so --prepare also splits it in two halves in
# .devcarry/; carry .devcarry/smollm2.part1 in one run that only copies it to
# /tmp, then, while the machine is still warm (30 s), run this script carrying
# .devcarry/smollm2.part2 and .whl, with /tmp/smollm2.gguf as SMOLLM2: the
# halves are joined here. Without SmolLM2 that row says SKIP.
#
# Run --prepare in the checkout that the device tool sends (the session's own,
# not a helper's worktree): .whl and .devcarry must be inside it to travel.
#
# Results: $OUT/results.json (default /tmp/cuda_q4_check), and the log on stdout.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
CHECK=backends/cuda_q4/device_check.py

if [ "${1:-}" = "--prepare" ]; then
  set -e
  mkdir -p .whl .devcarry
  grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> "$(git rev-parse --git-path info/exclude)"
  for pkg in cffi==2.0.0 gguf==0.19.0 pycparser==3.00; do
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$pkg"
  done
  if [ -n "${2:-}" ]; then
    half=$(( ($(stat -c %s "$2") + 1) / 2 ))
    split -b "$half" -d -a 1 "$2" .devcarry/smollm2.part
    mv .devcarry/smollm2.part0 .devcarry/smollm2.part1.tmp && mv .devcarry/smollm2.part1 .devcarry/smollm2.part2
    mv .devcarry/smollm2.part1.tmp .devcarry/smollm2.part1
  fi
  ls -la .whl .devcarry
  exit 0
fi

SMOL=${1:-}
OUT=${OUT:-/tmp/cuda_q4_check}
mkdir -p "$OUT"
rm -f "$OUT/results.json"
record() { $PY $CHECK record "$OUT" "$1" "$2" "$3"; }
# a step that exits 1 recorded its FAIL rows and 2 its SKIP row; anything else (124: timeout) did not
failed() { [ "$2" -le 2 ] || record "$1" FAIL "exit status $2 (124: timed out)"; }
T0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - T0 ))s] $*"; }

# ---- 0. the machine and the Python packages it lacks
stamp "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader || true
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -n "$SMOL" ] && [ ! -f "$SMOL" ] && [ -f .devcarry/smollm2.part2 ] && [ -f /tmp/smollm2.part1 ]; then
  cat /tmp/smollm2.part1 .devcarry/smollm2.part2 > "$SMOL"
fi
missing=$($PY -c '
import importlib.util as u
print(" ".join(m for m in ("cffi", "gguf", "pluggy", "numpy", "torch", "tokenizers", "sentencepiece",
                           "scikit_build_core") if u.find_spec(m) is None))')
if [ -n "$missing" ]; then
  echo "device_check: missing Python packages: $missing (run --prepare on the CPU machine and carry .whl)"
  exit 2
fi

# ---- 1. build: CUDA required, machine code for this GPU only (a short build)
stamp "build"
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
export CMAKE_ARGS="-DLLAMA2_CUDA=ON -DLLAMA2_CUDA_ARCHITECTURES=${ARCH:-90}-real"
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
if ! timeout 240 $PY -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  record build FAIL "pip install -e . failed (see build.log)"
  $PY $CHECK table "$OUT"
  exit 1
fi
record build PASS "sm_${ARCH:-90}, $(( $(date +%s) - T0 ))s since start"
$PY -c 'import llama2; b = llama2.list_backends()["cuda_q4"]; print("probe:", b.probe(), b.lib_path)'

# ---- 2. correctness
stamp "logits against the reference"
timeout 150 $PY $CHECK logits --out "$OUT"; failed logits $?
stamp "SmolLM2 greedy"
timeout 90 $PY $CHECK smollm2 ${SMOL:+"$SMOL"} --out "$OUT"; failed smollm2 $?

# ---- 3. compute-sanitizer on a tiny model (prefill in two chunks, decode graph, truncate)
for tool in memcheck racecheck; do
  stamp "compute-sanitizer $tool"
  if ! command -v compute-sanitizer >/dev/null; then
    record "$tool" SKIP "compute-sanitizer not on the PATH"
    continue
  fi
  timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 3 $PY $CHECK memcheck > "$OUT/$tool.log" 2>&1
  rc=$?
  summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/$tool.log" | tail -1)
  if [ $rc -eq 0 ]; then
    record "$tool" PASS "${summary:-no errors}"
  else
    grep -m 12 -E "=========" "$OUT/$tool.log"
    record "$tool" FAIL "exit status $rc; ${summary:-see $tool.log}"
  fi
done

# ---- 4. speed: 7B-shaped random Q4_0 (3.8 GB), decode and a 512-token prefill
stamp "7B Q4_0 speed"
timeout 180 $PY $CHECK bench --out "$OUT" --workdir /tmp; failed bench $?

stamp "done"
nvidia-smi --query-gpu=name --format=csv,noheader | sed 's/^/card: /'
date -u '+date: %Y-%m-%d %H:%M UTC'
$PY $CHECK table "$OUT"
