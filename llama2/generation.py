"""Generation on a session: prefix reuse, the context policy, the token loop, cancellation.

A session's cache holds the tokens it has evaluated. A new prompt is compared
with them: the longest common prefix stays, the cache is cut there, and only
the rest is evaluated, so the second turn of a long chat costs its new tokens,
not the whole history.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .chat_template import ChatFormat, Message
from .errors import ContextOverflowError
from .sampling import Sampler, SamplingParams
from .streaming import StopReason, TextAssembler

if TYPE_CHECKING:
    from .model import Session

OverflowPolicy = Literal["error", "drop_oldest"]

# Control tokens that end a turn in the chat formats llama.cpp knows (it finds them by name the same way).
_END_OF_GENERATION_NAMES = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|eom_id|>")


def end_of_generation_ids(tokenizer: Any) -> frozenset[int]:
    """EOS plus the vocabulary's end-of-turn control tokens."""
    ids = {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
    tokens = getattr(tokenizer, "tokens", None)
    if tokens is not None:
        wanted = set(_END_OF_GENERATION_NAMES)
        ids |= {i for i, t in enumerate(tokens) if t in wanted and tokenizer.is_special(i)}
    return frozenset(ids)


def sampling_params(base: SamplingParams | None = None, **overrides: Any) -> SamplingParams:
    """base (default: SamplingParams()) with the given fields replaced; None values are ignored."""
    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(base or SamplingParams(), **{k: v for k, v in overrides.items() if v is not None})


# --- prefix reuse ----------------------------------------------------------------------------


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int64)
    y = np.asarray(b[:n], dtype=np.int64)
    diff = np.flatnonzero(x != y)
    return int(diff[0]) if diff.size else n


def feed(session: Session, tokens: Sequence[int]) -> np.ndarray:
    """Make the cache hold exactly tokens, evaluating only what is not cached; the last token's logits."""
    tokens = list(tokens)
    if not tokens:
        raise ValueError("nothing to evaluate: the prompt has no tokens")
    check_fits(len(tokens), session.n_ctx)
    keep = common_prefix_length(session.tokens, tokens)
    # the last token is always evaluated again: its logits are what the caller wants
    keep = min(keep, len(tokens) - 1)
    if keep < session.n_past:
        session.truncate(keep)
    return session.eval(tokens[keep:])


def check_fits(n_tokens: int, n_ctx: int) -> None:
    if n_tokens > n_ctx:
        raise ContextOverflowError(
            f"the prompt is {n_tokens} tokens but the context holds {n_ctx}; shorten it, load the model "
            f"with a larger n_ctx, or (for chat) pass overflow='drop_oldest'",
            requested=n_tokens,
            capacity=n_ctx,
        )


# --- chat prompts under a context policy -----------------------------------------------------


def chat_prompt(
    chat_format: ChatFormat,
    encode: Callable[..., list[int]],
    messages: Sequence[Message],
    n_ctx: int,
    max_tokens: int,
    overflow: OverflowPolicy = "error",
) -> tuple[list[int], list[Message]]:
    """The prompt ids for messages and the messages they hold, after the overflow policy.

    "error": a prompt longer than the context raises ContextOverflowError.
    "drop_oldest": whole turns (a user message and the replies after it) are
    dropped, oldest first, keeping a leading system prompt, until the prompt
    leaves room for max_tokens; the last turn is never dropped, and a prompt
    that still does not fit raises.
    """
    if overflow not in ("error", "drop_oldest"):
        raise ValueError(f"overflow must be 'error' or 'drop_oldest', got {overflow!r}")
    kept = list(messages)
    ids = chat_format.tokens(kept, encode)
    if overflow == "drop_oldest":
        head = 1 if kept and kept[0].get("role") == "system" else 0
        while len(ids) + max_tokens > n_ctx:
            # the first user message after the head that still has another user message after it
            starts = [i for i in range(head, len(kept)) if kept[i].get("role") == "user"]
            if len(starts) < 2:
                break
            kept = kept[:head] + kept[starts[1]:]
            ids = chat_format.tokens(kept, encode)
    check_fits(len(ids), n_ctx)
    return ids, kept


# --- the token loop ------------------------------------------------------------------------


class Generation(Iterator[str]):
    """One streamed completion: iterate for text pieces.

    When iteration ends, `stop_reason` says why, `tokens` holds the generated
    ids (an end-of-generation token excluded) and `text` the emitted text.
    cancel() (or setting the `cancel` event given) from any thread stops it
    before the next token. Holds its session until exhausted or closed.
    """

    def __init__(
        self,
        session: Session,
        prompt: Sequence[int],
        *,
        params: SamplingParams,
        max_tokens: int = 256,
        stop: Sequence[str] | str | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        self.session = session
        self.prompt = list(prompt)
        self.params = params
        self.max_tokens = max_tokens
        self.stop = [stop] if isinstance(stop, str) else list(stop or [])
        self.cancel_event = cancel or threading.Event()
        self.stop_reason: StopReason | None = None
        self.tokens: list[int] = []
        self.text = ""
        self.messages: list[Message] | None = None  # for chat: the messages the prompt holds
        tokenizer = session.model.tokenizer
        self._eog = end_of_generation_ids(tokenizer)
        self._assembler = TextAssembler(tokenizer, self.stop)
        self._done_callbacks: list[Callable[[], None]] = []
        self._it = self._run()

    def cancel(self) -> None:
        self.cancel_event.set()

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Call fn once when the generation ends, is closed, or is dropped."""
        self._done_callbacks.append(fn)

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> str:
        return next(self._it)

    def close(self) -> None:
        """Stop early from the consuming thread; the session is free afterwards."""
        self._it.close()
        self._finish()  # a generator closed before its first step never runs its finally

    def __del__(self) -> None:
        # an abandoned generation must still free its session
        try:
            self.close()
        except Exception:
            pass

    def _finish(self) -> None:
        if self.stop_reason is None:
            self.stop_reason = StopReason.CANCELLED  # closed or failed before the end
        callbacks, self._done_callbacks = self._done_callbacks, []
        for fn in callbacks:
            fn()

    def _run(self) -> Iterator[str]:
        try:
            yield from self._loop()
        finally:
            self._finish()

    def _emit(self, piece: str) -> Iterator[str]:
        if piece:
            self.text += piece
            yield piece

    def _loop(self) -> Iterator[str]:
        session, assembler = self.session, self._assembler
        sampler = Sampler(self.params)
        if self.cancel_event.is_set():
            self.stop_reason = StopReason.CANCELLED
            return
        logits = feed(session, self.prompt)
        history = list(self.prompt)
        while True:
            if len(self.tokens) >= self.max_tokens:
                self.stop_reason = StopReason.MAX_TOKENS
                break
            if self.cancel_event.is_set():
                self.stop_reason = StopReason.CANCELLED
                break
            token = sampler.sample(logits, history)
            if token in self._eog:
                self.stop_reason = StopReason.EOS
                break
            self.tokens.append(token)
            history.append(token)
            yield from self._emit(assembler.push(token))
            if assembler.stopped:
                self.stop_reason = StopReason.STOP
                return
            if len(self.tokens) >= self.max_tokens:
                continue  # no need to evaluate a token nothing will follow
            if session.n_past >= session.n_ctx:
                self.stop_reason = StopReason.CONTEXT_FULL
                break
            logits = session.eval([token])
        yield from self._emit(assembler.finish())
