"""`llama2 perplexity` and `llama2 kl-divergence`: how much a model (or a quantization) loses."""

from __future__ import annotations

import argparse
import sys

from .llamacpp import PEER_NAME, load_for_comparison, runner_name
from .perplexity import PYDOC_TEXT, as_scorer, kl_divergence, perplexity, read_text

_TEXT_HELP = f"a UTF-8 text file, or {PYDOC_TEXT} for Python's documentation strings (pydoc_data)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", metavar="TEXT", help=_TEXT_HELP)
    p.add_argument("--ctx", type=int, default=512, dest="n_ctx", help="window length in tokens (default 512)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--windows", type=int, default=None, metavar="N",
                   help="score only the first N windows (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "perplexity", help="perplexity of a model on a text, scored like llama.cpp",
        description="Perplexity with llama.cpp's protocol: windows of --ctx tokens, each from an empty "
                    "cache, the second half of each scored; prints PPL +/- its standard error.")
    p.add_argument("model", metavar="MODEL", help="GGUF model file")
    _common(p)
    p.add_argument("--backend", default=None,
                   help=f"backend name (see `llama2 backends`), or {PEER_NAME} when llama-cpp-python is installed")
    p.set_defaults(func=cmd_perplexity)

    p = subparsers.add_parser(
        "kl-divergence", help="KL divergence and top-1 agreement of MODEL against BASE",
        description="Mean KL divergence of MODEL's next-token distribution from BASE's (e.g. a quantized "
                    "file against its F32 original) on the same windows as `llama2 perplexity`, and how "
                    "often both rank the same token first.")
    p.add_argument("base", metavar="BASE", help="the reference GGUF model file")
    p.add_argument("model", metavar="MODEL", help="the GGUF model file to judge")
    _common(p)
    p.add_argument("--backend", default=None, help="backend for MODEL (default: best for the file)")
    p.add_argument("--base-backend", default=None, help="backend for BASE (default: best for the file)")
    p.set_defaults(func=cmd_kl_divergence)


def cmd_perplexity(args: argparse.Namespace) -> int:
    text = read_text(args.text)
    model = load_for_comparison(args.model, args.backend, args.threads, args.n_ctx, all_logits_capable=True)
    try:
        scorer = as_scorer(model)
        tokens = scorer.tokenize(text)
        result = perplexity(scorer, tokens, args.n_ctx, max_windows=args.windows, progress=not args.quiet)
    finally:
        model.close()
    print(f"{args.model} [{runner_name(model)}]: {result}")
    return 0


def cmd_kl_divergence(args: argparse.Namespace) -> int:
    text = read_text(args.text)
    base = load_for_comparison(args.base, args.base_backend, args.threads, args.n_ctx, all_logits_capable=True)
    try:
        model = load_for_comparison(args.model, args.backend, args.threads, args.n_ctx, all_logits_capable=True)
        try:
            b, m = as_scorer(base), as_scorer(model)
            tokens = b.tokenize(text)
            if m.tokenize(text[:2000]) != b.tokenize(text[:2000]):
                print("llama2: warning: the two files tokenize the text differently", file=sys.stderr)
            result = kl_divergence(b, m, tokens, args.n_ctx, max_windows=args.windows, progress=not args.quiet)
        finally:
            model.close()
    finally:
        base.close()
    print(f"{args.model} against {args.base}: {result}")
    return 0
