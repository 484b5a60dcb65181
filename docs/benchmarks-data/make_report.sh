#!/usr/bin/env bash
# Rebuild docs/benchmarks.md and its plots from the JSON results in this folder.
# speed.json: LLAMA2_BENCH_MODELS=smollm2,7b LLAMA2_BENCH_ROUNDS=1 \
#   pytest tests/benchmarks/test_speed.py --benchmark-json=docs/benchmarks-data/speed.json
# quality.json: llama2 bench --no-speed --quality @pydoc --base smollm2-135m-f32.gguf --windows 6 \
#   smollm2-135m-*.gguf SmolLM2-135M-Instruct.Q4_1.gguf --json docs/benchmarks-data/quality.json
# (the files live in ~/.cache/llama2/bench, made by the suite's fixtures).
set -euo pipefail
cd "$(dirname "$0")/../.."
llama2 bench --from-json docs/benchmarks-data/speed.json --from-json docs/benchmarks-data/quality.json \
  --report docs/benchmarks.md \
  --note "**Quiet machine.** The speed run had the machine to itself (load average ${LOAD_BEFORE:-under 2} before, ${LOAD_AFTER:-under 2} after); one timed round per figure, 2 threads, libgomp's barrier spin bounded as llama2 sets it (GOMP_SPINCOUNT=10000). The quality table was computed earlier with cpu_f32 (exact arithmetic, so machine load does not change it)." \
  --note "" \
  --note "**7B** files are random weights of LLaMA-2 7B's shape (\`llama2 convert --synthetic 7b\`, seed 0), Q4_0 (3.8 GB) and Q8_0 (7.2 GB). F32 (27 GB) does not fit in this machine's 24 GB; a backend whose load-time conversion would need more than 80% of free memory is skipped and listed under Not measured." \
  --note "" \
  --note "**llama.cpp** is missing: llama-cpp-python is not installed here (it compiles llama.cpp). With \`pip install '.[bench]'\` the suite and \`llama2 bench\` run it on the same files, tokens and threads." \
  --note "" \
  --note "**Quality files.** Base: SmolLM2-135M-Instruct's Q4_1 file dequantized to F32. plain = ggml's round-to-nearest (\`--plain\`); improved = the per-block scale search of convert/quantize.py (the default). 4-bit files keep the tied embedding at Q8_0. Scored with cpu_f32 so the table compares the quantizers alone. The Q4_1 rows are degenerate: the base is itself Q4_1 data." \
  --note "" \
  --note "**Over 100 % of the limit**: the limit counts the bytes of the file; a backend that converts at load to a smaller type reads fewer bytes per token than that." \
  --note "" \
  --note "**Resident MiB** is the growth of the process while loading and running one token; many models load in one process, so rows after a freed model can understate." \
  --note "" \
  --note "**Reproduce**: the commands at the top of docs/benchmarks-data/make_report.sh."
