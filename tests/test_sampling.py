"""The sampler against the definitions of its stages.

Each stage's distribution is written out here the slow obvious way (a full
sort, Python loops, Meta's own top-p code) and compared with what the fast
sampler computes; draws are checked against it with a chi-square test. Seeds
are fixed, so every test gives the same verdict on every run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from llama2.sampling import Sampler, SamplingParams, apply_penalties

try:
    import scipy.stats
except ImportError:  # pragma: no cover - scipy is optional
    scipy = None


# --- chi-square tail -----------------------------------------------------------------------


def _chi2_sf_math(stat: float, dof: int) -> float:
    """P(X > stat) for X ~ chi-square(dof): the regularized upper gamma Q(dof/2, stat/2)."""
    a, x = dof / 2.0, stat / 2.0
    if x <= 0:
        return 1.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        # series for the lower gamma P, then Q = 1 - P
        term = total = 1.0 / a
        k = a
        while abs(term) > abs(total) * 1e-15:
            k += 1
            term *= x / k
            total += term
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # Lentz's continued fraction for Q
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return h * math.exp(log_prefix)


def chi2_sf(stat: float, dof: int) -> float:
    if scipy is not None:
        return float(scipy.stats.chi2.sf(stat, dof))
    return _chi2_sf_math(stat, dof)


@pytest.mark.skipif(scipy is None, reason="scipy not installed; nothing to check the fallback against")
@pytest.mark.parametrize("dof", [1, 2, 5, 11, 40])
def test_math_chi2_tail_matches_scipy(dof: int) -> None:
    for stat in [0.1, 1.0, dof * 0.5, float(dof), dof + 3.0, 2.0 * dof + 10, 100.0]:
        assert _chi2_sf_math(stat, dof) == pytest.approx(scipy.stats.chi2.sf(stat, dof), rel=1e-9, abs=1e-300)


def chi_square_p(counts: dict[int, int], probs: dict[int, float], n: int) -> float:
    """Goodness-of-fit p-value of draw counts against probs (bins under 5 expected are pooled)."""
    assert set(counts) <= set(probs), f"drew tokens outside the support: {set(counts) - set(probs)}"
    stat, dof, pooled_obs, pooled_exp = 0.0, -1, 0, 0.0
    for token, p in probs.items():
        observed, expected = counts.get(token, 0), p * n
        if expected < 5:
            pooled_obs += observed
            pooled_exp += expected
            continue
        stat += (observed - expected) ** 2 / expected
        dof += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / max(pooled_exp, 1e-12)
        dof += 1
    return chi2_sf(stat, max(dof, 1))


# --- the definitions, the slow way ---------------------------------------------------------


def meta_top_p_distribution(probs: np.ndarray, p: float) -> dict[int, float]:
    """The distribution Meta's llama/generation.py `sample_top_p` draws from, computed by its code."""
    torch = pytest.importorskip("torch")
    probs_t = torch.tensor(probs, dtype=torch.float64)
    probs_sort, probs_idx = torch.sort(probs_t, dim=-1, descending=True, stable=True)
    probs_sum = torch.cumsum(probs_sort, dim=-1)
    mask = probs_sum - probs_sort > p
    probs_sort[mask] = 0.0
    probs_sort.div_(probs_sort.sum(dim=-1, keepdim=True))
    return {int(i): float(q) for i, q in zip(probs_idx.tolist(), probs_sort.tolist(), strict=True) if q > 0}


def softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v.astype(np.float64) - v.max())
    return e / e.sum()


def oracle(logits: np.ndarray, history: list[int], params: SamplingParams) -> dict[int, float]:
    """The chain as documented in llama2/sampling.py, stage by stage with a full sort."""
    x = [float(v) for v in logits.astype(np.float32)]
    if params.repeat_last_n != 0:
        window = history if params.repeat_last_n < 0 else history[-params.repeat_last_n :]
        for token in set(window):
            count = window.count(token)
            v = x[token]
            v = v * params.repeat_penalty if v <= 0 else v / params.repeat_penalty
            x[token] = v - count * params.frequency_penalty - params.presence_penalty
    if params.temperature == 0:
        return {max(range(len(x)), key=lambda i: (x[i], -i)): 1.0}
    survivors = sorted(range(len(x)), key=lambda i: (-x[i], i))
    if params.top_k > 0:
        survivors = survivors[: params.top_k]
    if params.top_p < 1:
        vals = np.array([x[i] for i in survivors])
        nucleus = meta_top_p_distribution(softmax(vals), params.top_p)
        survivors = [survivors[j] for j in sorted(nucleus)]
    if params.min_p > 0:
        probs = softmax(np.array([x[i] for i in survivors]))
        floor = params.min_p * probs.max() * (1 - 1e-9)
        survivors = [i for i, q in zip(survivors, probs, strict=True) if q >= floor]
    final = softmax(np.array([x[i] for i in survivors]) / params.temperature)
    return dict(zip(survivors, final.tolist(), strict=True))


def as_dict(ids: np.ndarray, probs: np.ndarray) -> dict[int, float]:
    return {int(i): float(q) for i, q in zip(ids, probs, strict=True)}


def assert_same_distribution(got: dict[int, float], want: dict[int, float]) -> None:
    assert set(got) == set(want)
    tokens = sorted(want)
    g = np.array([got[t] for t in tokens])
    w = np.array([want[t] for t in tokens])
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-9)


# --- fixed inputs --------------------------------------------------------------------------

# twelve distinct logits with no ties, spread so every stage has something to cut
LOGITS = np.array([2.0, 1.5, 1.4, 1.1, 0.9, 0.5, 0.3, 0.0, -0.4, -0.9, -1.5, -3.0], dtype=np.float32)
HISTORY = [0, 0, 3, 7, 0, 11, 3]
NEUTRAL = dict(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0, repeat_penalty=1.0)

STAGES = {
    "temperature": dict(NEUTRAL, temperature=0.7),
    "hot": dict(NEUTRAL, temperature=1.8),
    "top_k": dict(NEUTRAL, top_k=5),
    "top_p": dict(NEUTRAL, top_p=0.8),
    "min_p": dict(NEUTRAL, min_p=0.2),
    "repeat_penalty": dict(NEUTRAL, repeat_penalty=1.5, repeat_last_n=64),
    "repeat_window": dict(NEUTRAL, repeat_penalty=2.0, repeat_last_n=3),
    "frequency": dict(NEUTRAL, frequency_penalty=0.5, repeat_last_n=-1),
    "presence": dict(NEUTRAL, presence_penalty=0.8),
    "all": dict(
        temperature=0.9,
        top_k=8,
        top_p=0.9,
        min_p=0.05,
        repeat_penalty=1.3,
        repeat_last_n=5,
        frequency_penalty=0.2,
        presence_penalty=0.1,
    ),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_distribution_matches_definition(stage: str) -> None:
    params = SamplingParams(seed=0, **STAGES[stage])
    got = as_dict(*Sampler(params).distribution(LOGITS, HISTORY))
    assert_same_distribution(got, oracle(LOGITS, HISTORY, params))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_draws_follow_definition(stage: str) -> None:
    params = SamplingParams(seed=1234, **STAGES[stage])
    sampler = Sampler(params)
    n = 6_000
    counts: dict[int, int] = {}
    for _ in range(n):
        token = sampler.sample(LOGITS, HISTORY)
        counts[token] = counts.get(token, 0) + 1
    p_value = chi_square_p(counts, oracle(LOGITS, HISTORY, params), n)
    assert p_value > 1e-3, f"{stage}: draws do not follow the definition (p={p_value:.2e}, counts {counts})"


def test_chi_square_rejects_a_wrong_distribution() -> None:
    # the check above has teeth: temperature 0.7 draws are not temperature 1.0 draws
    sampler = Sampler(SamplingParams(seed=5, **STAGES["temperature"]))
    n = 6_000
    counts: dict[int, int] = {}
    for _ in range(n):
        token = sampler.sample(LOGITS)
        counts[token] = counts.get(token, 0) + 1
    wrong = oracle(LOGITS, [], SamplingParams(**NEUTRAL))
    assert chi_square_p(counts, wrong, n) < 1e-6


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.75, 0.9, 0.95, 0.99])
def test_top_p_is_metas_sample_top_p(top_p: float) -> None:
    rng = np.random.default_rng(7)
    for scale in [0.3, 1.0, 4.0]:
        logits = (rng.standard_normal(5000) * scale).astype(np.float32)
        params = SamplingParams(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0, seed=0)
        got = as_dict(*Sampler(params).distribution(logits))
        assert_same_distribution(got, meta_top_p_distribution(softmax(logits), top_p))


def test_top_p_draws_against_meta() -> None:
    params = SamplingParams(temperature=1.0, top_k=0, top_p=0.85, min_p=0.0, seed=99)
    sampler = Sampler(params)
    n = 6_000
    counts: dict[int, int] = {}
    for _ in range(n):
        token = sampler.sample(LOGITS)
        counts[token] = counts.get(token, 0) + 1
    assert chi_square_p(counts, meta_top_p_distribution(softmax(LOGITS), 0.85), n) > 1e-3


def test_top_p_keeps_the_top_token_of_a_flat_vocabulary() -> None:
    # uniform over n with a tiny top_p: llama2.c's cutoff is above every probability
    logits = np.zeros(1000, dtype=np.float32)
    ids, probs = Sampler(SamplingParams(top_k=0, top_p=1e-4, min_p=0.0)).distribution(logits)
    assert ids.tolist() == [0] and probs.tolist() == [1.0]


@pytest.mark.parametrize("seed", range(6))
def test_large_vocabulary_fast_paths_match_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 49152
    if seed % 2:
        # few distinct values: ties at every cut must resolve by id
        logits = rng.integers(-8, 3, n).astype(np.float32)
    else:
        logits = (rng.standard_normal(n) * (0.5 + seed)).astype(np.float32)
    history = rng.integers(0, n, 100).tolist()
    for extra in [
        dict(top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1),
        dict(top_k=0, top_p=0.9, min_p=0.0),
        dict(top_k=0, top_p=0.995, min_p=0.0, temperature=1.7),
        dict(top_k=0, top_p=1.0, min_p=0.1),
        dict(top_k=3000, top_p=1.0, min_p=0.0),
        dict(top_k=7, top_p=0.5, min_p=0.0, frequency_penalty=1.0, presence_penalty=0.5),
    ]:
        params = SamplingParams(**{"temperature": 0.8, "seed": 0, **extra})
        ids, probs = Sampler(params).distribution(logits, history)
        want = oracle(logits, history, params)
        assert_same_distribution(as_dict(ids, probs), want)
        if params.top_k:
            # top-k candidates come ranked: logit descending, ties by id
            pen = apply_penalties(logits, history, params)
            keys = [(-pen[i], i) for i in ids]
            assert keys == sorted(keys)


def test_penalties_follow_llama_cpp() -> None:
    logits = np.array([2.0, -1.0, 0.5, 3.0], dtype=np.float32)
    params = SamplingParams(repeat_penalty=2.0, frequency_penalty=0.25, presence_penalty=0.5, repeat_last_n=4)
    # the window is the last four tokens: [1, 1, 0, 1]; token 3 fell out of it
    out = apply_penalties(logits, [3, 3, 1, 1, 0, 1], params)
    assert out.tolist() == [2.0 / 2 - 0.25 - 0.5, -1.0 * 2 - 3 * 0.25 - 0.5, 0.5, 3.0]
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0]  # the caller's logits are not touched


def test_window_shorter_than_history_and_longer() -> None:
    logits = np.zeros(20, dtype=np.float32)
    params = SamplingParams(presence_penalty=1.0, repeat_last_n=15)
    assert np.flatnonzero(apply_penalties(logits, list(range(10)), params)).tolist() == list(range(10))
    assert np.flatnonzero(apply_penalties(logits, list(range(20)), params)).tolist() == list(range(5, 20))


def test_greedy_is_argmax_after_penalties() -> None:
    params = SamplingParams.greedy()
    assert Sampler(params).sample(LOGITS, HISTORY) == 0
    penalized = SamplingParams(temperature=0.0, repeat_penalty=3.0)
    assert Sampler(penalized).sample(LOGITS, [0]) == 1
    ties = np.array([1.0, 5.0, 5.0, 2.0], dtype=np.float32)
    assert Sampler(params).sample(ties) == 1


def test_seed_reproduces_and_varies() -> None:
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=42)
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)

    def run(p: SamplingParams) -> list[int]:
        s = Sampler(p)
        return [s.sample(logits) for _ in range(50)]

    assert run(params) == run(params)
    assert run(params) != run(SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=43))
    # the same draws whether the logits arrive as float32 or float64
    s32, s64 = Sampler(params), Sampler(params)
    as64 = logits.astype(np.float64)
    assert [s32.sample(logits) for _ in range(50)] == [s64.sample(as64) for _ in range(50)]


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=-0.1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(min_p=-0.1),
        dict(repeat_penalty=0.0),
        dict(repeat_last_n=-2),
        dict(temperature=float("nan")),
    ],
)
def test_invalid_params_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_bad_logits_are_refused() -> None:
    with pytest.raises(ValueError, match="non-empty vector"):
        Sampler().sample(np.zeros((2, 3), dtype=np.float32))
