"""Decode and prefill speed of the CPU backends, side by side in one run.

    pytest tests/benchmarks/bench_cpu_decode.py --benchmark-columns=min,median

Models: SmolLM2-135M (the `smollm2_path` fixture) always, and the 7B-shaped
random models when LLAMA2_BENCH_7B_Q4_0 / LLAMA2_BENCH_7B_Q8_0 name them
(write them once with `python tests/benchmarks/bench_cpu_decode.py DIR`; about
4 and 7 GB, tens of minutes on two cores). The machine's read bandwidth is
measured in the same run, and each decode result carries its fraction of the
bandwidth limit (weight bytes per token / bandwidth) in extra_info, next to
tok/s. Timings on a shared machine are noisy: compare minima, not means.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import llama2

HERE = Path(__file__).resolve().parent
THREADS = int(os.environ.get("LLAMA2_BENCH_THREADS", "2"))
BACKENDS = ["cpu_q4", "cpu_q8"]
DECODE_TOKENS = 16
PREFILL_SIZES = [64]


@pytest.fixture(scope="session")
def read_bandwidth(tmp_path_factory: pytest.TempPathFactory) -> float:
    """GB/s of a streaming read over 2 GiB with THREADS threads (tests/benchmarks/read_bandwidth.c)."""
    cc = os.environ.get("CC") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build the bandwidth probe")
    exe = tmp_path_factory.mktemp("bw") / "read_bandwidth"
    subprocess.run([cc, "-O3", "-march=native", "-fopenmp", str(HERE / "read_bandwidth.c"), "-o", str(exe)],
                   check=True)
    out = subprocess.run([str(exe), "2048", str(THREADS)], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def _models(smollm2_path: Path) -> dict[str, Path]:
    models = {"smollm2-q4_1": smollm2_path}
    for name, var in (("7b-q4_0", "LLAMA2_BENCH_7B_Q4_0"), ("7b-q8_0", "LLAMA2_BENCH_7B_Q8_0")):
        if os.environ.get(var):
            models[name] = Path(os.environ[var])
    return models


MODEL_NAMES = ["smollm2-q4_1", "7b-q4_0", "7b-q8_0"]


@pytest.fixture(scope="module")
def loaded(request: pytest.FixtureRequest, smollm2_path: Path):
    """One model per (backend, model file) for the whole module: loading a 7B model takes a while."""
    cache: dict[tuple[str, str], llama2.Model] = {}

    def get(backend: str, model_name: str) -> llama2.Model:
        models = _models(smollm2_path)
        if model_name not in models:
            pytest.skip(f"{model_name}: set LLAMA2_BENCH_{model_name[3:].upper()}... to a 7B-shaped file")
        key = (backend, model_name)
        if key not in cache:
            for other in list(cache):  # one big model in memory at a time
                cache.pop(other).close()
            cache[key] = llama2.load(models[model_name], backend=backend, threads=THREADS, n_ctx=1024)
        return cache[key]

    yield get
    for model in cache.values():
        model.close()


# Pairs whose file types the backend runs as they are: for these the bytes a token reads are the file's.
NATIVE = {("cpu_q4", "smollm2-q4_1"), ("cpu_q4", "7b-q4_0"), ("cpu_q4", "7b-q8_0"), ("cpu_q8", "7b-q8_0")}


def _weight_bytes(model: llama2.Model) -> int:
    """Bytes of weights one decoded token reads: every matrix once, but one row of an untied embedding."""
    return sum(t.n_bytes for t in model.file.tensors.values()
               if t.name != "token_embd.weight" or model.file.tied_output)


@pytest.mark.parametrize("model_name", MODEL_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_decode(benchmark, loaded, read_bandwidth: float, backend: str, model_name: str) -> None:
    model = loaded(backend, model_name)
    rng = np.random.default_rng(0)
    with model.session() as s:
        s.eval([int(t) for t in rng.integers(3, model.n_vocab, size=8)])

        def one_token() -> None:
            s.eval([int(rng.integers(3, model.n_vocab))])

        benchmark.pedantic(one_token, rounds=DECODE_TOKENS, iterations=1, warmup_rounds=1)
    tok_s = 1 / benchmark.stats.stats.min
    benchmark.extra_info.update(tok_per_s=tok_s, bandwidth_gb_s=read_bandwidth)
    if (backend, model_name) in NATIVE:
        limit = read_bandwidth * 1e9 / _weight_bytes(model)
        benchmark.extra_info.update(limit_tok_per_s=limit, fraction_of_limit=tok_s / limit)


@pytest.mark.parametrize("n_prompt", PREFILL_SIZES)
@pytest.mark.parametrize("model_name", MODEL_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_prefill(benchmark, loaded, backend: str, model_name: str, n_prompt: int) -> None:
    model = loaded(backend, model_name)
    prompt = [int(t) for t in np.random.default_rng(1).integers(3, model.n_vocab, size=n_prompt)]
    with model.session() as s:

        def prefill() -> None:
            s.truncate(0)
            s.eval(prompt)

        benchmark.pedantic(prefill, rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(tok_per_s=n_prompt / benchmark.stats.stats.min)


def write_7b_models(out_dir: Path) -> None:
    """The 7B-shaped random models the benchmarks name (LLaMA-2 7B's hyper-parameters)."""
    from llama2.convert.gguf_writer import GGMLType, LlamaHParams
    from llama2.convert.synthetic import write_random_llama

    hp = LlamaHParams(n_vocab=32000, n_embd=4096, n_layer=32, n_head=32, n_head_kv=32, n_ff=11008)
    for qtype in ("Q4_0", "Q8_0"):
        path = out_dir / f"7b-{qtype.lower()}.gguf"
        if not path.exists():
            t0 = time.time()
            write_random_llama(path, hp, qtype=GGMLType[qtype], seed=0)
            print(f"wrote {path} in {time.time() - t0:.0f} s")
        print(f"export LLAMA2_BENCH_7B_{qtype}={path}")


if __name__ == "__main__":
    write_7b_models(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
