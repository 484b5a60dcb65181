#!/usr/bin/env bash
# Rebuild docs/benchmarks.md and its plots from the JSON results in this folder.
# Two suite runs, with llama-cpp-python importable so llama.cpp runs as a peer (the llama.cpp note below):
# speed-smollm2.json: LLAMA2_BENCH_MODELS=smollm2 LLAMA2_BENCH_ROUNDS=5 \
#   pytest tests/benchmarks/test_speed.py --benchmark-json=docs/benchmarks-data/speed-smollm2.json
# speed-7b.json: the 7B rows of LLAMA2_BENCH_MODELS=smollm2,7b LLAMA2_BENCH_ROUNDS=2 (same command);
#   its SmolLM2 rows were replaced by the five-round run, whose short prefills vary less.
# quality.json: llama2 bench --no-speed --quality @pydoc --base smollm2-135m-f32.gguf --windows 6 \
#   smollm2-135m-*.gguf SmolLM2-135M-Instruct.Q4_1.gguf --json docs/benchmarks-data/quality.json
# (the files live in ~/.cache/llama2/bench, made by the suite's fixtures).
set -euo pipefail
cd "$(dirname "$0")/../.."
llama2 bench --from-json docs/benchmarks-data/speed-smollm2.json --from-json docs/benchmarks-data/speed-7b.json \
  --from-json docs/benchmarks-data/quality.json \
  --report docs/benchmarks.md \
  --note "**Quiet machine.** The speed run had the machine to itself (load average ${LOAD_BEFORE:-under 2} before, ${LOAD_AFTER:-under 2} after); best of five timed rounds per figure for SmolLM2, two for 7B, each run with its own bandwidth measurement (the header shows the SmolLM2 run's; this VM's bandwidth drifts between runs, so compare backends within a model, not across runs), 2 threads, libgomp's barrier spin bounded as llama2 sets it (GOMP_SPINCOUNT=10000). The quality table was computed earlier with cpu_f32 (exact arithmetic, so machine load does not change it)." \
  --note "" \
  --note "**7B** files are random weights of LLaMA-2 7B's shape (\`llama2 convert --synthetic 7b\`, seed 0), Q4_0 (3.8 GB) and Q8_0 (7.2 GB). F32 (27 GB) does not fit in this machine's 24 GB; a backend whose load-time conversion would need more than 80% of free memory is skipped and listed under Not measured." \
  --note "" \
  --note "**llama.cpp** runs in the same process through llama-cpp-python 0.3.36 (ggml 0c1e570), on the same files, prompt tokens and threads, its decode also one token per call from Python. Its vendored llama.cpp was built here once with the same gcc, -DGGML_NATIVE=ON (AVX2, FMA, F16C, ggml's repacked Q4_0 kernels) and loaded with LLAMA_CPP_LIB_PATH, as \`pip install '.[bench]'\` would build it on this CPU." \
  --note "" \
  --note "**Quality files.** Base: SmolLM2-135M-Instruct's Q4_1 file dequantized to F32. plain = ggml's round-to-nearest (\`--plain\`); improved = the per-block scale search of convert/quantize.py (the default). 4-bit files keep the tied embedding at Q8_0. Scored with cpu_f32 so the table compares the quantizers alone. The Q4_1 rows are degenerate: the base is itself Q4_1 data." \
  --note "" \
  --note "**Over 100 % of the limit**: the limit counts the bytes of the file; a backend that converts at load to a smaller type reads fewer bytes per token than that." \
  --note "" \
  --note "**Resident MiB** is the growth of the process while loading and running one token; many models load in one process, so rows after a freed model can understate. The cpu_q4/cpu_q8 rows predate the release of the file's pages after loading (docs/perf-notes.md): 7B Q8_0 on cpu_q8 now holds 7.1 GB after loading (14.0 GB before), 7B Q4_0 on cpu_q4 4.0 GB (7.7 GB)." \
  --note "" \
  --note "**Reproduce**: the commands at the top of docs/benchmarks-data/make_report.sh."
