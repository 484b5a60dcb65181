#!/usr/bin/env bash
# The fuzzers' and the soak test's short CI runs (a few minutes in all):
#   1. the model loader fuzzer (atheris, coverage-guided), 60 s from fresh seeds;
#   2. the C boundary fuzzer against the AddressSanitizer/UBSan build, after a self-check
#      proving the sanitizer catches a read past a buffer, 60 s of random inputs;
#   3. the web UI soak test with 2 users x 2 turns.
# Longer runs: FUZZ_SECONDS=600 tests/fuzz/run_short.sh (see docs/reliability.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
SECONDS_EACH=${FUZZ_SECONDS:-60}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== fuzz: model loader (${SECONDS_EACH} s)"
status=0
nice "$PY" tests/fuzz/fuzz_model_file.py "$WORK/corpus" -max_total_time="$SECONDS_EACH" -timeout=20 \
  -rss_limit_mb=3000 -max_len=200000 -print_final_stats=1 -artifact_prefix="$WORK/" >"$WORK/loader.log" 2>&1 \
  || status=$?
grep -E "INITED|DONE|stat::number_of_executed_units" "$WORK/loader.log" || true
if [ "$status" != 0 ] || ls "$WORK"/crash-* "$WORK"/timeout-* "$WORK"/oom-* >/dev/null 2>&1; then
  tail -40 "$WORK/loader.log"
  mkdir -p fuzz-findings && cp "$WORK"/crash-* "$WORK"/timeout-* "$WORK"/oom-* fuzz-findings/ 2>/dev/null || true
  echo "fuzz: the loader fuzzer found an input it fails on (kept in fuzz-findings/)"; exit 1
fi

echo "== fuzz: C boundary under AddressSanitizer (${SECONDS_EACH} s)"
CMAKE=$(command -v cmake || echo .venv/bin/cmake)
if [ ! -f build/asan/backends/libllama2_cpu_f32.so ]; then
  "$CMAKE" -S . -B build/asan -DLLAMA2_SANITIZE=ON -DLLAMA2_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
"$CMAKE" --build build/asan -j2 >/dev/null
SAN_ENV=(env PYTHONMALLOC=malloc
  LD_PRELOAD="$(cc -print-file-name=libasan.so) $(cc -print-file-name=libubsan.so)"
  ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1)
# the self-check must abort with an ASan report (bash prints "Aborted" for it: expected)
if ("${SAN_ENV[@]}" "$PY" tests/fuzz/fuzz_backend_load.py --lib-dir build/asan/backends --self-check) \
    >"$WORK/self-check.log" 2>&1 || ! grep -q "AddressSanitizer: heap-buffer-overflow" "$WORK/self-check.log"; then
  tail -5 "$WORK/self-check.log"; echo "fuzz: the sanitizer self-check did not catch the planted overflow"; exit 1
fi
echo "sanitizer self-check: the planted read past a buffer was caught"
# inputs a run once failed on (the harness's or the backends' fault), replayed before new random ones
for kept in tests/data/fuzz/backend/*.bin; do
  "${SAN_ENV[@]}" "$PY" tests/fuzz/fuzz_backend_load.py --lib-dir build/asan/backends --replay "$kept"
done
"${SAN_ENV[@]}" nice "$PY" tests/fuzz/fuzz_backend_load.py --lib-dir build/asan/backends \
  --random "$SECONDS_EACH" --seed "${FUZZ_SEED:-$RANDOM}"

echo "== soak: web UI, 2 users x 2 turns"
nice "$PY" tests/soak/soak_webui.py --users 2 --turns 2
