"""One chat turn: render the conversation, reuse the user's cache, stream the answer, count.

Chat formats and samplers are the runtime's (llama2.chat_template,
llama2.sampling). INTERIM: the token loop with cache reuse and cancellation
is written here until the runtime's Session.chat (issue 5) is merged; it then
becomes a call to it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llama2 import Model, Session
from llama2.chat_template import ChatFormat
from llama2.errors import ContextOverflowError
from llama2.model import _split_utf8
from llama2.sampling import Sampler, SamplingParams

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}

ENDED_EOS = "end of answer"
ENDED_LENGTH = "max new tokens"
ENDED_STOPPED = "stopped"
ENDED_CONTEXT = "context full"


@dataclass
class TurnStats:
    backend: str
    model: str
    prompt_tokens: int = 0  # the whole rendered conversation
    new_prompt_tokens: int = 0  # the part not already in the user's cache
    tokens: int = 0  # generated
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    ended_at: float | None = None
    ended: str = ""

    @property
    def seconds_to_first_token(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed after the first token (which also pays for the prompt)."""
        end = self.ended_at or time.perf_counter()
        if self.first_token_at is None or self.tokens < 2 or end <= self.first_token_at:
            return None
        return (self.tokens - 1) / (end - self.first_token_at)

    def line(self) -> str:
        parts = [f"{self.tokens} tokens"]
        rate = self.tokens_per_second
        parts.append(f"{rate:.1f} tokens/s" if rate is not None else "– tokens/s")
        ttft = self.seconds_to_first_token
        parts.append(f"first token {ttft:.2f} s" if ttft is not None else "first token –")
        parts.append(f"prompt {self.prompt_tokens} tokens ({self.prompt_tokens - self.new_prompt_tokens} cached)")
        parts.append(f"{self.model} on {self.backend}")
        if self.ended:
            parts.append(self.ended)
        return " · ".join(parts)


def conversation(history: Sequence[Message], message: str, system_prompt: str = "") -> list[Message]:
    """The messages of a turn: the system prompt (if any), the history, the new user message."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    messages += [{"role": m["role"], "content": m["content"]} for m in history
                 if m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)]
    messages.append({"role": "user", "content": message})
    return messages


def prompt_tokens(model: Model, messages: Sequence[Message]) -> list[int]:
    """The conversation as the model's chat format renders it, left open for the assistant's answer."""
    tok = model.tokenizer
    vocab = tok.tokens  # type: ignore[attr-defined]
    fmt = ChatFormat(model.chat_template, bos_token=vocab[tok.bos_id] if tok.bos_id is not None else "",
                     eos_token=vocab[tok.eos_id] if tok.eos_id is not None else "", bos_id=tok.bos_id,
                     eos_id=tok.eos_id, add_bos=tok.add_bos)
    return fmt.tokens(messages, model.tokenizer.encode)


def chat_turn(model: Model, session: Session, messages: Sequence[Message], sampling: dict[str, Any],
              max_new_tokens: int, cancel: threading.Event, label: str = "") -> Iterator[tuple[str, TurnStats]]:
    """Stream (answer so far, stats) for the assistant's answer to messages; the last yield has stats.ended.

    The session keeps what it evaluated: tokens the new prompt shares with its
    cache (the history of a continuing chat) are not evaluated again. `cancel`
    is checked between tokens.
    """
    stats = TurnStats(backend=model.backend.name, model=label or model.path.stem)
    ids = prompt_tokens(model, messages)
    stats.prompt_tokens = len(ids)
    if len(ids) >= session.n_ctx:
        raise ContextOverflowError(
            f"the conversation is {len(ids)} tokens and the context holds {session.n_ctx}: "
            "clear the chat (or shorten the system prompt) to go on",
            requested=len(ids), capacity=session.n_ctx)
    common = _common_prefix(session.tokens, ids)
    if common == len(ids):  # the logits of the last prompt token are needed again
        common -= 1
    session.truncate(common)
    stats.new_prompt_tokens = len(ids) - common
    sampler = Sampler(SamplingParams(**sampling))
    tok = model.tokenizer
    answer = ""
    pending = b""
    yield answer, stats
    if cancel.is_set():
        stats.ended, stats.ended_at = ENDED_STOPPED, time.perf_counter()
        yield answer, stats
        return
    logits = session.eval(ids[common:])
    generated: list[int] = []
    while True:
        token = sampler.sample(logits, session.tokens)
        if token == tok.eos_id or tok.is_special(token):
            stats.ended = ENDED_EOS
            break
        generated.append(token)
        stats.tokens += 1
        if stats.first_token_at is None:
            stats.first_token_at = time.perf_counter()
        pending += tok.token_bytes(token)
        text, pending = _split_utf8(pending)
        if text:
            answer += text
            yield answer, stats
        if stats.tokens >= max_new_tokens:
            stats.ended = ENDED_LENGTH
            break
        if cancel.is_set():
            stats.ended = ENDED_STOPPED
            break
        if session.n_past >= session.n_ctx:
            stats.ended = ENDED_CONTEXT
            break
        logits = session.eval([token])
    if pending:
        answer += pending.decode("utf-8", errors="replace")
    stats.ended_at = time.perf_counter()
    yield answer, stats


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
