"""One chat turn: render the conversation, reuse the user's cache, stream the answer, count.

The runtime (issue 5) owns chat templates, samplers and cache reuse; this
module calls it where it exists and, until the runtime branch is merged, does
the same with the core alone (marked INTERIM below), so the page works with
only llama2.load/Session.eval/truncate.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llama2 import Model, Session
from llama2.errors import ContextOverflowError, Llama2Error
from llama2.model import _split_utf8

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
    """The conversation rendered by the model's chat template, ready for the assistant's answer."""
    apply = getattr(model, "apply_chat_template", None)  # the runtime's (issue 5), when merged
    text = apply(list(messages), add_generation_prompt=True) if apply else _interim_render(model, messages)
    return model.tokenize(text, add_bos=False, parse_special=True)


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
    sampler = _make_sampler(sampling)
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
        token = sampler(logits, session.tokens)
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


def _make_sampler(sampling: dict[str, Any]) -> Any:
    """A function (logits, history) -> token id."""
    try:
        from llama2.sampling import Sampler, SamplingParams  # the runtime's (issue 5), when merged
    except ImportError:
        return _InterimSampler(**sampling)
    return Sampler(SamplingParams(**sampling)).sample


# --- INTERIM: until the runtime branch is merged ------------------------------------------------------


def _interim_render(model: Model, messages: Sequence[Message]) -> str:
    template = model.chat_template
    if template is None:
        raise Llama2Error(f"{model.path.name} has no chat template; the built-in LLaMA-2 chat format comes "
                          "with the runtime (issue 5)")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    tok = model.tokenizer
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    vocab = getattr(tok, "tokens", [])
    special = {name: vocab[i] if i is not None and i < len(vocab) else ""
               for name, i in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id))}
    return env.from_string(template).render(messages=list(messages), add_generation_prompt=True, **special)


class _InterimSampler:
    """llama.cpp's chain (repetition penalty, top-k, top-p, min-p, temperature) on one logits vector."""

    def __init__(self, temperature: float, top_k: int, top_p: float, min_p: float, repeat_penalty: float,
                 seed: int | None, repeat_last_n: int = 64) -> None:
        self.temperature, self.top_k, self.top_p, self.min_p = temperature, top_k, top_p, min_p
        self.repeat_penalty, self.repeat_last_n = repeat_penalty, repeat_last_n
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> int:
        x = np.array(logits, dtype=np.float32)
        if self.repeat_penalty != 1.0 and history:
            seen = np.unique(np.asarray(history[-self.repeat_last_n:], dtype=np.int64))
            v = x[seen]
            x[seen] = np.where(v > 0, v / self.repeat_penalty, v * self.repeat_penalty)
        if self.temperature <= 0:
            return int(np.argmax(x))
        # Candidates before sorting: only tokens the first truncation stage can keep (a full sort of a
        # 49k vocabulary per token would cost more than the forward pass of a small model).
        top = float(x.max())
        if 0 < self.top_k < x.size:
            ids = np.argpartition(-x, self.top_k - 1)[:self.top_k]
            mass = float(np.exp(x[ids] - top).sum())  # top-p's probabilities are over the top-k survivors
        elif self.top_p < 1.0:
            p_all = np.exp(x - top)
            mass = float(p_all.sum())
            # a token below (1 - top_p) / (n - 1) of the mass can never be in the nucleus (llama2.c's prefilter)
            ids = np.flatnonzero(p_all >= mass * (1.0 - self.top_p) / (x.size - 1))
        elif self.min_p > 0.0:
            ids, mass = np.flatnonzero(x >= top + math.log(self.min_p)), 0.0
        else:
            ids, mass = np.arange(x.size), 0.0
        ids = ids[np.lexsort((ids, -x[ids]))]  # logit descending, then id: a fixed draw order
        vals = x[ids].astype(np.float64)
        if self.top_p < 1.0:
            p = np.exp(vals - top) / mass
            # keep a token while the mass before it is at most top_p (Meta's sample_top_p)
            keep = max(1, int(np.searchsorted(np.cumsum(p) - p, self.top_p, side="right")))
            ids, vals = ids[:keep], vals[:keep]
        if self.min_p > 0.0:
            keep_mask = vals >= vals[0] + math.log(self.min_p)
            ids, vals = ids[keep_mask], vals[keep_mask]
        p = np.exp((vals - vals[0]) / self.temperature)
        cdf = np.cumsum(p)
        i = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(ids[min(i, len(ids) - 1)])
