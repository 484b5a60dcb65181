"""`llama2 webui`: serve the browser chat."""

from __future__ import annotations

import argparse
import logging
import sys

from llama2.errors import Llama2Error


def parse_size(value: str) -> int:
    """Bytes from "4G", "512M", "1.5GiB" or a plain number of bytes."""
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    try:
        size = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (e.g. 4G, 512M)") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"the size must be positive: {value!r}")
    return int(size)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "webui", help="chat with models in the browser",
        description="Serve a browser chat. Without MODEL, SmolLM2-135M-Instruct is fetched on first use and "
                    "converted to Q8_0 and Q4_0 beside the original, so that every CPU backend has a file.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="GGUF model files to offer")
    p.add_argument("--models-dir", metavar="DIR", help="also offer every *.gguf file under DIR")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also publish a public gradio.live link")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="require this login")
    p.add_argument("--memory-budget", type=parse_size, metavar="SIZE",
                   help="memory for loaded models, e.g. 4G (default: half the RAM); least recently used go first")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="answers generated at once; more wait in a queue (default: from the CPU count)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads per answer (default: cores / concurrency)")
    p.add_argument("--ctx", type=int, default=2048, dest="n_ctx", metavar="N",
                   help="context length of each user's session in tokens (default 2048)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llama2.system import physical_cores

    from .app import ChatApp, default_concurrency, launch, parse_auth
    from .catalog import find_models
    from .default_models import default_models
    from .model_cache import ModelCache

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "urllib3", "gguf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    auth = parse_auth(args.auth)
    if args.concurrency is not None and args.concurrency < 1:
        raise ValueError("--concurrency must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be at least 1")
    paths = list(args.models) or ([] if args.models_dir else default_models(progress=True))
    models = find_models(paths, args.models_dir)
    if not models:
        raise Llama2Error("no usable model: give GGUF files or a --models-dir that holds some")
    concurrency = args.concurrency or default_concurrency()
    threads = args.threads or max(1, physical_cores() // concurrency)
    cache = ModelCache(args.memory_budget, threads=threads, n_ctx=args.n_ctx)
    app = ChatApp(models, cache, concurrency)
    if args.host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        print(f"warning: listening on {args.host} without --auth: anyone who can reach it can use it",
              file=sys.stderr)
    print(f"{len(models)} model(s): " + ", ".join(m.label for m in models), file=sys.stderr)
    print(f"{concurrency} answers at once, {threads} threads each; memory budget "
          f"{cache.budget_bytes / 2**30:.1f} GiB", file=sys.stderr)
    try:
        launch(app, host=args.host, port=args.port, share=args.share, auth=auth)
    finally:
        cache.close()
    return 0
