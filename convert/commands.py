"""`llama2 convert` and `llama2 quantize`: argument parsing and the end summary.

llama2/cli.py calls add_parsers(subparsers); each parser sets `func`, which
takes the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import ConvertError
from .gguf_writer import GGMLType, LlamaHParams
from .quantize import TYPE_NAMES, parse_type

SYNTHETIC_SHAPES = {
    # Meta's released shapes; tiny is for quick checks
    "7b": dict(n_embd=4096, n_layer=32, n_head=32, n_head_kv=32, n_ff=11008, n_ctx_train=4096),
    "13b": dict(n_embd=5120, n_layer=40, n_head=40, n_head_kv=40, n_ff=13824, n_ctx_train=4096),
    "tiny": dict(n_embd=256, n_layer=4, n_head=8, n_head_kv=4, n_ff=768, n_ctx_train=2048),
}


def synthetic_hparams(spec: str, n_vocab: int) -> LlamaHParams:
    """A preset (7b, 13b, tiny), optionally with overrides: "7b,n_layer=2" or "n_embd=512,n_layer=4,..."."""
    parts = [p for p in spec.split(",") if p]
    fields: dict[str, int] = dict(SYNTHETIC_SHAPES["tiny"])
    if parts and "=" not in parts[0]:
        if parts[0] not in SYNTHETIC_SHAPES:
            raise ConvertError(f"--synthetic: unknown shape {parts[0]!r} "
                               f"({', '.join(SYNTHETIC_SHAPES)} or k=v,...)")
        fields = dict(SYNTHETIC_SHAPES[parts.pop(0)])
    for part in parts:
        key, _, value = part.partition("=")
        if key not in LlamaHParams.__dataclass_fields__ or key == "n_vocab":
            raise ConvertError(f"--synthetic: unknown field {key!r}")
        try:
            fields[key] = int(value)
        except ValueError:
            raise ConvertError(f"--synthetic: {key} needs an integer, got {value!r}") from None
    return LlamaHParams(n_vocab=n_vocab, **fields)  # type: ignore[arg-type]


def _type_arg(value: str) -> GGMLType:
    try:
        return parse_type(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_quant_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-type", type=_type_arg, metavar="TYPE",
                   help="type of the token embedding and output matrix (default: q8_0 in 4-bit files, "
                        "else the file's type)")
    p.add_argument("--keep-output-f32", action="store_true",
                   help="keep the token embedding and output matrix in F32 (same as --output-type f32)")
    p.add_argument("--plain", action="store_true",
                   help="ggml's plain round-to-nearest instead of the error-minimising scale search")
    p.add_argument("--calibration", type=Path, metavar="FILE",
                   help="text whose activation statistics weight the quantization error per input column")
    p.add_argument("--calibration-tokens", type=int, default=1024, metavar="N",
                   help="use at most N tokens of the calibration text (default 1024)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parsers(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    types = "|".join(TYPE_NAMES)
    conv = subparsers.add_parser(
        "convert", help="export a Meta, Hugging Face or GGUF checkpoint to GGUF",
        description="Export SRC (a Meta folder, a Hugging Face folder or a GGUF file) to OUT.gguf. "
                    "With --synthetic, write a random-weight model of a real shape instead (no SRC).")
    conv.add_argument("src", nargs="?", metavar="SRC", help="Meta folder, Hugging Face folder or GGUF file")
    conv.add_argument("out", nargs="?", metavar="OUT.gguf", help="the file to write")
    conv.add_argument("--type", type=_type_arg, default=GGMLType.F16, metavar=types,
                      help="type of the weight matrices (default f16)")
    conv.add_argument("--synthetic", metavar="SHAPE",
                      help="random weights of shape 7b, 13b, tiny, or k=v overrides, e.g. 7b,n_layer=2")
    conv.add_argument("--tokenizer-from", type=Path, metavar="GGUF",
                      help="with --synthetic: copy the tokenizer and chat template of this GGUF file")
    conv.add_argument("--seed", type=int, default=0, help="with --synthetic: random seed")
    _add_quant_options(conv)
    conv.set_defaults(func=run_convert)

    quant = subparsers.add_parser("quantize", help="re-quantize a GGUF file",
                                  description="Write IN.gguf's weights as TYPE into OUT.gguf.")
    quant.add_argument("src", type=Path, metavar="IN.gguf")
    quant.add_argument("out", type=Path, metavar="OUT.gguf")
    quant.add_argument("type", type=_type_arg, metavar=types)
    _add_quant_options(quant)
    quant.set_defaults(func=run_quantize)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def run_convert(args: argparse.Namespace) -> int:
    try:
        if args.synthetic:
            if args.src is None or args.out is not None:
                return _fail("with --synthetic give only OUT.gguf")
            return _synthetic(args, Path(args.src))
        if args.out is None:
            return _fail("give SRC and OUT.gguf")
        return _export(args, Path(args.src), Path(args.out), args.type)
    except (ConvertError, FileExistsError) as e:
        return _fail(str(e))


def run_quantize(args: argparse.Namespace) -> int:
    try:
        if args.src.is_dir():
            return _fail(f"{args.src}: quantize takes a GGUF file; use `llama2 convert` for a folder")
        return _export(args, args.src, args.out, args.type)
    except (ConvertError, FileExistsError) as e:
        return _fail(str(e))


def _export(args: argparse.Namespace, src: Path, out: Path, file_type: GGMLType) -> int:
    from .export import export, open_checkpoint

    ckpt = open_checkpoint(src)
    importance = None
    if args.calibration is not None:
        from .calibrate import collect_importance

        try:
            text = args.calibration.read_text(encoding="utf-8")
        except OSError as e:
            raise ConvertError(f"{args.calibration}: cannot read calibration text ({e})") from e
        importance = collect_importance(ckpt, text, max_tokens=args.calibration_tokens,
                                        progress=not args.quiet)
    output_type = GGMLType.F32 if args.keep_output_f32 else args.output_type
    summary = export(ckpt, out, file_type, output_type=output_type, importance=importance,
                     search=not args.plain, force=args.force, progress=not args.quiet)
    print(summary, file=sys.stderr)
    return 0


def _synthetic(args: argparse.Namespace, out: Path) -> int:
    import time

    from .synthetic import synthetic_llama_tokenizer, write_random_llama

    template = None
    if args.tokenizer_from is not None:
        from .gguf_source import open_reader, tokenizer_from_gguf

        tokenizer, template = tokenizer_from_gguf(open_reader(args.tokenizer_from), args.tokenizer_from)
        n_vocab = len(tokenizer.tokens)
    else:
        n_vocab = 32000
        tokenizer = synthetic_llama_tokenizer(n_vocab)
    hp = synthetic_hparams(args.synthetic, n_vocab)
    if out.exists() and not args.force:
        raise ConvertError(f"{out} exists (use --force to replace it)")
    start = time.perf_counter()
    write_random_llama(out, hp, qtype=args.type, seed=args.seed, tokenizer=tokenizer, chat_template=template,
                       force=args.force, progress=not args.quiet, export_types=True)
    size = out.stat().st_size
    print(f"wrote {out}: random {args.synthetic} ({hp.n_layer} layers, n_embd {hp.n_embd}), "
          f"{size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m llama2.convert convert|quantize ...`, the same commands without the main CLI."""
    parser = argparse.ArgumentParser(prog="python -m llama2.convert")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))
