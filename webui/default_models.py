"""The default models: SmolLM2-135M-Instruct as downloaded (Q4_1) plus Q8_0 and Q4_0 copies beside it.

Each CPU backend runs one of the three natively (cpu_q4: Q4_0/Q4_1, cpu_q8:
Q8_0, cpu_f32: any), so a user can compare backends on files made for them.
The copies are made once, with progress in the terminal; later runs find
them in the cache folder and start at once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from llama2.default_model import fetch_default_model

QUANTIZED_COPIES = ("Q8_0", "Q4_0")


def quantized_copy_path(source: Path, type_name: str) -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf -> SmolLM2-135M-Instruct.Q8_0.gguf."""
    stem = source.name.removesuffix(".gguf")
    base = stem.rsplit(".", 1)[0] if "." in stem else stem
    return source.with_name(f"{base}.{type_name}.gguf")


def default_models(progress: bool = True) -> list[Path]:
    """The default model and its quantized copies, fetching and converting what is missing."""
    source = fetch_default_model(quiet=not progress)
    paths = [source]
    for type_name in QUANTIZED_COPIES:
        target = quantized_copy_path(source, type_name)
        if not target.is_file():
            if progress:
                print(f"Converting {source.name} to {type_name} (once; kept in {target.parent}) ...",
                      file=sys.stderr)
            quantize_file(source, target, type_name, progress)
        paths.append(target)
    return paths


def quantize_file(source: Path, target: Path, type_name: str, progress: bool) -> None:
    """Re-quantize a GGUF file with the converter (`llama2 quantize`); written atomically."""
    from llama2.convert.export import export, open_checkpoint
    from llama2.convert.quantize import parse_type

    summary = export(open_checkpoint(source), target, parse_type(type_name), progress=progress)
    if progress:
        print(summary, file=sys.stderr)
