"""`llama2 bench`: the benchmark suite's comparison on a user's own machine, as a table or a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .bench import WORKLOADS, describe_file, measure, read_bandwidth, usable_backends
from .llamacpp import PEER_NAME
from .perplexity import PYDOC_TEXT, read_text
from .report import Run


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "bench", help="compare backends' speed (and optionally quality) on model files",
        description="Measure load time, resident memory, prefill (64 and 512 tokens), time to first token "
                    "and decode speed of every usable backend on each MODEL, next to the limit set by "
                    "this machine's memory bandwidth (measured in the same run). llama.cpp joins as a "
                    "peer when llama-cpp-python is installed.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="GGUF model files")
    p.add_argument("--backends", default=None,
                   help=f"comma-separated backends (default: every usable one, plus {PEER_NAME} if installed)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per workload; the best is kept (default 3)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--no-speed", action="store_true", help="skip the speed measurements (quality only)")
    p.add_argument("--quality", metavar="TEXT", default=None,
                   help=f"also score each MODEL's perplexity on TEXT (a file, or {PYDOC_TEXT})")
    p.add_argument("--base", metavar="BASE", default=None,
                   help="with --quality: KL divergence and top-token agreement of each MODEL against BASE")
    p.add_argument("--peer-quality", action="store_true",
                   help=f"with --quality: also score every file with {PEER_NAME} (needs llama-cpp-python)")
    p.add_argument("--windows", type=int, default=8, help="with --quality: windows scored (default 8)")
    p.add_argument("--ctx", type=int, default=512, dest="n_ctx", help="with --quality: window length (default 512)")
    p.add_argument("--from-json", action="append", default=[], metavar="JSON",
                   help="add results saved earlier (by --json or pytest-benchmark's --benchmark-json)")
    p.add_argument("--json", type=Path, default=None, help="save the results as JSON")
    p.add_argument("--report", type=Path, default=None,
                   help="write a Markdown report with PNG plots beside it (e.g. report.md)")
    p.add_argument("--note", action="append", default=[], help="a line to print under the report's header")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)


def _backends(arg: str | None) -> list[str]:
    if arg:
        return [b.strip() for b in arg.split(",") if b.strip()]
    from .llamacpp import available

    return usable_backends() + ([PEER_NAME] if available()[0] else [])


def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .report import merge_runs, run_from_json, terminal_table, write_report
    from .system import physical_cores

    if not args.models and not args.from_json:
        raise ValueError("give MODEL files to measure, or --from-json to report saved results")
    threads = args.threads or physical_cores()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    runs = [run_from_json(p) for p in args.from_json]
    run = Run(threads=threads, notes=list(args.note))
    if args.models and not args.no_speed:
        backends = _backends(args.backends)
        print(f"measuring read bandwidth with {threads} threads ...", file=sys.stderr)
        run.bandwidth = read_bandwidth(threads)
        pairs = [(m, b) for m in args.models for b in backends]
        with tqdm(total=len(pairs) * (1 + len(workloads)), unit="step", disable=args.quiet,
                  desc="bench") as bar:
            for model, backend in pairs:
                def step(name: str, model: str = model, backend: str = backend) -> None:
                    bar.set_postfix_str(f"{Path(model).name} {backend} {name}")
                    bar.update()

                result = measure(model, backend, threads, rounds=args.rounds, workloads=workloads, on_step=step)
                result.bandwidth = run.bandwidth
                if result.skipped:
                    bar.update(1 + len(workloads))
                run.results.append(result)
    if args.quality:
        _quality(args, run, threads)
    merged = merge_runs([*runs, run]) if runs else run
    if merged.results:
        print(f"read bandwidth: {(merged.bandwidth or 0) / 1e9:.1f} GB/s ({merged.threads} threads); "
              "tokens/s, best of the rounds; limit = bandwidth / weight bytes per token")
        print(terminal_table(merged))
    if merged.quality:
        from .report import quality_table

        print(quality_table(merged))
    if args.json:
        from .convert.gguf_writer import atomic_path

        with atomic_path(args.json, force=True) as tmp:
            tmp.write_text(merged.to_json(), encoding="utf-8")
    if args.report:
        print(f"report: {write_report(merged, args.report)}")
    return 0


def _quality(args: argparse.Namespace, run: Run, threads: int) -> None:
    """Perplexity of each model; with --base, KL divergence and top-1 agreement against it too."""
    from .llamacpp import load_for_comparison, runner_name
    from .perplexity import CachedScorer, as_scorer, kl_divergence, perplexity
    from .report import QualityRow

    text = read_text(args.quality)
    name = f"pydoc_data (Python {run.python})" if args.quality == PYDOC_TEXT else Path(args.quality).name
    run.quality_text = f"{name}, the first {args.windows} windows of {args.n_ctx} tokens"
    progress = not args.quiet

    def load(path: str):  # type: ignore[no-untyped-def]
        return load_for_comparison(path, None, threads, args.n_ctx, all_logits_capable=True)

    def row(path: str, model: object) -> QualityRow:
        info = describe_file(path)
        return QualityRow(model=Path(path).name, runner=runner_name(model), main_type=info["main_type"],
                          bits_per_weight=info["bits_per_weight"], ppl=0.0, ppl_stderr=0.0, n_tokens=0)

    base = load(args.base) if args.base else None
    # the base scores each window once, however many models are compared with it
    base_scorer = CachedScorer(as_scorer(base)) if base is not None else None
    try:
        if base is not None and base_scorer is not None:
            run.base_model = Path(args.base).name
            tokens = base_scorer.tokenize(text)
            p = perplexity(base_scorer, tokens, args.n_ctx, max_windows=args.windows, progress=progress,
                           desc=run.base_model)
            r = row(args.base, base)
            r.ppl, r.ppl_stderr, r.n_tokens = p.ppl, p.ppl_stderr, p.count
            run.quality.append(r)
        for path in [m for m in args.models if m != args.base]:
            model = load(path)
            try:
                scorer = as_scorer(model)
                r = row(path, model)
                if base_scorer is None:
                    p = perplexity(scorer, scorer.tokenize(text), args.n_ctx, max_windows=args.windows,
                                   progress=progress, desc=r.model)
                    r.ppl, r.ppl_stderr, r.n_tokens = p.ppl, p.ppl_stderr, p.count
                else:
                    k = kl_divergence(base_scorer, scorer, tokens, args.n_ctx, max_windows=args.windows,
                                      progress=progress)
                    r.ppl, r.ppl_stderr, r.n_tokens = k.ppl_model, k.ppl_model_stderr, k.count
                    r.kld, r.kld_stderr, r.top1, r.top1_stderr = (k.kld_mean, k.kld_stderr, k.top1_agreement,
                                                                  k.top1_stderr)
                run.quality.append(r)
                if hasattr(scorer, "close"):
                    scorer.close()
            finally:
                model.close()
        if args.peer_quality:
            _peer_quality(args, run, threads, text, row)
    finally:
        if base_scorer is not None and hasattr(base_scorer.inner, "close"):
            base_scorer.inner.close()
        if base is not None:
            base.close()


def _peer_quality(args: argparse.Namespace, run: Run, threads: int, text: str, row) -> None:  # type: ignore[no-untyped-def]
    """llama.cpp's perplexity of every file, on the same tokens and windows, next to ours."""
    from .llamacpp import LlamaCppModel, available
    from .perplexity import as_scorer, perplexity

    ok, why = available()
    if not ok:
        run.notes.append(f"llama.cpp's figures are missing: {why}.")
        return
    for path in ([args.base] if args.base else []) + [m for m in args.models if m != args.base]:
        peer = LlamaCppModel(path, threads, args.n_ctx, all_logits_capable=True)
        try:
            scorer = as_scorer(peer)
            p = perplexity(scorer, scorer.tokenize(text), args.n_ctx, max_windows=args.windows,
                           progress=not args.quiet, desc=f"llama.cpp {Path(path).name}")
        finally:
            peer.close()
        r = row(path, peer)
        r.ppl, r.ppl_stderr, r.n_tokens = p.ppl, p.ppl_stderr, p.count
        run.quality.append(r)
