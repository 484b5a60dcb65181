"""Perplexity and KL divergence, scored exactly as llama.cpp's `llama-perplexity` scores them.

The protocol (llama.cpp tools/perplexity, `perplexity()` and `kl_divergence()`):
the whole text is tokenized once, with BOS when the vocabulary asks for it;
it is cut into consecutive windows of n_ctx tokens (a shorter tail is
dropped); each window is evaluated from an empty cache, its first token
replaced by BOS when the vocabulary adds one; only the second half is scored:
the logits at positions n_ctx/2 .. n_ctx-2 predict the tokens after them, so a
window scores n_ctx - n_ctx/2 - 1 tokens, every one of them with at least
n_ctx/2 tokens of context. PPL = exp(mean NLL) and its standard error is
PPL * sqrt(var(NLL) / (count - 1)), as llama.cpp prints "PPL = x +/- y".
Following that protocol is what makes our numbers comparable with theirs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Rows of logits turned into float64 probabilities at once: bounds the scratch memory
# (64 rows of a 49k vocabulary are 25 MB per array).
_ROW_CHUNK = 64


class Scorable(Protocol):
    """What the scorers need of a model: llama2.Model, or the llama.cpp peer (llama2.llamacpp)."""

    @property
    def n_vocab(self) -> int: ...

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]: ...

    def bos_for_windows(self) -> int | None: ...

    def window_logits(self, window: Sequence[int], first: int) -> np.ndarray: ...


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    ppl_stderr: float  # llama.cpp's "+/-"
    mean_nll: float
    count: int  # tokens scored
    n_windows: int
    n_ctx: int
    n_text_tokens: int

    def __str__(self) -> str:
        return (f"PPL = {self.ppl:.4f} +/- {self.ppl_stderr:.5f} ({self.count} tokens scored in "
                f"{self.n_windows} windows of {self.n_ctx}; the text has {self.n_text_tokens} tokens)")


@dataclass(frozen=True)
class KLResult:
    kld_mean: float
    kld_stderr: float
    kld_p99: float  # 99th percentile of the per-token KL divergence
    kld_max: float
    top1_agreement: float  # share of scored positions where both models rank the same token first
    top1_stderr: float
    ppl_base: float
    ppl_model: float
    ppl_base_stderr: float
    ppl_model_stderr: float
    count: int
    n_windows: int
    n_ctx: int

    def __str__(self) -> str:
        return (f"KLD = {self.kld_mean:.6f} +/- {self.kld_stderr:.6f} (99th percentile {self.kld_p99:.5f}, "
                f"max {self.kld_max:.4f}); same top token: {100 * self.top1_agreement:.3f} +/- "
                f"{100 * self.top1_stderr:.3f} %; PPL base {self.ppl_base:.4f}, model {self.ppl_model:.4f} "
                f"({self.count} tokens in {self.n_windows} windows of {self.n_ctx})")


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error the way llama.cpp computes them (from sums, n-1 in the error)."""
    n = values.size
    mean = float(values.mean())
    var = float(np.mean(values * values)) - mean * mean
    return mean, math.sqrt(var / (n - 1)) if var > 0 and n > 1 else 0.0


def windows(tokens: Sequence[int], n_ctx: int, max_windows: int | None = None,
            bos_id: int | None = None) -> Iterator[list[int]]:
    """Consecutive windows of n_ctx tokens; the first token of each becomes bos_id when given."""
    if n_ctx < 4:
        raise ValueError(f"the context must hold at least 4 tokens, got {n_ctx}")
    if len(tokens) < 2 * n_ctx:
        # llama.cpp refuses too: with one window, half the text would go unscored
        raise ValueError(f"the text has {len(tokens)} tokens; scoring with a context of {n_ctx} "
                         f"needs at least {2 * n_ctx}")
    n = len(tokens) // n_ctx
    if max_windows is not None:
        n = min(n, max_windows)
    for i in range(n):
        window = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if bos_id is not None:
            window[0] = bos_id
        yield window


def count_windows(n_tokens: int, n_ctx: int, max_windows: int | None) -> int:
    n = n_tokens // n_ctx
    return n if max_windows is None else min(n, max_windows)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


def scored_nll(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """-log p(target) per row, in float64; logits [n, vocab], one target per row."""
    out = np.empty(len(targets), dtype=np.float64)
    t = np.asarray(targets, dtype=np.int64)
    for s in range(0, len(t), _ROW_CHUNK):
        lp = _log_softmax(logits[s:s + _ROW_CHUNK])
        out[s:s + _ROW_CHUNK] = -lp[np.arange(lp.shape[0]), t[s:s + _ROW_CHUNK]]
    return out


def _progress(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="window", disable=not enabled, leave=False)


def perplexity(model: Scorable, tokens: Sequence[int], n_ctx: int = 512, *, max_windows: int | None = None,
               progress: bool = False, desc: str = "perplexity") -> PerplexityResult:
    """Perplexity of model over tokens (already tokenized with `model.tokenize(text)`)."""
    first = n_ctx // 2
    n_windows = count_windows(len(tokens), n_ctx, max_windows)
    nll_parts: list[np.ndarray] = []
    running = 0.0
    with _progress(n_windows, desc, progress) as bar:
        for window in windows(tokens, n_ctx, max_windows, model.bos_for_windows()):
            logits = model.window_logits(window, first)  # rows for positions first..n_ctx-1
            nll_parts.append(scored_nll(logits[:-1], window[first + 1:]))
            running += float(nll_parts[-1].sum())
            bar.update()
            bar.set_postfix_str(f"PPL {math.exp(running / (len(nll_parts) * (n_ctx - first - 1))):.4f}")
    nll = np.concatenate(nll_parts)
    mean, err = mean_and_stderr(nll)
    ppl = math.exp(mean)
    return PerplexityResult(ppl=ppl, ppl_stderr=ppl * err, mean_nll=mean, count=int(nll.size),
                            n_windows=n_windows, n_ctx=n_ctx, n_text_tokens=len(tokens))


def _kl_rows(base_logits: np.ndarray, model_logits: np.ndarray, targets: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row: KL(base || model), whether the argmax agrees, and each model's NLL of the target."""
    kld, same, nll_b, nll_m = (np.empty(len(targets)) for _ in range(4))
    for s in range(0, len(targets), _ROW_CHUNK):
        e = s + _ROW_CHUNK
        lb = _log_softmax(base_logits[s:e])
        lm = _log_softmax(model_logits[s:e])
        kld[s:e] = np.einsum("ij,ij->i", np.exp(lb), lb - lm)
        same[s:e] = base_logits[s:e].argmax(axis=1) == model_logits[s:e].argmax(axis=1)
        rows = np.arange(lb.shape[0])
        nll_b[s:e] = -lb[rows, targets[s:e]]
        nll_m[s:e] = -lm[rows, targets[s:e]]
    return kld, same, nll_b, nll_m


def kl_divergence(base: Scorable, model: Scorable, tokens: Sequence[int], n_ctx: int = 512, *,
                  max_windows: int | None = None, progress: bool = False) -> KLResult:
    """How far model's next-token distributions are from base's on the same windows.

    Both models score every window in turn, so nothing is stored between them
    (llama.cpp saves the base's log-probabilities to a file, rounded to 16 bits;
    here both are exact float64).
    """
    if base.n_vocab != model.n_vocab:
        raise ValueError(f"the models have different vocabularies ({base.n_vocab} and {model.n_vocab} tokens)")
    first = n_ctx // 2
    n_windows = count_windows(len(tokens), n_ctx, max_windows)
    parts: list[tuple[np.ndarray, ...]] = []
    with _progress(n_windows, "kl-divergence", progress) as bar:
        for window in windows(tokens, n_ctx, max_windows, base.bos_for_windows()):
            targets = np.asarray(window[first + 1:], dtype=np.int64)
            lb = base.window_logits(window, first)[:-1]
            lm = model.window_logits(window, first)[:-1]
            parts.append(_kl_rows(lb, lm, targets))
            bar.update()
            bar.set_postfix_str(f"KLD {float(np.mean([p[0].mean() for p in parts])):.5f}")
    kld, same, nll_b, nll_m = (np.concatenate([p[i] for p in parts]) for i in range(4))
    kld_mean, kld_err = mean_and_stderr(kld)
    top1 = float(same.mean())
    n = kld.size
    mb, eb = mean_and_stderr(nll_b)
    mm, em = mean_and_stderr(nll_m)
    return KLResult(
        kld_mean=kld_mean, kld_stderr=kld_err, kld_p99=float(np.percentile(kld, 99)), kld_max=float(kld.max()),
        top1_agreement=top1, top1_stderr=math.sqrt(top1 * (1 - top1) / (n - 1)) if n > 1 else 0.0,
        ppl_base=math.exp(mb), ppl_model=math.exp(mm), ppl_base_stderr=math.exp(mb) * eb,
        ppl_model_stderr=math.exp(mm) * em,
        count=int(n), n_windows=n_windows, n_ctx=n_ctx)


class ModelScorer:
    """A llama2.Model seen through the Scorable interface; one session, reset for each window."""

    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        self.model = model
        self._session = None

    @property
    def n_vocab(self) -> int:
        return int(self.model.n_vocab)

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return list(self.model.tokenize(text, add_bos=add_bos))

    def bos_for_windows(self) -> int | None:
        tok = self.model.tokenizer
        return tok.bos_id if tok.add_bos else None

    def window_logits(self, window: Sequence[int], first: int) -> np.ndarray:
        """Logits of positions first..len(window)-1, the window evaluated from an empty cache."""
        if self._session is None or self._session.n_ctx < len(window):
            if self._session is not None:
                self._session.close()
            self._session = self.model.session(n_ctx=len(window))
        s = self._session
        s.reset()
        # The unscored half needs no logits: the output matmul is skipped for it, as in llama.cpp.
        s.eval(window[:first])
        return s.eval(window[first:], all_logits=True)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


class CachedScorer:
    """Keeps a scorer's window logits, so a base model scores each window once for many KL runs.

    Each window costs (n_ctx - first) * n_vocab * 4 bytes: 50 MB for SmolLM2 at n_ctx 512.
    """

    def __init__(self, inner: Scorable) -> None:
        self.inner = inner
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    @property
    def n_vocab(self) -> int:
        return self.inner.n_vocab

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return self.inner.tokenize(text, add_bos=add_bos)

    def bos_for_windows(self) -> int | None:
        return self.inner.bos_for_windows()

    def window_logits(self, window: Sequence[int], first: int) -> np.ndarray:
        key = (first, *window)
        if key not in self._cache:
            self._cache[key] = self.inner.window_logits(window, first)
        return self._cache[key]


def as_scorer(model: object) -> Scorable:
    """A Scorable for a llama2.Model, or the object itself when it already is one."""
    if hasattr(model, "window_logits"):
        return model  # type: ignore[return-value]
    return ModelScorer(model)


# --- the evaluation text ---------------------------------------------------------


PYDOC_TEXT = "@pydoc"  # the name the CLI accepts for pydoc_text()


def pydoc_text(max_chars: int | None = None) -> str:
    """Python's own documentation strings (pydoc_data.topics), in sorted topic order.

    Every Python install carries them, so anyone can reproduce our numbers
    without a download; the text differs between Python versions, so reports
    state the version.
    """
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k].strip() for k in sorted(topics))
    return text if max_chars is None else text[:max_chars]


def read_text(arg: str) -> str:
    """TEXT as the CLI takes it: a UTF-8 file, or @pydoc for pydoc_text()."""
    if arg == PYDOC_TEXT:
        return pydoc_text()
    with open(arg, encoding="utf-8", errors="replace") as f:
        return f.read()

