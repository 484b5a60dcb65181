"""Perplexity and KL divergence against a direct float64 computation with the PyTorch reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

import llama2
from llama2.cli import main
from llama2.perplexity import CachedScorer, ModelScorer, as_scorer, kl_divergence, perplexity, pydoc_text, windows
from llama2.reference import reference_from_gguf

N_CTX = 16


def _log_softmax64(row: np.ndarray) -> np.ndarray:
    z = np.asarray(row, dtype=np.float64)
    m = z.max()
    return z - m - math.log(np.exp(z - m).sum())


def _direct_nll(ref, tokens: list[int], n_ctx: int, bos: int | None) -> np.ndarray:
    """llama.cpp's protocol written out longhand: fresh cache per window, BOS first, second half scored."""
    nll = []
    for start in range(0, len(tokens) - n_ctx + 1, n_ctx):
        w = list(tokens[start:start + n_ctx])
        if bos is not None:
            w[0] = bos
        ref.reset()
        logits = ref.eval(w)
        for pos in range(n_ctx // 2, n_ctx - 1):
            nll.append(-_log_softmax64(logits[pos])[w[pos + 1]])
    return np.array(nll)


def _tokens(n_vocab: int, n: int, seed: int = 1) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(3, n_vocab, size=n)]


def test_windows_follow_llama_cpp() -> None:
    toks = list(range(10, 10 + 3 * 8 + 5))  # three windows and a tail that is dropped
    ws = list(windows(toks, 8, bos_id=1))
    assert len(ws) == 3
    assert ws[1] == [1, *toks[9:16]]
    assert [w[0] for w in windows(toks, 8, max_windows=2)] == [10, 18]
    with pytest.raises(ValueError, match="at least 16"):
        list(windows(toks[:15], 8))


@pytest.mark.parametrize("shape", ["gqa", "mha"])
def test_perplexity_matches_reference(tiny_model, shape: str) -> None:
    path = tiny_model(shape, "F32")
    with llama2.load(path, backend="cpu_f32", threads=1) as model:
        scorer = ModelScorer(model)
        assert scorer.bos_for_windows() == 1  # the synthetic vocabulary adds BOS
        tokens = _tokens(model.n_vocab, 3 * N_CTX + 5)
        got = perplexity(scorer, tokens, N_CTX)
        scorer.close()
    nll = _direct_nll(reference_from_gguf(str(path)), tokens, N_CTX, bos=1)
    assert got.count == nll.size == 3 * (N_CTX // 2 - 1)
    assert got.n_windows == 3
    ppl = math.exp(nll.mean())
    err = ppl * math.sqrt((np.mean(nll**2) - nll.mean() ** 2) / (nll.size - 1))
    assert got.ppl == pytest.approx(ppl, rel=1e-4)
    assert got.ppl_stderr == pytest.approx(err, rel=1e-3)
    # a random model is a poor predictor: the number is far from 1, so the test can tell scorings apart
    assert got.ppl > 2


def test_kl_divergence_self_and_quantized(tiny_model) -> None:
    f32, q8 = tiny_model("gqa", "F32"), tiny_model("gqa", "Q8_0")
    with llama2.load(f32, backend="cpu_f32", threads=1) as base, \
            llama2.load(q8, backend="cpu_f32", threads=1) as quant:
        b, q = ModelScorer(base), ModelScorer(quant)
        tokens = _tokens(base.n_vocab, 4 * N_CTX)
        same = kl_divergence(b, ModelScorer(base), tokens, N_CTX)
        assert abs(same.kld_mean) < 1e-9
        assert same.top1_agreement == 1.0
        assert same.ppl_base == pytest.approx(same.ppl_model)
        got = kl_divergence(b, q, tokens, N_CTX)
        cached = CachedScorer(b)
        assert kl_divergence(cached, q, tokens, N_CTX) == got  # filled the cache
        assert kl_divergence(cached, q, tokens, N_CTX) == got  # served from it
        b.close()
        q.close()
    # the same quantity from the float64 reference on both files
    rb, rq = reference_from_gguf(str(f32)), reference_from_gguf(str(q8))
    kld, agree = [], []
    for start in range(0, len(tokens), N_CTX):
        w = [1, *tokens[start + 1:start + N_CTX]]
        rb.reset()
        rq.reset()
        lb, lq = rb.eval(w), rq.eval(w)
        for pos in range(N_CTX // 2, N_CTX - 1):
            pb, pq = _log_softmax64(lb[pos]), _log_softmax64(lq[pos])
            kld.append(float(np.sum(np.exp(pb) * (pb - pq))))
            agree.append(lb[pos].argmax() == lq[pos].argmax())
    assert got.count == len(kld)
    assert got.kld_mean > 0
    assert got.kld_mean == pytest.approx(np.mean(kld), rel=0.05, abs=1e-6)
    assert got.top1_agreement == pytest.approx(np.mean(agree), abs=2 / len(agree))


def test_cli_prints_results(tiny_model, tmp_path, capsys) -> None:
    f32, q8 = tiny_model("gqa", "F32"), tiny_model("gqa", "Q8_0")
    text = tmp_path / "text.txt"
    text.write_text(pydoc_text(3000), encoding="utf-8")
    assert main(["perplexity", str(f32), str(text), "--ctx", "32", "--windows", "2", "--quiet",
                 "--backend", "cpu_f32", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "PPL = " in out and "2 windows of 32" in out
    with llama2.load(f32, backend="cpu_f32", threads=1) as model:
        s = ModelScorer(model)
        expected = perplexity(s, s.tokenize(text.read_text(encoding="utf-8")), 32, max_windows=2)
        s.close()
    assert f"PPL = {expected.ppl:.4f}" in out
    assert main(["kl-divergence", str(f32), str(q8), str(text), "--ctx", "32", "--windows", "2", "--quiet",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "KLD = " in out and "same top token" in out


def test_cli_rejects_short_text(tiny_model, tmp_path, capsys) -> None:
    text = tmp_path / "short.txt"
    text.write_text("the", encoding="utf-8")
    assert main(["perplexity", str(tiny_model("gqa", "F32")), str(text), "--quiet"]) == 2
    assert "needs at least 1024" in capsys.readouterr().err


def _scored_by_both(path, backend: str | None = None, check_tokens: bool = False) -> tuple[float, float]:
    """Perplexity of the pydoc text (8 windows of 512) on our backend and on llama.cpp, same file."""
    from llama2.llamacpp import LlamaCppModel

    text = pydoc_text(60_000)
    with llama2.load(path, backend=backend, threads=2) as model:
        ours_scorer = ModelScorer(model)
        tokens = ours_scorer.tokenize(text)
        ours = perplexity(ours_scorer, tokens, 512, max_windows=8)
        ours_scorer.close()
    peer = LlamaCppModel(path, threads=2, n_ctx=512, all_logits_capable=True)
    try:
        if check_tokens:
            assert peer.tokenize(text) == tokens
        theirs = perplexity(as_scorer(peer), tokens, 512, max_windows=8)
    finally:
        peer.close()
    return ours.ppl, theirs.ppl


@pytest.mark.slow
def test_smollm2_perplexity_agrees_with_llama_cpp(smollm2_path) -> None:
    """The issue's acceptance check: same file, same text, same protocol, within 1% of llama.cpp."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the .[bench] extra) is not installed")
    ours, theirs = _scored_by_both(smollm2_path, check_tokens=True)
    assert ours == pytest.approx(theirs, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize(("qtype", "backend"), [("Q8_0", "cpu_q8"), ("Q4_0", "cpu_q4")])
def test_8_and_4_bit_backends_score_like_llama_cpp(smollm2_path, tmp_path_factory, qtype: str,
                                                   backend: str) -> None:
    """Issue 4's check: our Q8_0 and Q4_0 files of SmolLM2, each on its backend, within 0.5% of llama.cpp.

    Both engines round activations to 8-bit blocks, so they should differ by
    little more than the order of float additions (measured 0.14% and 0.32%).
    """
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the .[bench] extra) is not installed")
    from llama2.convert.export import export, open_checkpoint
    from llama2.convert.gguf_writer import GGMLType

    path = tmp_path_factory.mktemp("smollm2") / f"smollm2-{qtype}.gguf"
    export(open_checkpoint(smollm2_path), path, GGMLType[qtype], search=False, progress=False)
    ours, theirs = _scored_by_both(path, backend)
    assert ours == pytest.approx(theirs, rel=0.005), f"{qtype} on {backend}: ours {ours:.4f}, llama.cpp {theirs:.4f}"
