"""The `llama2` command line.

Each command group lives in its own module exposing add_parsers(subparsers);
this file only wires them together and turns our errors into one-line messages.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

from .errors import Llama2Error

# Modules that add sub-commands, in the order `llama2 --help` lists them.
COMMAND_MODULES: list[str] = [
    "llama2.chat_cli",
    "llama2.convert.commands",
    "llama2.quality_cli",
    "llama2.bench_cli",
    "llama2.webui.commands",
]


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256, help="tokens to generate (default 256)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens; 0 = all (default 40)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    p.add_argument("--min-p", type=float, default=0.05, help="drop tokens under min-p x the top one's probability; "
                   "0 = off (default 0.05)")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="penalize recent tokens; 1 = off (default 1.0)")
    p.add_argument("--repeat-last-n", type=int, default=64, help="tokens the penalties look back at; -1 = all "
                   "(default 64)")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="per occurrence (default 0)")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="once per token present (default 0)")
    p.add_argument("--seed", type=int, default=None, help="random seed for a reproducible run")


def sampling_kwargs(args: argparse.Namespace) -> dict[str, float | int | None]:
    """The SamplingParams fields given on the command line (see add_sampling_arguments)."""
    names = ["temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
             "frequency_penalty", "presence_penalty", "seed"]
    return {n: getattr(args, n) for n in names}


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="path to a GGUF model file")
    p.add_argument("--backend", default=None, help="backend name (see `llama2 backends`); default: best for the file")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--ctx", type=int, default=None, dest="n_ctx", help="context length in tokens")


def cmd_run(args: argparse.Namespace) -> int:
    from .model import load

    model = load(args.model, backend=args.backend, threads=args.threads, n_ctx=args.n_ctx)
    print(f"[{model.backend.name}, {model.threads} threads, loaded in {model.load_seconds:.2f} s]",
          file=sys.stderr)
    session = model.session()
    prompt_ids = model.tokenize(args.prompt)
    t0 = time.perf_counter()
    first: float | None = None
    n = 0
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    g = session.generate(prompt_ids, max_tokens=args.max_tokens, **sampling_kwargs(args))
    try:
        for piece in g:
            if first is None:
                first = time.perf_counter()
            n += 1
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("\n[stopped]", file=sys.stderr)
    end = time.perf_counter()
    generated = len(g.tokens)
    print(file=sys.stdout)
    if first is not None and generated > 1:
        rate = (generated - 1) / max(end - first, 1e-9)
        print(f"[prompt {len(prompt_ids)} tokens, first token after {first - t0:.3f} s; "
              f"{generated} tokens, {rate:.1f} tok/s]", file=sys.stderr)
    session.close()
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from .plugins import backends

    rows = []
    for name, b in sorted(backends().items()):
        ok, why = b.probe()
        rows.append((name, "usable" if ok else f"unusable: {why}", b.origin, b.description))
    if not rows:
        print("no backends registered")
        return 1
    width = max(len(r[0]) for r in rows)
    for name, status, origin, desc in rows:
        print(f"{name:<{width}}  {origin:<16}  {status}" + (f"  - {desc}" if desc and args.verbose else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="llama2", description="LLaMA-2 inference and quantization")
    parser.add_argument("--version", action="version", version=f"llama2 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="complete a prompt, streaming the text")
    add_model_arguments(p)
    p.add_argument("prompt", help="the text to continue")
    add_sampling_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("backends", help="list the registered backends and whether they run here")
    p.add_argument("-v", "--verbose", action="store_true", help="show descriptions")
    p.set_defaults(func=cmd_backends)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (Llama2Error, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"llama2: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
