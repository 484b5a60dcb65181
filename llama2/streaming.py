"""Token ids to streamed text: only whole UTF-8 characters, never any part of a stop string.

A token is bytes, not text: byte-fallback pieces (<0xE2>, <0x9C>, <0x93>) and
byte-level BPE tokens can end inside a character, and a stop string can
straddle several tokens. The assembler holds back what cannot be decided yet:
an unfinished character until its last byte arrives, and any tail of the text
that could still grow into a stop string until it either does (generation
stops, the match and everything after it are dropped) or cannot (the text goes
out).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from enum import Enum
from typing import Protocol


class StopReason(str, Enum):
    """Why a generation ended."""

    EOS = "eos"  # the model produced an end-of-generation token
    MAX_TOKENS = "max_tokens"  # max_tokens were generated
    STOP = "stop"  # a stop string appeared; it is not part of the text
    CANCELLED = "cancelled"  # cancelled from another thread (or Ctrl-C) between tokens
    CONTEXT_FULL = "context_full"  # the session's context has no room for another token

    def __str__(self) -> str:
        return self.value


class TokenBytes(Protocol):
    """What the assembler needs of a tokenizer (llama2.tokenizer's tokenizers have it)."""

    def token_bytes(self, token_id: int) -> bytes: ...


class TextAssembler:
    """Feed token ids with push(); it returns the text that is safe to show now.

    Generation stops at the first stop string to be complete; the text ends
    right before it. After a stop string matched, `stopped` is True, `stop_string` says which,
    and further pushes are refused. Call finish() when generation ends for
    another reason, to get the text still held back.
    """

    def __init__(self, tokenizer: TokenBytes, stop: Iterable[str] = ()) -> None:
        self._token_bytes = tokenizer.token_bytes
        self._stops = sorted({s for s in stop if s}, key=len)
        if any(not isinstance(s, str) for s in self._stops):
            raise TypeError("stop strings must be str")
        # errors="replace": a byte that can never start or continue a character becomes U+FFFD at once
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text that may be the start of a stop string
        self.stopped = False
        self.stop_string: str | None = None

    def push(self, token_id: int) -> str:
        if self.stopped:
            raise RuntimeError("the assembler stopped at a stop string; start a new one")
        text = self._decoder.decode(self._token_bytes(token_id))
        if not self._stops:
            return text
        self._held += text
        return self._release()

    def finish(self) -> str:
        """Everything still held (an unfinished character becomes U+FFFD)."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        if self._stops:
            # the final bytes may complete a stop string too
            self._held = text
            text = self._release(final=True)
        return text

    def _release(self, final: bool = False) -> str:
        held = self._held
        # the stop string that completes first ends the text, as it would have ended generation
        # had the tokens come one character at a time; of two ending together the longer wins
        match_at, match, match_end = -1, None, -1
        for s in self._stops:
            i = held.find(s)
            if i >= 0 and (match is None or (i + len(s), i) < (match_end, match_at)):
                match_at, match, match_end = i, s, i + len(s)
        if match is not None:
            self.stopped, self.stop_string = True, match
            self._held = ""
            return held[:match_at]
        if final:
            self._held = ""
            return held
        keep = self._open_prefix_start(held)
        self._held = held[keep:]
        return held[:keep]

    def _open_prefix_start(self, text: str) -> int:
        """Index of the first position from which text is a proper prefix of some stop string."""
        longest = self._stops[-1]
        for i in range(max(0, len(text) - len(longest) + 1), len(text)):
            tail = text[i:]
            if any(s.startswith(tail) for s in self._stops):
                return i
        return len(text)
