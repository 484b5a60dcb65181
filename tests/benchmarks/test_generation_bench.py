"""What the Python side costs per generated token: the sampler alone, and the whole loop on SmolLM2.

Run: pytest tests/benchmarks/test_generation_bench.py --benchmark-only
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from llama2.sampling import Sampler, SamplingParams

VOCAB = 49152  # SmolLM2's vocabulary
ALL_ON = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1,
                        repeat_last_n=64, frequency_penalty=0.1, presence_penalty=0.1, seed=0)
CASES = {
    "all_on": ALL_ON,
    "no_top_k": SamplingParams(temperature=0.8, top_k=0, top_p=0.95, min_p=0.05, seed=0),
    "temperature_only": SamplingParams(temperature=0.8, top_k=0, top_p=1.0, min_p=0.0, seed=0),
    "greedy": SamplingParams(temperature=0.0),
}


def logits_like_a_model(rng: np.random.Generator) -> np.ndarray:
    # a language model's logits: a broad bulk and a few strong candidates
    x = rng.standard_normal(VOCAB).astype(np.float32) * 2.0
    x[rng.integers(0, VOCAB, 20)] += 8.0
    return x


@pytest.mark.parametrize("case", list(CASES))
def test_sampler_per_token(benchmark, case: str) -> None:
    rng = np.random.default_rng(0)
    logits = logits_like_a_model(rng)
    history = rng.integers(0, VOCAB, 300).tolist()
    sampler = Sampler(CASES[case])
    benchmark(sampler.sample, logits, history)


def test_python_overhead_per_token_smollm2(smollm2_path: Path, benchmark) -> None:
    """Time outside the backend's eval, per token, generating with every sampler on.

    Reported twice: wall time, and CPU time of the generating thread (which a
    busy machine does not inflate: being descheduled costs no CPU time).
    """
    import llama2
    from llama2.model import Session

    model = llama2.load(smollm2_path, n_ctx=512)
    inside = {"wall": 0.0, "cpu": 0.0}
    real_eval = Session.eval

    def timed_eval(self, tokens, all_logits=False):
        w, c = time.perf_counter(), time.thread_time()
        try:
            return real_eval(self, tokens, all_logits)
        finally:
            inside["wall"] += time.perf_counter() - w
            inside["cpu"] += time.thread_time() - c

    def run() -> tuple[float, float]:
        session = model.session()
        session.eval = timed_eval.__get__(session)  # this session only
        inside.update(wall=0.0, cpu=0.0)
        w, c = time.perf_counter(), time.thread_time()
        g = session.generate("Once upon a time", 32, sampling=ALL_ON)
        for _ in g:
            pass
        n = max(1, len(g.tokens))
        wall = (time.perf_counter() - w - inside["wall"]) / n
        cpu = (time.thread_time() - c - inside["cpu"]) / n
        session.close()
        return wall, cpu

    wall, cpu = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(overhead_wall_ms=wall * 1e3, overhead_cpu_ms=cpu * 1e3)
    print(f"\nPython overhead per token outside eval: {wall * 1e3:.3f} ms wall, {cpu * 1e3:.3f} ms CPU")
    model.close()
