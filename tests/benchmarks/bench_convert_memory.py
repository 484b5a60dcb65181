"""Peak resident memory of exporting a Meta checkpoint with real 7B tensor shapes.

    python tests/benchmarks/bench_convert_memory.py [--work DIR] [--types f16,q8_0,q4_0] [--layers 1,2]

Writes random bf16 Meta checkpoints of LLaMA-2-7B's shapes (dim 4096, 32
heads, hidden 11008, vocabulary 32000) with few layers, exports each in a
fresh subprocess, and reads that process's peak RSS (ru_maxrss). The export
holds one tensor at a time, so the peak should not grow with the number of
layers: comparing 1 and 2 layers shows it, and the 32-layer figure is the
same peak (the largest tensors, the embedding and output matrices, are
there at any depth). A bare interpreter with the same imports gives the
fixed overhead.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from llama2.convert.gguf_writer import LlamaHParams
from llama2.convert.synthetic import write_random_meta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/llama2-bench-convert"))
    ap.add_argument("--types", default="f16,q8_0")
    ap.add_argument("--layers", default="2,1")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    baseline_cmd = [sys.executable, "-c", "import torch, numpy, gguf, safetensors, sentencepiece, tqdm; "
                    "import llama2.convert.export, llama2.convert.meta"]
    rows = [("imports only", *measure(baseline_cmd))]
    for n_layer in (int(v) for v in args.layers.split(",")):
        hp = LlamaHParams(n_vocab=32000, n_embd=4096, n_layer=n_layer, n_head=32, n_head_kv=32, n_ff=11008)
        src = args.work / f"llama-2-7b-shapes-{n_layer}l"
        if not (src / "consolidated.00.pth").exists():
            write_random_meta(src, hp)
        src_bytes = sum(p.stat().st_size for p in src.iterdir())
        for qtype in args.types.split(","):
            out = args.work / f"out-{n_layer}l-{qtype}.gguf"
            cmd = [sys.executable, "-m", "llama2.convert", "convert", str(src), str(out), "--type", qtype,
                   "--force", "--quiet"]
            rss, seconds = measure(cmd)
            rows.append((f"{n_layer} layers -> {qtype} (source {src_bytes / 2**30:.2f} GiB, "
                         f"out {out.stat().st_size / 2**30:.2f} GiB)", rss, seconds))
            out.unlink()
    for label, rss, seconds in rows:
        print(f"{label}: peak RSS {rss:.0f} MiB, {seconds:.1f} s")


def measure(cmd: list[str]) -> tuple[float, float]:
    """Peak RSS of cmd alone. RUSAGE_CHILDREN keeps the maximum over all children ever waited for,
    so each command is run and measured by a fresh helper process."""
    helper = ("import resource, subprocess, sys, time; s = time.perf_counter(); "
              "subprocess.run(sys.argv[1:], check=True); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - s)")
    res = subprocess.run([sys.executable, "-c", helper, *cmd], check=True, capture_output=True, text=True)
    kib, seconds = res.stdout.split()
    return int(kib) / 1024, float(seconds)


if __name__ == "__main__":
    main()
