"""Soak test of the web UI: many gradio_client users chatting at once on SmolLM2.

Not part of the default test run. The app runs in this process on a
loopback address; N users (threads, each with its own gradio_client session)
take T turns each through /respond with random sampler settings and seeds;
every fourth user (and never a reference user) stops some answers midway
through /stop. Checked:

- zero errors (exceptions or "**Error:**" stats lines);
- independence: the reference users' conversations are replayed afterwards by
  one client alone, turn by turn with the same settings and seeds, and every
  answer must be the same as during the soak;
- resident memory flat after warm-up (the first 25% of turns), and no growth of
  threads or open file descriptors between warm-up and the end (clients closed);
  the RSS curve is printed and written to --report.

    python tests/soak/soak_webui.py                      # 8 users x 20 turns
    python tests/soak/soak_webui.py --users 2 --turns 2  # the CI version
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MESSAGES = [
    "What is the capital of France?", "Tell me a joke.", "Write a haiku about the sea.",
    "Explain gravity to a child.", "List three fruits.", "What is 12 times 7?", "Say hello in Spanish.",
    "Why is the sky blue?", "Name a famous painter.", "Give me a short story opening.",
]
STATS = re.compile(r"(\d+) tokens · ")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Turn:
    message: str
    settings: dict[str, Any]
    answer: str = ""
    stats: str = ""
    stopped: bool = False


@dataclass
class User:
    index: int
    reference: bool
    stops: bool
    turns: list[Turn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def random_settings(rng: random.Random) -> dict[str, Any]:
    sampler = rng.choice(["greedy", "top-k", "top-p", "min-p"])
    return {"sampler": sampler, "temperature": round(rng.uniform(0.2, 1.5), 2), "top_k": rng.choice([1, 5, 40]),
            "top_p": rng.choice([0.5, 0.9, 1.0]), "min_p": rng.choice([0.0, 0.05, 0.2]),
            "max_new_tokens": rng.randint(6, 40), "repetition_penalty": rng.choice([1.0, 1.1]),
            "seed": rng.randrange(1, 1 << 30)}


def answer_of(chat: list[dict[str, Any]]) -> str:
    from llama2.webui.app import message_text

    return message_text(chat[-1]) if chat and chat[-1]["role"] == "assistant" else ""


def take_turn(client: Any, history: list[dict[str, Any]], turn: Turn, stop_midway: bool) -> list[dict[str, Any]]:
    """One /respond turn; returns the new history. Stops it once it streams when stop_midway."""
    args = {"message": turn.message, "history": history, "api_name": "/respond", **turn.settings}
    if not stop_midway:
        chat, turn.stats, _ = client.predict(**args)
    else:
        job = client.submit(**args)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not job.done():
            outs = job.outputs()
            if outs and STATS.search(outs[-1][1] or ""):
                client.predict(api_name="/stop")
                turn.stopped = True
                break
            time.sleep(0.05)
        chat, turn.stats, _ = job.result(timeout=300)
    turn.answer = answer_of(chat)
    return chat


def run_user(url: str, user: User, n_turns: int, seed: int, barrier: threading.Barrier) -> None:
    from gradio_client import Client

    rng = random.Random(seed)
    client = Client(url, verbose=False)
    history: list[dict[str, Any]] = []
    barrier.wait()
    try:
        for t in range(n_turns):
            turn = Turn(rng.choice(MESSAGES), random_settings(rng))
            user.turns.append(turn)
            try:
                stop = user.stops and rng.random() < 0.5
                history = take_turn(client, history, turn, stop)
                if turn.stats.startswith("**Error:**"):
                    user.errors.append(f"turn {t}: {turn.stats}")
            except Exception as exc:  # the soak counts every failure instead of stopping at the first
                user.errors.append(f"turn {t}: {type(exc).__name__}: {exc}")
            if len(history) > 8:  # keep the conversation inside the context: start over
                client.predict(api_name="/clear")
                history = []
                turn.settings = {**turn.settings, "_cleared_after": True}
    finally:
        client.close()


def replay_alone(url: str, user: User) -> list[str]:
    """The user's conversation again, by one client with the server otherwise idle; returns mismatches."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    history: list[dict[str, Any]] = []
    mismatches = []
    try:
        for t, turn in enumerate(user.turns):
            settings = {k: v for k, v in turn.settings.items() if not k.startswith("_")}
            again = Turn(turn.message, settings)
            history = take_turn(client, history, again, False)
            if again.answer != turn.answer:
                mismatches.append(f"user {user.index} turn {t}: {turn.answer!r} alone: {again.answer!r}")
            if turn.settings.get("_cleared_after"):
                client.predict(api_name="/clear")
                history = []
    finally:
        client.close()
    return mismatches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--model", type=Path, default=None, help="default: SmolLM2 (fetched into the cache)")
    parser.add_argument("--concurrency", type=int, default=None, help="the app's limit (default: its own)")
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, default=None, help="write the numbers and the RSS curve (JSON)")
    args = parser.parse_args()

    from llama2.webui.app import ChatApp, launch
    from llama2.webui.catalog import find_models
    from llama2.webui.model_cache import ModelCache

    from llama2.default_model import fetch_default_model

    model = args.model or fetch_default_model(quiet=True)
    cache = ModelCache(threads=1, n_ctx=args.n_ctx)  # one thread per turn: deterministic sums, fair sharing
    app = ChatApp(find_models([model]), cache, concurrency=args.concurrency)
    demo, url = launch(app, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    samples: list[tuple[float, int]] = []
    done = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not done.wait(0.5):
            samples.append((time.monotonic() - t0, rss_bytes()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    users = [User(i, reference=i % 4 == 1 or args.users == 1, stops=i % 4 == 0 and args.users > 1)
             for i in range(args.users)]
    barrier = threading.Barrier(args.users)
    threads = [threading.Thread(target=run_user, args=(url, u, args.turns, args.seed * 1000 + u.index, barrier))
               for u in users]
    for t in threads:
        t.start()
    # warm-up ends when a quarter of all turns are done: the model is loaded, every session exists
    total = args.users * args.turns
    warm: dict[str, Any] = {}
    while any(t.is_alive() for t in threads):
        if not warm and sum(len(u.turns) for u in users) >= max(1, total // 4) + args.users:
            warm = {"time": time.monotonic() - t0, "rss": rss_bytes(), "threads": threading.active_count(),
                    "fds": open_fds()}
        time.sleep(0.2)
    for t in threads:
        t.join()
    soak_seconds = time.monotonic() - t0
    time.sleep(2)  # let finished requests release their sockets and threads
    end = {"time": time.monotonic() - t0, "rss": rss_bytes(), "threads": threading.active_count(), "fds": open_fds()}
    warm = warm or end
    mismatches = [m for u in users if u.reference for m in replay_alone(url, u)]
    done.set()
    demo.close()
    cache.close()

    errors = [e for u in users for e in u.errors]
    stopped = sum(t.stopped for u in users for t in u.turns)
    after = [r for s, r in samples if s >= warm["time"]] or [end["rss"]]
    growth = max(after) - after[0]
    mb = 1 << 20
    report = {
        "users": args.users, "turns": args.turns, "seconds": round(soak_seconds, 1), "errors": errors,
        "stopped_turns": stopped, "reference_mismatches": mismatches,
        "rss_mb": {"warm": round(warm["rss"] / mb, 1), "end": round(end["rss"] / mb, 1),
                   "max_after_warm": round(max(after) / mb, 1), "growth_after_warm": round(growth / mb, 1)},
        "threads": {"warm": warm["threads"], "end": end["threads"]}, "fds": {"warm": warm["fds"], "end": end["fds"]},
        "rss_curve_mb": [(round(s, 1), round(r / mb, 1)) for s, r in samples[:: max(1, len(samples) // 60)]],
    }
    print(json.dumps({k: v for k, v in report.items() if k != "rss_curve_mb"}, indent=1))
    print("RSS (MB) over time (s): " + " ".join(f"{s:.0f}:{r:.0f}" for s, r in report["rss_curve_mb"]))
    if args.report:
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    # flat: growth after warm-up under 10% of the warm RSS (allocator noise, gradio's per-request caches)
    failures = [
        *(["errors"] if errors else []),
        *(["answers depend on other users"] if mismatches else []),
        *(["RSS grew after warm-up"] if growth > 0.10 * warm["rss"] else []),
        *(["threads grew"] if end["threads"] > warm["threads"] else []),
        *(["file descriptors grew"] if end["fds"] > warm["fds"] else []),
    ]
    if failures:
        print("SOAK FAILED: " + ", ".join(failures), file=sys.stderr)
        return 1
    print(f"soak passed: {args.users} users x {args.turns} turns in {soak_seconds:.0f} s, {stopped} stopped midway")
    return 0


if __name__ == "__main__":
    sys.exit(main())
