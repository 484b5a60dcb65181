"""Loaded models, shared by every user, unloaded least-recently-used first within a memory budget.

Each (file, backend) pair is loaded once; its weights serve every user. Each
user gets their own Session (KV cache) of it, kept across turns so a long chat
only evaluates what is new. A model that is generating is never unloaded: the
budget may be exceeded for as long as every loaded model is busy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import llama2
from llama2 import Model, Session

log = logging.getLogger(__name__)

Key = tuple[Path, str]  # (model file, backend name)


def default_budget_bytes() -> int:
    """Half the machine's memory: room for the models, the users' KV caches and everything else."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@dataclass
class _Entry:
    model: Model
    sessions: dict[str, Session] = field(default_factory=dict)  # user id -> their KV cache
    busy: int = 0  # turns running on it now
    active: set[str] = field(default_factory=set)  # the users of those turns
    last_used: float = field(default_factory=time.monotonic)

    @property
    def memory_bytes(self) -> int:
        return self.model.native.memory_bytes


class ModelCache:
    def __init__(self, budget_bytes: int | None = None, threads: int | None = None, n_ctx: int | None = None,
                 loader: Callable[..., Model] = llama2.load) -> None:
        """threads: per session (each user's turn); n_ctx: each session's context length."""
        self.budget_bytes = budget_bytes if budget_bytes is not None else default_budget_bytes()
        self.threads = threads
        self.n_ctx = n_ctx
        self._loader = loader
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # guards _entries and the entries' fields
        self._gone: set[str] = set()  # users who left while a turn of theirs was running
        self._load_lock = threading.Lock()  # one load at a time: two users asking for one model load it once

    # --- loading ------------------------------------------------------------
    def get(self, path: str | Path, backend: str) -> Model:
        """The loaded model, loading it (and unloading others beyond the budget) if needed."""
        key = (Path(path).resolve(), backend)
        with self._lock:
            entry = self._touch(key)
        if entry is not None:
            return entry.model
        with self._load_lock:
            with self._lock:
                entry = self._touch(key)
            if entry is not None:
                return entry.model
            model = self._loader(key[0], backend=backend, threads=self.threads, n_ctx=self.n_ctx)
            with self._lock:
                self._entries[key] = _Entry(model)
                self._evict(keep=key)
            log.info("loaded %s on %s in %.2f s (%.0f MiB)", key[0].name, backend, model.load_seconds,
                     model.native.memory_bytes / 2**20)
            return model

    def is_loaded(self, path: str | Path, backend: str) -> bool:
        with self._lock:
            return (Path(path).resolve(), backend) in self._entries

    def _touch(self, key: Key) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            entry.last_used = time.monotonic()
        return entry

    def _evict(self, keep: Key) -> None:
        total = sum(e.memory_bytes for e in self._entries.values())
        for key in list(self._entries):
            if total <= self.budget_bytes:
                break
            entry = self._entries[key]
            if key == keep or entry.busy:
                continue
            total -= entry.memory_bytes
            del self._entries[key]
            self._close(key, entry)
        if total > self.budget_bytes:
            log.warning("loaded models use %.0f MiB, over the budget of %.0f MiB (the others are busy)",
                        total / 2**20, self.budget_bytes / 2**20)

    @staticmethod
    def _close(key: Key, entry: _Entry) -> None:
        for s in entry.sessions.values():
            s.close()
        entry.sessions.clear()
        entry.model.close()
        log.info("unloaded %s on %s", key[0].name, key[1])

    # --- sessions -----------------------------------------------------------
    @contextmanager
    def session(self, path: str | Path, backend: str, user: str) -> Iterator[tuple[Model, Session]]:
        """The model and this user's session of it, held loaded for the duration of the block."""
        model = self.get(path, backend)
        key = (Path(path).resolve(), backend)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.model is not model:  # unloaded between get() and here: load again
                entry = None
            else:
                entry.busy += 1
                entry.active.add(user)
        if entry is None:
            with self.session(path, backend, user) as pair:
                yield pair
            return
        try:
            with self._lock:
                sess = entry.sessions.get(user)
            if sess is None:
                sess = model.session()
                with self._lock:
                    entry.sessions[user] = sess
            yield model, sess
        finally:
            with self._lock:
                entry.busy -= 1
                entry.active.discard(user)
                entry.last_used = time.monotonic()
                if user in self._gone:  # they left while this turn ran
                    self._gone.discard(user)
                    gone = entry.sessions.pop(user, None)
                    if gone is not None:
                        gone.close()

    def drop_user(self, user: str) -> None:
        """Free a user's KV caches (they left); a cache in use is freed when its turn ends."""
        with self._lock:
            for entry in self._entries.values():
                if user not in entry.sessions:
                    continue
                if user in entry.active:
                    self._gone.add(user)
                else:
                    entry.sessions.pop(user).close()

    # --- inspection ---------------------------------------------------------
    def loaded(self) -> list[tuple[Path, str, int, int]]:
        """(file, backend, bytes, sessions) of each loaded model, least recently used first."""
        with self._lock:
            return [(k[0], k[1], e.memory_bytes, len(e.sessions)) for k, e in self._entries.items()]

    def close(self) -> None:
        with self._lock:
            for key, entry in list(self._entries.items()):
                self._close(key, entry)
            self._entries.clear()
