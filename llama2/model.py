"""Model and Session: the Python API users script against.

A Model is one file loaded by one backend (weights shared read-only); each
Session owns a KV cache. Sessions of one model may be driven from different
threads at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from . import plugins
from .errors import BackendUnavailableError, ContextOverflowError
from .model_file import ModelFile
from .native import NativeBackend, NativeContext, NativeModel
from .system import physical_cores
from .tokenizer import Tokenizer, tokenizer_from_metadata

DEFAULT_MAX_CTX = 4096

# Which backend runs a file best, by the type that holds most of its weight bytes.
_PREFERRED_BACKENDS = {
    "Q4_0": ["cuda_q4", "cpu_q4", "cpu_q8", "cpu_f32"],
    "Q4_1": ["cuda_q4", "cpu_q4", "cpu_q8", "cpu_f32"],
    "Q8_0": ["cpu_q8", "cpu_q4", "cpu_f32"],
    "F16": ["cpu_f32", "cpu_q8"],
    "F32": ["cpu_f32", "cpu_q8"],
}


def choose_backend(model_file: ModelFile) -> NativeBackend:
    """The usable backend that runs this file's main weight type natively, else the first usable one."""
    totals = model_file.weight_bytes_by_type()
    main_type = max(totals, key=lambda k: totals[k]) if totals else "F32"
    registered = plugins.backends()
    reasons = []
    for name in [*_PREFERRED_BACKENDS.get(main_type, []), *sorted(registered)]:
        b = registered.get(name)
        if b is None:
            continue
        ok, why = b.probe()
        if ok:
            return b
        reasons.append(f"{name}: {why}")
    raise BackendUnavailableError("no usable backend: " + ("; ".join(reasons) or "none registered"))


class Model:
    """A GGUF model loaded by one backend."""

    def __init__(self, path: str | os.PathLike[str], backend: str | None = None,
                 threads: int | None = None, n_ctx: int | None = None) -> None:
        t0 = time.perf_counter()
        self.file = ModelFile(path)
        self.path = Path(path)
        self.hparams = self.file.hparams
        self.tokenizer: Tokenizer = tokenizer_from_metadata(self.file.tokenizer_metadata())
        if self.tokenizer.n_vocab != self.hparams.n_vocab:
            from .errors import ModelFormatError

            raise ModelFormatError(
                f"{self.path}: the tokenizer has {self.tokenizer.n_vocab} tokens but the model "
                f"{self.hparams.n_vocab}")
        self.backend = plugins.backend(backend) if backend else choose_backend(self.file)
        self.threads = threads if threads is not None else physical_cores()
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        self.n_ctx = n_ctx if n_ctx is not None else min(self.hparams.n_ctx_train, DEFAULT_MAX_CTX)
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, got {self.n_ctx}")
        self.native: NativeModel = self.backend.load_model(self.file)
        self.load_seconds = time.perf_counter() - t0

    # --- text ---------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos and self.tokenizer.add_bos,
                                     parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    @property
    def n_vocab(self) -> int:
        return self.hparams.n_vocab

    @property
    def chat_template(self) -> str | None:
        return self.file.chat_template

    # --- evaluation ---------------------------------------------------------
    def session(self, n_ctx: int | None = None) -> Session:
        return Session(self, n_ctx or self.n_ctx)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, seed: int | None = None) -> Iterator[str]:
        """Stream the completion of prompt as text pieces. temperature=0 is greedy."""
        session = self.session()
        try:
            yield from session.generate(prompt, max_tokens=max_tokens, temperature=temperature,
                                        top_k=top_k, top_p=top_p, seed=seed)
        finally:
            session.close()

    def close(self) -> None:
        self.native.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    """One conversation's KV cache; remembers which tokens it holds."""

    def __init__(self, model: Model, n_ctx: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self._ctx: NativeContext = model.native.new_context(n_ctx, model.threads)
        self.tokens: list[int] = []  # what the cache holds, position by position
        self.last_eval_tokens = 0  # tokens evaluated by the last call (prefix reuse skips the rest)

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append tokens to the cache; logits of the last one ([n_vocab]) or of all ([n, n_vocab])."""
        tokens = list(tokens)
        if self.n_past + len(tokens) > self.n_ctx:
            raise ContextOverflowError(
                f"{self.n_past + len(tokens)} tokens asked for, the context holds {self.n_ctx}",
                requested=self.n_past + len(tokens), capacity=self.n_ctx)
        logits = self._ctx.eval(tokens, self.n_past, all_logits=all_logits)
        self.tokens.extend(tokens)
        self.last_eval_tokens = len(tokens)
        return logits

    def truncate(self, n: int) -> None:
        """Forget cached tokens from position n on."""
        n = max(0, min(n, self.n_past))
        self._ctx.truncate(n)
        del self.tokens[n:]

    def reset(self) -> None:
        self.truncate(0)

    def set_threads(self, threads: int) -> None:
        self._ctx.set_threads(threads)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, seed: int | None = None) -> Iterator[str]:
        tok = self.model.tokenizer
        ids = self.model.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            ids = [tok.bos_id] if tok.bos_id is not None else []
        if not ids:
            raise ValueError("the prompt is empty and the model has no BOS token to start from")
        self.reset()
        rng = np.random.default_rng(seed)
        logits = self.eval(ids)
        pending = b""
        for _ in range(max_tokens):
            token = _sample_basic(logits, temperature, top_k, top_p, rng)
            if token == tok.eos_id:
                break
            pending += tok.token_bytes(token)
            text, pending = _split_utf8(pending)
            if text:
                yield text
            if self.n_past >= self.n_ctx:
                break
            logits = self.eval([token])
        if pending:
            yield pending.decode("utf-8", errors="replace")

    def close(self) -> None:
        self._ctx.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _split_utf8(data: bytes) -> tuple[str, bytes]:
    """Decode the complete UTF-8 prefix of data; keep an unfinished character for later."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8"), data[cut:]
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace"), b""


def _sample_basic(logits: np.ndarray, temperature: float, top_k: int, top_p: float,
                  rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    k = min(top_k, logits.size) if top_k > 0 else logits.size
    idx = np.argpartition(-logits, k - 1)[:k]
    idx = idx[np.argsort(-logits[idx])]
    z = logits[idx].astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        p = p[:keep] / p[:keep].sum()
        idx = idx[:keep]
    return int(idx[rng.choice(len(p), p=p)])


def load(path: str | os.PathLike[str], backend: str | None = None, threads: int | None = None,
         n_ctx: int | None = None) -> Model:
    """Load a GGUF llama model; the backend defaults to the best usable one for the file's types."""
    return Model(path, backend=backend, threads=threads, n_ctx=n_ctx)
