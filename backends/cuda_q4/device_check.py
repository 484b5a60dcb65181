"""cuda_q4 on a real GPU: correctness against the PyTorch reference, SmolLM2, speed.

Run by device_check.sh (which builds the package and adds compute-sanitizer);
each subcommand appends its rows to OUT/results.json and `table` prints them.
Without a usable device every check stops where the GPU is first needed and
records SKIP with the reason; the exit status is then 2.

    python3 device_check.py logits   --out DIR
    python3 device_check.py smollm2  PATH --out DIR
    python3 device_check.py memcheck              (tiny model, meant to run under compute-sanitizer)
    python3 device_check.py bench    --out DIR [--shape 7b|tiny]
    python3 device_check.py table    DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the rest is imported where used: `record` and `table` run before llama2 is built
    from llama2.convert.gguf_writer import LlamaHParams

    import llama2

BACKEND = "cuda_q4"
SKIP_EXIT = 2

def logit_cases() -> list[tuple[str, LlamaHParams, str, bool, int]]:
    """Several shapes: MHA, GQA with tied embeddings and a large rope base, MQA with
    partial rotary dims, SmolLM2's own shape, a prompt longer than one prefill chunk
    (256), and the other file types (Q8_0, F16 as they are, F32 converted to F16)."""
    from llama2.convert.gguf_writer import LlamaHParams as H

    small = H(n_vocab=320, n_embd=64, n_layer=2, n_head=2, n_head_kv=2, n_ff=64)
    return [
        ("mha", H(n_vocab=320, n_embd=64, n_layer=2, n_head=4, n_head_kv=4, n_ff=160), "Q4_0", False, 12),
        ("gqa-tied", H(n_vocab=384, n_embd=96, n_layer=3, n_head=6, n_head_kv=2, n_ff=224,
                       rope_freq_base=100000.0), "Q4_1", True, 12),
        ("mqa-rot16", H(n_vocab=300, n_embd=128, n_layer=2, n_head=4, n_head_kv=1, n_ff=96, n_rot=16,
                        rms_eps=1e-6), "Q4_0", False, 12),
        ("smollm2-shape", H(n_vocab=512, n_embd=576, n_layer=2, n_head=9, n_head_kv=3, n_ff=1536,
                            rope_freq_base=100000.0), "Q4_1", False, 40),
        ("long-prompt", H(n_vocab=320, n_embd=256, n_layer=2, n_head=2, n_head_kv=1, n_ff=512), "Q4_0", False, 300),
        ("small", small, "Q8_0", False, 9),
        ("small", small, "F16", False, 9),
        ("small-tied", small, "F32", True, 9),
    ]


def bench_shape(shape: str) -> LlamaHParams:
    from llama2.convert.gguf_writer import LlamaHParams as H

    if shape == "7b":
        return H(n_vocab=32000, n_embd=4096, n_layer=32, n_head=32, n_head_kv=32, n_ff=11008)
    return H(n_vocab=320, n_embd=256, n_layer=2, n_head=4, n_head_kv=4, n_ff=512)


@dataclass
class Row:
    check: str
    result: str  # PASS, FAIL, SKIP or a measurement
    detail: str


class DeviceUnavailable(Exception):
    pass


def load_on_device(path: Path, n_ctx: int) -> llama2.Model:
    import llama2
    from llama2.errors import BackendUnavailableError

    try:
        return llama2.load(path, backend=BACKEND, n_ctx=n_ctx)
    except BackendUnavailableError as exc:
        raise DeviceUnavailable(str(exc)) from exc


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Largest per-token ||got - want|| / ||want||."""
    got, want = np.atleast_2d(got).astype(np.float64), np.atleast_2d(want)
    return float(np.max(np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)))


# ---- correctness ---------------------------------------------------------------------------------

@dataclass
class LogitsResult:
    path: str
    max_rel_err: float
    prefill: int
    decode: int
    graph_vs_direct: float  # largest |difference| between graph replay and plain launches


def check_logits(path: str | os.PathLike[str], n_prompt: int = 12, n_decode: int = 6,
                 seed: int = 0) -> LogitsResult:
    """Prefill (GEMM path) then greedy decode (graph path) against the float64 reference."""
    from llama2.reference import reference_from_gguf

    path = Path(path)
    ref = reference_from_gguf(str(path))
    rng = np.random.default_rng(seed)
    prompt = [int(t) for t in rng.integers(0, ref.cfg.n_vocab, n_prompt)]
    want = ref.eval(prompt)
    tokens = []
    wants = [want]
    for _ in range(n_decode):
        tokens.append(int(np.argmax(wants[-1][-1])))
        wants.append(ref.eval([tokens[-1]]))

    n_ctx = n_prompt + n_decode + 8
    with load_on_device(path, n_ctx) as model:
        got_rows = []
        with model.session() as s:
            got_rows.append(s.eval(prompt, all_logits=True))
            got_rows += [s.eval([t])[None, :] for t in tokens]
        err = max(rel_err(g, w) for g, w in zip(got_rows, wants, strict=True))
        # the same decode steps without the CUDA graph must give the same numbers
        os.environ["LLAMA2_CUDA_GRAPHS"] = "0"
        try:
            with model.session() as s:
                s.eval(prompt)
                direct = [s.eval([t]) for t in tokens]
        finally:
            del os.environ["LLAMA2_CUDA_GRAPHS"]
        graph_diff = max((float(np.max(np.abs(d - g[0]))) for d, g in zip(direct, got_rows[1:], strict=True)),
                         default=0.0)
    return LogitsResult(str(path), err, n_prompt, n_decode, graph_diff)


def run_logits(workdir: Path) -> list[Row]:
    from llama2.convert.gguf_writer import GGMLType
    from llama2.convert.synthetic import write_random_llama

    rows = []
    for name, hp, qtype, tied, n_prompt in logit_cases():
        path = workdir / f"{name}-{qtype}.gguf"
        write_random_llama(path, hp, qtype=GGMLType[qtype], seed=len(rows), tied_output=tied)
        r = check_logits(path, n_prompt=n_prompt)
        ok = r.max_rel_err < 1e-2 and r.graph_vs_direct <= 1e-5
        rows.append(Row(f"logits {name} {qtype}", "PASS" if ok else "FAIL",
                        f"max rel err {r.max_rel_err:.2e} over {r.prefill} prefill + {r.decode} decode; "
                        f"graph vs direct {r.graph_vs_direct:.1e}"))
    return rows


def greedy_smollm2(path: str | os.PathLike[str], n_tokens: int = 24) -> tuple[str, str]:
    """Greedy continuation of the issue's prompt on the GPU, and how it compares with cpu_f32."""
    import llama2

    prompt = "The capital of France is"
    with load_on_device(Path(path), 256) as model:
        text = "".join(model.generate(prompt, max_tokens=n_tokens, temperature=0))
    try:
        with llama2.load(path, backend="cpu_f32", n_ctx=256) as cpu:
            cpu_text = "".join(cpu.generate(prompt, max_tokens=n_tokens, temperature=0))
    except Exception as exc:  # cpu_f32 is a comparison only
        return text, f"cpu_f32 not compared: {exc}"
    same = 0
    while same < min(len(text), len(cpu_text)) and text[same] == cpu_text[same]:
        same += 1
    return text, f"first {same} of {len(cpu_text)} characters equal to cpu_f32's"


def run_smollm2(path: str | None) -> list[Row]:
    if not path or not Path(path).is_file():
        return [Row("smollm2 greedy", "SKIP", f"no SmolLM2 file given or found ({path})")]
    text, compare = greedy_smollm2(path)
    return [Row("smollm2 greedy", "PASS" if "Paris" in text else "FAIL", f"{text[:40]!r}; {compare}")]


def run_memcheck(workdir: Path) -> None:
    """Prefill and decode on a tiny model: the work compute-sanitizer watches."""
    from llama2.convert.gguf_writer import GGMLType
    from llama2.convert.synthetic import write_random_llama

    hp = logit_cases()[1][1]
    path = workdir / "memcheck.gguf"
    write_random_llama(path, hp, qtype=GGMLType.Q4_1, seed=3, tied_output=True)
    with load_on_device(path, 320) as model, model.session() as s:
        s.eval(list(range(3, 290)), all_logits=True)  # two prefill chunks
        for t in range(4):
            s.eval([t + 5])
        s.truncate(10)
        s.eval([7, 8])


# ---- speed -----------------------------------------------------------------------------------------

def write_random_q4_0(path: Path, hp: LlamaHParams, seed: int = 0) -> Path:
    """A random Q4_0 model written as raw blocks: a 7B file in seconds (decode speed ignores values).

    Scales are chosen so weights have standard deviation about 1/sqrt(row length),
    which keeps activations finite through the layers.
    """
    from llama2.convert.gguf_writer import GGMLType, TensorData, write_llama_gguf
    from llama2.convert.synthetic import synthetic_llama_tokenizer

    from llama2.model_file import _layer_tensors

    rng = np.random.default_rng(seed)
    shapes = {**_layer_tensors(hp), "output.weight": (hp.n_embd, hp.n_vocab)}

    def tensors() -> Iterator[Any]:
        for name, ne in shapes.items():
            shape = tuple(reversed(ne))
            if len(ne) == 1:
                yield TensorData(name, shape, GGMLType.F32, np.ones(ne[0], np.float32))
                continue
            n_blocks = ne[0] * ne[1] // 32
            raw = np.frombuffer(rng.bytes(n_blocks * 18), np.uint8).reshape(n_blocks, 18).copy()
            d = np.float16(1.0 / (4.6 * np.sqrt(ne[0])))
            raw[:, :2] = np.frombuffer(d.tobytes(), np.uint8)
            yield TensorData(name, shape, GGMLType.Q4_0, raw.reshape(ne[1], ne[0] // 32 * 18))

    return write_llama_gguf(path, hp, list(tensors()), synthetic_llama_tokenizer(hp.n_vocab),
                            name="random-q4_0", force=True)


def device_bandwidth() -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read and written."""
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailable("torch sees no CUDA device")
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 20
    start.record()
    for _ in range(reps):
        b.copy_(a)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1000.0
    del a, b
    torch.cuda.empty_cache()
    return 2.0 * n * reps / seconds


def run_bench(workdir: Path, shape: str) -> list[Row]:
    from llama2 import plugins

    hp = bench_shape(shape)
    ok, why = plugins.backends()[BACKEND].probe()
    if not ok and shape == "7b":  # not worth writing 3.8 GB to learn that
        raise DeviceUnavailable(f"backend {BACKEND} is not usable here: {why}")
    path = workdir / f"random-{shape}-q4_0.gguf"
    t0 = time.perf_counter()
    write_random_q4_0(path, hp)
    print(f"wrote {path.name} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s",
          flush=True)
    from llama2.model_file import ModelFile

    mf = ModelFile(path)
    # bytes a decode step must read: every matrix but the embedding (one row of it), and the norms
    per_token = sum(t.n_bytes for t in mf.tensors.values() if t.name != "token_embd.weight")
    mf.close()
    rng = np.random.default_rng(1)
    prompt = [int(t) for t in rng.integers(3, hp.n_vocab, 512)]
    with load_on_device(path, 1024) as model, model.session() as s:
        s.eval(prompt[:64])  # warm-up: kernels loaded, clocks up
        s.reset()
        t0 = time.perf_counter()
        logits = s.eval(prompt)
        prefill = time.perf_counter() - t0
        token = int(np.argmax(logits))
        for _ in range(4):  # the first one captures the decode graph
            token = int(np.argmax(s.eval([token])))
        n_decode = 128
        t0 = time.perf_counter()
        for _ in range(n_decode):
            token = int(np.argmax(s.eval([token])))
        decode = n_decode / (time.perf_counter() - t0)
    bw = device_bandwidth()
    limit = bw / per_token
    return [
        Row(f"decode {shape} Q4_0", f"{decode:.0f} tok/s",
            f"limit {limit:.0f} tok/s = {bw / 1e12:.2f} TB/s / {per_token / 2**20:.0f} MiB per token "
            f"({100 * decode / limit:.0f}%); positions 517-644"),
        Row(f"prefill {shape} 512", f"{prefill * 1000:.1f} ms", f"{512 / prefill:.0f} tok/s, 2 chunks of 256"),
    ]


# ---- results ---------------------------------------------------------------------------------------

def record(out: Path | None, rows: list[Row]) -> None:
    for r in rows:
        print(f"{r.check}: {r.result}  {r.detail}", flush=True)
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    f = out / "results.json"
    old = json.loads(f.read_text()) if f.is_file() else []
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(old + [asdict(r) for r in rows], indent=1))
    os.replace(tmp, f)


def print_table(out: Path) -> None:
    rows = [Row(**r) for r in json.loads((out / "results.json").read_text())] if (out / "results.json").is_file() \
        else []
    w0 = max([len(r.check) for r in rows] + [5])
    w1 = max([len(r.result) for r in rows] + [6])
    print(f"\n{'check':<{w0}}  {'result':<{w1}}  detail")
    print(f"{'-' * w0}  {'-' * w1}  {'-' * 40}")
    for r in rows:
        print(f"{r.check:<{w0}}  {r.result:<{w1}}  {r.detail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("logits", "smollm2", "memcheck", "bench"):
        sp = sub.add_parser(name)
        sp.add_argument("--out", type=Path, default=None)
        sp.add_argument("--workdir", type=Path, default=None)
        if name == "smollm2":
            sp.add_argument("path", nargs="?")
        if name == "bench":
            sp.add_argument("--shape", choices=["7b", "tiny"], default="7b")
    sp = sub.add_parser("record")
    sp.add_argument("out", type=Path)
    sp.add_argument("check")
    sp.add_argument("result")
    sp.add_argument("detail")
    sub.add_parser("table").add_argument("out", type=Path)
    args = p.parse_args(argv)

    if args.cmd == "table":
        print_table(args.out)
        return 0
    if args.cmd == "record":
        record(args.out, [Row(args.check, args.result, args.detail)])
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        try:
            if args.cmd == "logits":
                rows = run_logits(workdir)
            elif args.cmd == "smollm2":
                rows = run_smollm2(args.path)
            elif args.cmd == "bench":
                rows = run_bench(workdir, args.shape)
            else:
                run_memcheck(workdir)
                return 0
        except DeviceUnavailable as exc:
            record(args.out, [Row(args.cmd, "SKIP", str(exc))])
            return SKIP_EXIT
    record(args.out, rows)
    return 1 if any(r.result == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
