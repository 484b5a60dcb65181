"""One chat turn: render the conversation, reuse the user's cache, stream the answer, count.

The runtime (Session.chat) renders the chat, reuses the cache and samples;
this module adds what the page shows: timing and token counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llama2 import Model, Session
from llama2.generation import common_prefix_length
from llama2.streaming import StopReason

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}

ENDED = {
    StopReason.EOS: "end of answer",
    StopReason.MAX_TOKENS: "max new tokens",
    StopReason.STOP: "stop string",
    StopReason.CANCELLED: "stopped",
    StopReason.CONTEXT_FULL: "context full",
}


@dataclass
class TurnStats:
    backend: str
    model: str
    prompt_tokens: int = 0  # the whole rendered conversation
    new_prompt_tokens: int = 0  # the part not already in the user's cache
    dropped_messages: int = 0  # the oldest ones, left out to fit the context
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
        if self.dropped_messages:
            parts.append(f"{self.dropped_messages} oldest messages left out to fit the context")
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


def chat_turn(model: Model, session: Session, messages: Sequence[Message], sampling: dict[str, Any],
              max_new_tokens: int, cancel: threading.Event, label: str = "") -> Iterator[tuple[str, TurnStats]]:
    """Stream (answer so far, stats) for the assistant's answer to messages; the last yield has stats.ended.

    The session keeps what it evaluated, so the history of a continuing chat
    is not evaluated again. When the conversation outgrows the context, its
    oldest turns are left out (the system prompt stays); `cancel` is checked
    between tokens.
    """
    stats = TurnStats(backend=model.backend.name, model=label or model.path.stem)
    g = session.chat(messages, max_new_tokens, cancel=cancel, overflow="drop_oldest", **sampling)
    stats.prompt_tokens = len(g.prompt)
    stats.new_prompt_tokens = len(g.prompt) - min(common_prefix_length(session.tokens, g.prompt), len(g.prompt) - 1)
    stats.dropped_messages = len(messages) - len(g.messages or messages)
    answer = ""
    yield answer, stats
    try:
        for piece in g:
            if stats.first_token_at is None:
                stats.first_token_at = time.perf_counter()
            answer += piece
            stats.tokens = len(g.tokens)
            yield answer, stats
    finally:
        g.close()
    stats.tokens = len(g.tokens)
    stats.ended_at = time.perf_counter()
    stats.ended = ENDED.get(g.stop_reason, str(g.stop_reason))
    yield answer, stats
