"""`llama2 chat MODEL`: an interactive chat in the terminal.

The conversation lives in one session, so each turn evaluates only its new
tokens. Ctrl-C while the model answers stops the answer (what was shown stays
in the history); at the prompt it clears the line. Ctrl-D or /exit quits.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HELP = "commands: /reset (forget the conversation), /exit; Ctrl-C stops an answer, Ctrl-D quits"


def add_parsers(subparsers: Any) -> None:
    from .cli import add_model_arguments, add_sampling_arguments

    p = subparsers.add_parser("chat", help="chat with a model in the terminal")
    add_model_arguments(p)
    p.add_argument("-s", "--system", default=None, help="system prompt")
    add_sampling_arguments(p)
    p.add_argument("--overflow", choices=["drop_oldest", "error"], default="drop_oldest",
                   help="when the conversation outgrows the context: drop the oldest turns (default) or stop")
    p.set_defaults(func=cmd_chat)


@contextmanager
def _ctrl_c_sets(event: threading.Event) -> Iterator[None]:
    """While inside, Ctrl-C sets event (the generation stops between tokens) instead of raising."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _read_line(prompt: str) -> str | None:
    """A line from the user; None at end of input."""
    while True:
        try:
            return input(prompt)
        except EOFError:
            return None
        except KeyboardInterrupt:
            print("\n(Ctrl-D or /exit quits)", file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> int:
    from .cli import sampling_kwargs
    from .errors import Llama2Error
    from .model import load
    from .streaming import StopReason

    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:  # pragma: no cover - not on every platform
        pass

    model = load(args.model, backend=args.backend, threads=args.threads, n_ctx=args.n_ctx)
    fmt = "the file's chat template" if model.chat_template else "LLaMA-2's chat format (built in)"
    print(f"[{model.path.name}: {model.backend.name}, {model.threads} threads, context {model.n_ctx}, {fmt}]",
          file=sys.stderr)
    print(f"[{HELP}]", file=sys.stderr)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages: list[dict[str, str]] = list(system)
    sampling = sampling_kwargs(args)
    interactive = sys.stdin.isatty()
    with model, model.session() as session:
        while True:
            line = _read_line("> " if interactive else "")
            if line is None or line.strip() in ("/exit", "/quit"):
                break
            if not line.strip():
                continue
            if line.strip() == "/reset":
                messages = list(system)
                session.reset()
                print("[conversation reset]", file=sys.stderr)
                continue
            messages.append({"role": "user", "content": line})
            stop_now = threading.Event()
            t0 = time.perf_counter()
            first: float | None = None
            try:
                g = session.chat(messages, args.max_tokens, cancel=stop_now, overflow=args.overflow, **sampling)
            except Llama2Error as exc:  # too long for the context, or the template refused: say so, go on
                print(f"[error: {exc}]", file=sys.stderr)
                messages.pop()
                continue
            with _ctrl_c_sets(stop_now):
                for piece in g:
                    first = first or time.perf_counter()
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            end = time.perf_counter()
            sys.stdout.write("\n")
            sys.stdout.flush()
            if g.messages is not None and len(g.messages) < len(messages):
                print(f"[dropped {len(messages) - len(g.messages)} old messages to fit the context]",
                      file=sys.stderr)
                messages = list(g.messages)
            messages.append({"role": "assistant", "content": g.text})
            note = {StopReason.CANCELLED: "stopped", StopReason.MAX_TOKENS: "max tokens reached",
                    StopReason.CONTEXT_FULL: "context full", StopReason.STOP: "stop string"}.get(g.stop_reason)
            stats = f"{len(g.tokens)} tokens in {end - t0:.2f} s"
            if first is not None and len(g.tokens) > 1:
                rate = (len(g.tokens) - 1) / max(end - first, 1e-9)
                stats += f", first text after {first - t0:.2f} s, then {rate:.1f} tok/s"
            print(f"[{note + '; ' if note else ''}{stats}]", file=sys.stderr)
    return 0
