"""llama.cpp as a peer, through llama-cpp-python (the optional `.[bench]` extra).

The benchmarks and the perplexity tools compare our backends with llama.cpp
on the very same GGUF file and thread count. This module gives llama.cpp the
surface of llama2.Model / Session that they use (tokenize, session, eval with
the last or all logits, reset), so every comparison runs one code path.
Nothing here is imported unless llama-cpp-python is installed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PEER_NAME = "llama.cpp"


def available() -> tuple[bool, str]:
    """Whether llama-cpp-python can be imported, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        return False, f"llama-cpp-python is not installed ({exc}); pip install 'llama2[bench]'"
    return True, ""


def version() -> str:
    import llama_cpp

    return str(getattr(llama_cpp, "__version__", "unknown"))


@dataclass(frozen=True)
class _Vocab:
    bos_id: int | None
    add_bos: bool


class LlamaCppModel:
    """One GGUF file loaded by llama.cpp on the CPU; one session at a time (llama.cpp's context).

    all_logits_capable: keep logits of every position (needed by perplexity);
    it makes llama.cpp run the output matrix on every prompt token, so the
    speed benchmarks leave it off.
    """

    backend_name = PEER_NAME

    def __init__(self, path: str | os.PathLike[str], threads: int, n_ctx: int = 512,
                 all_logits_capable: bool = False) -> None:
        from llama_cpp import Llama

        t0 = time.perf_counter()
        self.path = Path(path)
        self.threads = threads
        self.n_ctx = n_ctx
        self._all = all_logits_capable
        self._llm: Any = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                               n_threads_batch=threads, n_gpu_layers=0, logits_all=all_logits_capable,
                               verbose=False)
        self.load_seconds = time.perf_counter() - t0
        with_bos = self._llm.tokenize(b"a", add_bos=True, special=False)
        without = self._llm.tokenize(b"a", add_bos=False, special=False)
        bos = int(self._llm.token_bos())
        self.tokenizer = _Vocab(bos_id=bos if bos >= 0 else None, add_bos=len(with_bos) > len(without))

    @property
    def n_vocab(self) -> int:
        return int(self._llm.n_vocab())

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return [int(t) for t in self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)]

    def session(self, n_ctx: int | None = None) -> LlamaCppSession:
        if n_ctx is not None and n_ctx > self.n_ctx:
            raise ValueError(f"llama.cpp was loaded with a context of {self.n_ctx}, {n_ctx} asked for")
        return LlamaCppSession(self)

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None and hasattr(llm, "close"):
            llm.close()


class LlamaCppSession:
    """The model's llama.cpp context, emptied when the session starts."""

    def __init__(self, model: LlamaCppModel) -> None:
        self.model = model
        self.n_ctx = model.n_ctx
        model._llm.reset()

    @property
    def n_past(self) -> int:
        return int(self.model._llm.n_tokens)

    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        import llama_cpp

        llm = self.model._llm
        start = int(llm.n_tokens)
        llm.eval(list(tokens))
        if all_logits:
            if not self.model._all:
                raise ValueError("load LlamaCppModel with all_logits_capable=True to get every position's logits")
            return np.array(llm.scores[start:start + len(tokens)], dtype=np.float32)
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()

    def reset(self) -> None:
        self.model._llm.reset()

    def truncate(self, n: int) -> None:
        if n != 0:
            raise ValueError("the llama.cpp peer only empties its context (truncate(0))")
        self.reset()

    def close(self) -> None:
        """Nothing to free: the context belongs to the model."""


def load_for_comparison(path: str | os.PathLike[str], backend: str | None, threads: int | None,
                        n_ctx: int, all_logits_capable: bool = False) -> Any:
    """Our model on `backend`, or the llama.cpp peer when backend is "llama.cpp"."""
    if backend == PEER_NAME:
        ok, why = available()
        if not ok:
            from .errors import BackendUnavailableError

            raise BackendUnavailableError(why)
        from .system import physical_cores

        return LlamaCppModel(path, threads or physical_cores(), n_ctx, all_logits_capable)
    from .model import load

    return load(path, backend=backend, threads=threads, n_ctx=n_ctx)


def runner_name(model: Any) -> str:
    """The backend name of a llama2.Model, or llama.cpp for the peer."""
    return PEER_NAME if isinstance(model, LlamaCppModel) else str(model.backend.name)
