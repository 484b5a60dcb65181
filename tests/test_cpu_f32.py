"""cpu_f32 against the PyTorch float64 reference, on random models of several shapes and types.

Quantized files are dequantized at load by cpu_f32 and by the reference alike,
so every type must match to float32 rounding.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import llama2
from llama2.errors import ContextOverflowError
from llama2.native import ffi
from llama2.reference import reference_from_gguf

REL_TOL = 1e-4
PROMPT = [1, 17, 260, 45, 3, 99, 150, 7, 288, 12, 64]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def load(path, n_ctx: int = 256, threads: int = 2) -> llama2.Model:
    return llama2.load(path, backend="cpu_f32", threads=threads, n_ctx=n_ctx)


CASES = [
    ("mha", "F32", False),
    ("mha", "Q8_0", True),
    ("gqa", "F32", True),
    ("gqa", "Q4_0", False),
    ("gqa", "F16", False),
    ("mqa_rot", "F32", False),
    ("mqa_rot", "Q4_1", True),
    ("mqa_rot", "Q8_0", False),
]


@pytest.mark.parametrize(("shape", "qtype", "tied"), CASES)
def test_logits_match_reference(tiny_model, shape: str, qtype: str, tied: bool) -> None:
    path = tiny_model(shape, qtype, tied=tied)
    ref = reference_from_gguf(str(path))
    with load(path) as model, model.session() as s:
        # a batch with every token's logits, then single tokens continuing it, then a batch again
        got = s.eval(PROMPT, all_logits=True)
        want = ref.eval(PROMPT)
        assert got.shape == want.shape
        assert rel_err(got, want) < REL_TOL
        for token in (5, 290, 33):
            assert rel_err(s.eval([token]), ref.eval([token])[0]) < REL_TOL
        last = s.eval([8, 9, 10])
        assert last.shape == (model.n_vocab,)
        assert rel_err(last, ref.eval([8, 9, 10])[-1]) < REL_TOL


def test_batch_equals_token_by_token(tiny_model) -> None:
    path = tiny_model("gqa", "F32")
    with load(path) as model, model.session() as a, model.session() as b:
        batch = a.eval(PROMPT, all_logits=True)
        singles = np.stack([b.eval([t]) for t in PROMPT])
        assert rel_err(batch, singles) < 1e-6


def test_batch_longer_than_a_chunk(tiny_model) -> None:
    # the engine evaluates at most 512 tokens at a time; a longer batch is split into chunks
    path = tiny_model("mha", "F32", seed=3)
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, 320, size=530)]
    ref = reference_from_gguf(str(path))
    with load(path, n_ctx=600) as model, model.session() as s:
        got = s.eval(tokens, all_logits=True)
        assert rel_err(got, ref.eval(tokens)) < REL_TOL
        with model.session() as last_only:
            assert rel_err(last_only.eval(tokens), got[-1]) < 1e-6


@pytest.mark.parametrize(("shape", "qtype"), [("gqa", "F32"), ("mqa_rot", "Q4_0")])
def test_greedy_continuation_matches_reference(tiny_model, shape: str, qtype: str) -> None:
    path = tiny_model(shape, qtype, seed=1)
    ref = reference_from_gguf(str(path))
    ours, theirs = [], []
    with load(path) as model, model.session() as s:
        logits, ref_logits = s.eval(PROMPT), ref.eval(PROMPT)[-1]
        for _ in range(64):
            ours.append(int(np.argmax(logits)))
            theirs.append(int(np.argmax(ref_logits)))
            logits, ref_logits = s.eval([ours[-1]]), ref.eval([theirs[-1]])[-1]
    assert ours == theirs


def test_truncate_and_reeval(tiny_model) -> None:
    path = tiny_model("gqa", "Q8_0")
    with load(path) as model, model.session() as s:
        first = s.eval(PROMPT, all_logits=True)
        s.truncate(4)
        assert s.n_past == 4
        again = s.eval(PROMPT[4:], all_logits=True)
        np.testing.assert_allclose(again, first[4:], rtol=1e-6, atol=1e-6)
        # a different continuation of the same prefix
        s.truncate(4)
        other = s.eval([200, 201], all_logits=True)
        with model.session() as fresh:
            np.testing.assert_allclose(other, fresh.eval([*PROMPT[:4], 200, 201], all_logits=True)[4:],
                                       rtol=1e-6, atol=1e-6)


def test_context_full_is_a_clean_error(tiny_model) -> None:
    path = tiny_model("mha", "F32")
    with load(path, n_ctx=8) as model, model.session() as s:
        s.eval(PROMPT[:6])
        with pytest.raises(ContextOverflowError):
            s.eval(PROMPT[6:9])
        assert rel_err(s.eval(PROMPT[6:8]), model.session().eval(PROMPT[:8])) < 1e-6

        # the backend's own check, past the Python one
        f = ffi()
        ctx = model.native.new_context(8, 1)
        api = model.backend.api
        err = f.new("char[256]")
        tokens = f.new("int32_t[]", PROMPT[:9])
        logits = f.new("float[]", model.n_vocab)
        assert api.eval(ctx._ptr, tokens, 9, 0, 0, logits, err, 256) == 4  # LLAMA2_ERR_CONTEXT_FULL
        assert "context full" in f.string(err).decode()
        assert api.eval(ctx._ptr, tokens, 2, 1, 0, logits, err, 256) == 1  # pos past the cached length
        assert api.eval(ctx._ptr, tokens, 8, 0, 0, logits, err, 256) == 0
        ctx.close()


def test_two_sessions_on_two_threads(tiny_model) -> None:
    path = tiny_model("gqa", "F32", seed=2)
    rng = np.random.default_rng(1)
    prompts = [[int(t) for t in rng.integers(0, 384, size=40)] for _ in range(2)]
    with load(path) as model:

        def run(prompt: list[int]) -> np.ndarray:
            with model.session() as s:
                out = [s.eval(prompt, all_logits=True)]
                out += [s.eval([t])[None] for t in prompt[:20]]
                return np.concatenate(out)

        sequential = [run(p) for p in prompts]
        results: list[np.ndarray | None] = [None, None]

        def worker(i: int) -> None:
            results[i] = run(prompts[i])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for got, want in zip(results, sequential, strict=True):
            np.testing.assert_array_equal(got, want)


def test_smollm2_completes_paris(smollm2_path) -> None:
    with llama2.load(smollm2_path, backend="cpu_f32", threads=2) as model:
        text = "".join(model.generate("The capital of France is", max_tokens=8, temperature=0))
    assert " Paris" in text
