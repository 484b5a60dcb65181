"""Model and Session: the Python API users script against.

A Model is one file loaded by one backend (weights shared read-only); each
Session owns a KV cache. Sessions of one model may be driven from different
threads at once.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from . import generation as gen
from . import plugins
from .chat_template import ChatFormat, Message
from .errors import BackendUnavailableError, ContextOverflowError
from .model_file import ModelFile
from .native import NativeBackend, NativeContext, NativeModel
from .sampling import SamplingParams
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
        # generate() and chat() on the model use this session while it is free, so a chat
        # driven through the model reuses its cache; a concurrent call gets a fresh session
        self._own_session: Session | None = None
        self._own_session_lock = threading.Lock()

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

    @cached_property
    def chat_format(self) -> ChatFormat:
        """The file's chat template, or LLaMA-2's chat format when it has none."""
        return ChatFormat.for_tokenizer(self.chat_template, self.tokenizer)

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True,
                            **extra: Any) -> str:
        """Render OpenAI-style messages to the prompt text, without generating."""
        return self.chat_format.render(messages, add_generation_prompt, **extra)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, **kwargs: Any) -> gen.Generation:
        """Stream the completion of prompt as text pieces; see Session.generate."""
        session, release = self._borrow_session()
        try:
            g = session.generate(prompt, max_tokens, **kwargs)
        except BaseException:
            release()
            raise
        g.add_done_callback(release)
        return g

    def chat(self, messages: Sequence[Message], max_tokens: int = 512, **kwargs: Any) -> gen.Generation:
        """Stream the assistant's answer to messages; see Session.chat."""
        session, release = self._borrow_session()
        try:
            g = session.chat(messages, max_tokens, **kwargs)
        except BaseException:
            release()
            raise
        g.add_done_callback(release)
        return g

    def _borrow_session(self) -> tuple[Session, Callable[[], None]]:
        if self._own_session_lock.acquire(blocking=False):
            if self._own_session is None:
                try:
                    self._own_session = Session(self, self.n_ctx)
                except BaseException:
                    self._own_session_lock.release()
                    raise
            return self._own_session, self._own_session_lock.release
        session = Session(self, self.n_ctx)
        return session, session.close

    def close(self) -> None:
        if self._own_session is not None:
            self._own_session.close()
            self._own_session = None
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
        self.n_evaluated = 0  # tokens evaluated over the session's life

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
        self.n_evaluated += len(tokens)
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

    def feed(self, tokens: Sequence[int]) -> np.ndarray:
        """Make the cache hold exactly tokens, evaluating only those past the common prefix
        with what it holds now; returns the last token's logits."""
        return gen.feed(self, tokens)

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, *,
                 stop: Sequence[str] | str | None = None, cancel: threading.Event | None = None,
                 sampling: SamplingParams | None = None, **sampling_kwargs: Any) -> gen.Generation:
        """Stream the completion of prompt (text or token ids) as text pieces.

        Sampling is `sampling` with any SamplingParams field given by keyword
        replaced (temperature=0 is greedy). Generation ends at an end-of-generation
        token, after max_tokens, at a stop string (not emitted), when cancelled
        (cancel.set() or Generation.cancel() from any thread), or when the context
        is full; `stop_reason` on the returned Generation says which. The cache
        keeps the prompt's common prefix with what it held, so a prompt that
        extends the previous one only evaluates what is new.
        """
        ids = self.model.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids and self.model.tokenizer.bos_id is not None:
            ids = [self.model.tokenizer.bos_id]
        if not ids:
            raise ValueError("the prompt is empty and the model has no BOS token to start from")
        gen.check_fits(len(ids), self.n_ctx)
        params = gen.sampling_params(sampling, **sampling_kwargs)
        return gen.Generation(self, ids, params=params, max_tokens=max_tokens, stop=stop, cancel=cancel)

    def chat(self, messages: Sequence[Message], max_tokens: int = 512, *,
             stop: Sequence[str] | str | None = None, cancel: threading.Event | None = None,
             overflow: gen.OverflowPolicy = "error", sampling: SamplingParams | None = None,
             **sampling_kwargs: Any) -> gen.Generation:
        """Stream the assistant's answer to OpenAI-style messages (see generate).

        overflow="error" raises ContextOverflowError when the prompt does not fit;
        "drop_oldest" drops the oldest turns (keeping the system prompt) until the
        prompt leaves room for max_tokens. `Generation.messages` are the messages
        the prompt was built from.
        """
        ids, kept = gen.chat_prompt(self.model.chat_format, self.model.tokenizer.encode, messages,
                                    self.n_ctx, max_tokens, overflow)
        params = gen.sampling_params(sampling, **sampling_kwargs)
        g = gen.Generation(self, ids, params=params, max_tokens=max_tokens, stop=stop, cancel=cancel)
        g.messages = kept
        return g

    def close(self) -> None:
        self._ctx.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(path: str | os.PathLike[str], backend: str | None = None, threads: int | None = None,
         n_ctx: int | None = None) -> Model:
    """Load a GGUF llama model; the backend defaults to the best usable one for the file's types."""
    return Model(path, backend=backend, threads=threads, n_ctx=n_ctx)
