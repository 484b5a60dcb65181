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
    """Loop time minus backend time, per token, generating with every sampler on."""
    import llama2
    from llama2.model import Session

    model = llama2.load(smollm2_path, n_ctx=512)
    spent = [0.0]
    real_eval = Session.eval

    def timed_eval(self, tokens, all_logits=False):
        t = time.perf_counter()
        try:
            return real_eval(self, tokens, all_logits)
        finally:
            spent[0] += time.perf_counter() - t

    def run() -> float:
        session = model.session()
        session.eval = timed_eval.__get__(session)  # this session only
        spent[0] = 0.0
        t0 = time.perf_counter()
        g = session.generate("Once upon a time", 32, sampling=ALL_ON)
        for _ in g:
            pass
        total = time.perf_counter() - t0
        session.close()
        return (total - spent[0]) / max(1, len(g.tokens))

    overhead = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["python_overhead_ms_per_token"] = overhead * 1e3
    print(f"\nPython overhead per token (sampler, streaming, bookkeeping): {overhead * 1e3:.3f} ms")
    model.close()
