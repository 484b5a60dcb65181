"""Fuzzing the C boundary: malformed model descriptions and calls, straight into each backend.

Python's validation (llama2.ModelFile) is bypassed: the harness builds the
cffi llama2_model_desc itself from the fuzzer's bytes (a small consistent
model, then corruptions: wrong byte sizes, NULL data or names, absurd or
overflowing dimensions, unknown types, n_dims out of range, missing,
duplicated or misaligned tensors, bad tensor tables) and calls model_load;
a model that loads gets contexts with odd sizes and evals with bad tokens,
positions and counts, truncates and thread changes. Every call must return
a status; the harness checks it against what the ABI header promises (a
description with a corrupted required tensor must be refused, a bad eval must
say INVALID or CONTEXT_FULL), and AddressSanitizer checks the memory.

Run it against the sanitizer build (LD_PRELOAD the sanitizer runtimes, so
Python's allocations get redzones too; tests/fuzz/run_short.sh does this):

    cmake -S . -B build/asan -DLLAMA2_SANITIZE=ON -DLLAMA2_CUDA=OFF && cmake --build build/asan -j2
    PYTHONMALLOC=malloc LD_PRELOAD="$(cc -print-file-name=libasan.so) $(cc -print-file-name=libubsan.so)" \\
    ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1 \\
      python tests/fuzz/fuzz_backend_load.py --lib-dir build/asan/backends --random 60

With gcc's sanitizer runtime preloaded, libFuzzer's coverage hooks resolve to
the runtime's stubs and atheris gets no coverage, so --random SECONDS feeds
the harness uniformly random inputs instead (the structure is in the
harness; a failing input is saved as backend-crash-<seed>-<n>.bin and replays
with --replay FILE). Without the preload the atheris mode
(`... fuzz_backend_load.py CORPUS -max_total_time=60`) is coverage-guided.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import atheris

from llama2.native import NativeBackend, ffi

OK, INVALID, UNSUPPORTED, NOMEM, CONTEXT_FULL = 0, 1, 2, 3, 4
BACKENDS = ["cpu_f32", "cpu_q8", "cpu_q4"]
TYPES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34)}  # type -> (block, bytes per block)
ABSURD = [0, -1, -(1 << 31), (1 << 31) - 1, 1 << 24, (1 << 24) + 1, 1 << 30, 3, 33, 31]
ABSURD_NE = [0, -1, 1, 31, 33, 1 << 31, (1 << 32) + 32, (1 << 40), (1 << 62), (1 << 63) - 1, -(1 << 63)]
_LIMIT_BYTES = 1 << 22  # the harness never allocates more than this for one tensor


@dataclass
class TensorSpec:
    name: bytes | None
    type: int
    ne: list[int]
    n_dims: int
    n_bytes: int  # what the description claims
    buffer: int  # bytes actually allocated (the ABI contract: data holds n_bytes)
    null_data: bool = False
    misalign: bool = False
    required: bool = True
    corrupt: list[str] = field(default_factory=list)
    true_bytes: int = -1  # the right n_bytes, kept while n_bytes is corrupted


def row_bytes(type_id: int, n: int) -> int | None:
    if type_id not in TYPES or n < 0 or n % TYPES[type_id][0]:
        return None
    return n // TYPES[type_id][0] * TYPES[type_id][1]


def base_model(fdp: atheris.FuzzedDataProvider) -> tuple[dict[str, Any], list[TensorSpec]]:
    n_head = fdp.PickValueInList([1, 2, 4])
    n_embd = 32 * fdp.PickValueInList([1, 2])
    n_head_kv = fdp.PickValueInList([d for d in (1, 2, 4) if n_head % d == 0])
    head_dim = n_embd // n_head
    hp = {"n_vocab": fdp.ConsumeIntInRange(1, 48), "n_embd": n_embd, "n_layer": fdp.ConsumeIntInRange(1, 2),
          "n_head": n_head, "n_head_kv": n_head_kv, "n_ff": 32 * fdp.ConsumeIntInRange(1, 2),
          "n_rot": 2 * fdp.ConsumeIntInRange(1, head_dim // 2), "n_ctx_train": 64, "rms_eps": 1e-5,
          "rope_freq_base": 10000.0}
    kv = n_head_kv * head_dim
    shapes = {b"token_embd.weight": (n_embd, hp["n_vocab"]), b"output_norm.weight": (n_embd,)}
    if fdp.ConsumeBool():
        shapes[b"output.weight"] = (n_embd, hp["n_vocab"])
    for i in range(hp["n_layer"]):
        p = f"blk.{i}.".encode()
        shapes.update({p + b"attn_norm.weight": (n_embd,), p + b"attn_q.weight": (n_embd, n_embd),
                       p + b"attn_k.weight": (n_embd, kv), p + b"attn_v.weight": (n_embd, kv),
                       p + b"attn_output.weight": (n_embd, n_embd), p + b"ffn_norm.weight": (n_embd,),
                       p + b"ffn_gate.weight": (n_embd, hp["n_ff"]), p + b"ffn_up.weight": (n_embd, hp["n_ff"]),
                       p + b"ffn_down.weight": (hp["n_ff"], n_embd)})
    specs = []
    for name, ne in shapes.items():
        # the vocabulary is any size, so the embedding rows may be any quantized type only by row length
        type_id = 0 if len(ne) == 1 and fdp.ConsumeProbability() < 0.8 else fdp.PickValueInList(list(TYPES))
        n = (row_bytes(type_id, ne[0]) or 0) * (ne[1] if len(ne) == 2 else 1)
        specs.append(TensorSpec(name, type_id, [*ne, *[1] * (4 - len(ne))], len(ne), n, n))
    return hp, specs


def corrupt(fdp: atheris.FuzzedDataProvider, hp: dict[str, Any], specs: list[TensorSpec]) -> list[str]:
    """Apply a few corruptions; return those that make the description invalid as a whole."""
    whole = []
    for _ in range(fdp.PickValueInList([0, 0, 1, 1, 2, 4])):
        kind = fdp.ConsumeIntInRange(0, 13)
        t = specs[fdp.ConsumeIntInRange(0, len(specs) - 1)] if specs else None
        if kind == 0:  # a hyper-parameter out of range or inconsistent with the shapes (none of ABSURD fits)
            key = fdp.PickValueInList(["n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "n_rot"])
            value = fdp.PickValueInList(ABSURD)
            if hp[key] != value:
                hp[key] = value
                whole.append(f"{key}={value}")
        elif kind == 1:
            key = fdp.PickValueInList(["rms_eps", "rope_freq_base"])
            hp[key] = fdp.PickValueInList([float("nan"), float("inf"), -1.0, 0.0])
            whole[:] = [w for w in whole if not w.startswith(f"{key}=")]  # the last value set is the one passed
            if not (key == "rms_eps" and hp[key] == 0.0):
                whole.append(f"{key}={hp[key]}")
        elif t is None:
            continue
        elif kind == 2:  # claims fewer or more bytes than its shape needs (the buffer holds what it claims)
            delta = fdp.PickValueInList([-1, 1, -18, 32, -t.n_bytes, t.n_bytes])
            if t.n_bytes + delta >= 0 and delta:
                size_before = t.n_bytes if "n_bytes" not in t.corrupt else None
                t.n_bytes = t.buffer = t.n_bytes + delta
                if size_before is not None:
                    t.corrupt.append("n_bytes")
                    t.true_bytes = size_before
                elif t.n_bytes == t.true_bytes:  # a second change undid the first
                    t.corrupt.remove("n_bytes")
        elif kind == 3:
            t.null_data = True
            t.corrupt.append("NULL data")
        elif kind == 4:  # an absurd or overflow-prone dimension, with a small buffer
            d, value = fdp.ConsumeIntInRange(0, 3), fdp.PickValueInList(ABSURD_NE)
            if t.ne[d] != value:
                t.ne[d] = value
                t.corrupt.append("ne")
        elif kind == 5:  # n_bytes that an overflowing product could match
            t.ne[0], t.ne[1] = fdp.PickValueInList([(1 << 62, 4), (1 << 32, 1 << 32), (1 << 61, 8)])
            t.n_bytes = fdp.PickValueInList([0, 64, 1 << 63, (1 << 64) - 1])
            t.buffer = min(t.n_bytes, 64)
            t.corrupt.append("overflow")
        elif kind == 6:
            t.type = fdp.PickValueInList([-1, 4, 5, 6, 7, 9, 12, 1 << 30])
            t.corrupt.append("type")
        elif kind == 7:
            t.n_dims = fdp.PickValueInList([0, -1, 5, 1 << 30])
            t.corrupt.append("n_dims")
        elif kind == 8:  # missing (names are judged once all corruptions are done: see name_problems)
            specs.remove(t)
        elif kind == 9:  # a second tensor of the same name
            specs.insert(fdp.ConsumeIntInRange(0, len(specs)), TensorSpec(t.name, t.type, list(t.ne), t.n_dims,
                                                                           t.n_bytes, t.buffer, required=False))
        elif kind == 10:
            t.name = None
        elif kind == 11:  # data at an odd address: every type needs 2- or 4-byte alignment
            t.misalign = True
            t.corrupt.append("misaligned")
        elif kind == 12:  # a tensor nobody asked for, with garbage in it: must be ignored
            specs.append(TensorSpec(b"junk.%d" % len(specs), fdp.PickValueInList([0, 2, 77]), [3, 5, 7, 1 << 40], 4,
                                    17, 17, required=False))
        else:  # the layer count says more layers than there are tensors for
            hp["n_layer"] += fdp.ConsumeIntInRange(1, 3)
            whole.append("n_layer beyond the tensors")
    return whole


def name_problems(specs: list[TensorSpec], required: set[bytes]) -> list[str]:
    """What makes the final table invalid by its names: NULL names, duplicates, missing tensors."""
    names = [t.name for t in specs]
    problems = ["NULL name"] * (None in names)
    problems += [f"duplicate {n!r}" for n in {n for n in names if n is not None and names.count(n) > 1}]
    return problems + [f"missing {n!r}" for n in required - set(names)]


class Harness:
    def __init__(self, lib_dir: Path | None) -> None:
        self.f = ffi()
        self.backends = []
        for name in BACKENDS:
            path = (lib_dir / f"libllama2_{name}.so") if lib_dir else None
            if path is None or not path.is_file():
                from llama2.native import find_library

                path = find_library("llama2.backends", f"llama2_{name}") or find_library(
                    "llama2.backends.cpu_f32", f"llama2_{name}")
            if path is not None:
                b = NativeBackend(path, expected_name=name)
                if b.probe()[0]:
                    self.backends.append(b)
        self.stats: Counter[str] = Counter()
        if not self.backends:
            raise SystemExit("no backend library found (build with cmake, pass --lib-dir)")
        print("INFO: backends " + ", ".join(f"{b.name} ({b.lib_path})" for b in self.backends), file=sys.stderr)

    def run(self, data: bytes, sabotage: bool = False) -> None:
        """One input; sabotage gives the embedding one byte less than it claims (a broken caller)."""
        f = self.f
        fdp = atheris.FuzzedDataProvider(data)
        backend = self.backends[fdp.ConsumeIntInRange(0, len(self.backends) - 1)]
        api = backend._api
        hp, specs = base_model(fdp)
        required = {t.name for t in specs if t.name != b"output.weight"}  # without it the output is tied
        whole = corrupt(fdp, hp, specs)
        whole += name_problems(specs, required)
        if sabotage:
            specs[0].buffer -= 1
        keep: list[Any] = []
        # weights come from a generator seeded by the input: taking them from the input itself would use
        # up its bytes before the decisions that follow
        weights = random.Random(fdp.ConsumeInt(4))
        table = f.new("llama2_tensor[]", max(1, len(specs)))
        for i, t in enumerate(specs):
            if t.name is not None:
                name = f.new("char[]", t.name)
                keep.append(name)
                table[i].name = name
            table[i].type = t.type
            table[i].n_dims = t.n_dims
            for d in range(4):
                table[i].ne[d] = t.ne[d]
            if not t.null_data:
                size = min(t.buffer, _LIMIT_BYTES) + (1 if t.misalign else 0)
                buf = f.new("uint8_t[]", max(size, 1))
                if size:  # random bytes: NaN, Inf and denormal weights and scales included
                    f.memmove(buf, weights.randbytes(size), size)
                keep.append(buf)
                table[i].data = f.cast("uint8_t *", buf) + (1 if t.misalign else 0)
            table[i].n_bytes = t.n_bytes % (1 << 64)
        desc = f.new("llama2_model_desc *")
        for key, value in hp.items():
            if isinstance(value, int):  # a C caller can only pass int32: wrap as its conversion would
                value = (value + (1 << 31)) % (1 << 32) - (1 << 31)
            setattr(desc, key, value)
        # a count larger than the table would make the caller break the contract: only smaller ones
        table_mode = fdp.ConsumeIntInRange(0, 31)
        desc.n_tensors = {29: -1, 30: 0, 31: -(1 << 31)}.get(table_mode, len(specs))
        desc.tensors = f.NULL if table_mode == 28 else table
        if table_mode in (29, 30, 31) or (table_mode == 28 and specs):
            whole.append(f"tensor table mode {table_mode}")
        out = f.new("llama2_model **")
        err = f.new("char[]", 256)
        null_arg = fdp.ConsumeIntInRange(0, 63)
        status = api.model_load(f.NULL if null_arg == 62 else desc, f.NULL if null_arg == 63 else out, err,
                                fdp.PickValueInList([256, 1, 0]))
        if null_arg in (62, 63):
            if status != INVALID:
                raise AssertionError(f"{backend.name} model_load with a NULL argument returned {status}")
            return
        bad_required = [c for t in specs if t.required for c in t.corrupt]
        if status == OK and (whole or bad_required):
            raise AssertionError(f"{backend.name} accepted a bad description: {whole + bad_required}")
        if status not in (OK, INVALID, UNSUPPORTED, NOMEM):
            raise AssertionError(f"{backend.name} model_load returned status {status}")
        self.stats[f"model_load status {status}"] += 1
        if status != OK:
            return
        model = out[0]
        try:
            self.exercise_context(fdp, api, model, hp)
        finally:
            api.model_free(model)

    def exercise_context(self, fdp: atheris.FuzzedDataProvider, api: Any, model: Any, hp: dict[str, Any]) -> None:
        f = self.f
        # the largest valid context allocates gigabytes (slow under the sanitizer): rarely
        huge = fdp.ConsumeProbability() > 0.97
        n_ctx = fdp.PickValueInList([1 << 24, (1 << 24) + 1, (1 << 31) - 1] if huge else [1, 2, 7, 16, 64, 0, -1])
        threads = fdp.PickValueInList([1, 2, 0, -3, 1024, 1025])
        out = f.new("llama2_context **")
        err = f.new("char[]", 256)
        status = api.context_new(model, n_ctx, threads, out, err, 256)
        bad = not (1 <= n_ctx <= 1 << 24 and 1 <= threads <= 1024)
        if status == OK and bad:
            raise AssertionError(f"context_new accepted n_ctx={n_ctx}, threads={threads}")
        if status not in (OK, INVALID, NOMEM):
            raise AssertionError(f"context_new returned status {status}")
        self.stats[f"context_new status {status}"] += 1
        if status != OK:
            return
        ctx = out[0]
        n_past, n_vocab = 0, hp["n_vocab"]
        try:
            for _ in range(fdp.ConsumeIntInRange(1, 6)):
                op = fdp.ConsumeIntInRange(0, 5)
                if op <= 3:
                    n = fdp.PickValueInList([1, 1, 2, 3, 17, 0, -1, n_ctx, n_ctx + 1, (1 << 31) - 1])
                    pos = fdp.PickValueInList([n_past, n_past, 0, n_past + 1, -1, max(0, n_past - 1)])
                    all_logits = fdp.ConsumeBool()
                    fits = n >= 1 and 0 <= pos <= n_past and n <= n_ctx - pos
                    if n > 4096 and fits:
                        continue  # would need a token buffer this harness does not allocate
                    count = max(0, min(n, 4096))
                    ids = [fdp.PickValueInList([0, 1, n_vocab - 1, n_vocab, -1, 1 << 30]) if fdp.ConsumeProbability()
                           > 0.9 else fdp.ConsumeIntInRange(0, n_vocab - 1) for _ in range(count)]
                    tokens = f.new("int32_t[]", max(1, count))
                    for i, v in enumerate(ids):
                        tokens[i] = v
                    rows = count if all_logits else 1
                    logits = f.new("float[]", max(1, rows * n_vocab))
                    null_tokens = fdp.ConsumeProbability() > 0.98
                    status = api.eval(ctx, f.NULL if null_tokens else tokens, n, pos, 1 if all_logits else 0,
                                      logits, err, 256)
                    valid = fits and not null_tokens and all(0 <= v < n_vocab for v in ids)
                    if valid and status != OK:
                        raise AssertionError(f"eval refused a valid call (n={n}, pos={pos}): status {status}, "
                                             f"{f.string(err).decode(errors='replace')}")
                    if not valid and status not in (INVALID, CONTEXT_FULL):
                        raise AssertionError(f"eval returned status {status} for n={n} pos={pos} n_past={n_past} "
                                             f"ids={ids[:8]} tokens NULL={null_tokens}")
                    self.stats[f"eval status {status}"] += 1
                    if status == OK:
                        n_past = pos + n
                elif op == 4:
                    n_pos = fdp.PickValueInList([0, 1, n_past, n_past + 5, -1])
                    status = api.truncate(ctx, n_pos)
                    if (status == OK) != (n_pos >= 0):
                        raise AssertionError(f"truncate({n_pos}) returned {status}")
                    if status == OK:
                        n_past = min(n_past, n_pos)
                else:
                    n_threads = fdp.PickValueInList([1, 2, 3, 0, -1, 1025])
                    status = api.set_threads(ctx, n_threads)
                    if (status == OK) != (1 <= n_threads <= 1024) and status != NOMEM:
                        raise AssertionError(f"set_threads({n_threads}) returned {status}")
        finally:
            api.context_free(ctx)


def random_inputs(harness: Harness, seconds: float, seed: int, out: Path) -> None:
    """Uniformly random inputs for a time; the input of a failure is kept for --replay."""
    rng = random.Random(seed)
    t_end, n = time.monotonic() + seconds, 0
    while time.monotonic() < t_end:
        data = rng.randbytes(rng.choice([64, 256, 1024, 4096]))
        path = out / f"backend-crash-{seed}-{n}.bin"
        path.write_bytes(data)  # written first: a sanitizer abort leaves it behind
        try:
            harness.run(data)
        except AssertionError:
            print(f"FAILED on {path}", file=sys.stderr)
            raise
        path.unlink()
        n += 1
    print(f"INFO: {n} random inputs in {seconds:.0f} s (seed {seed}), no failure; "
          + ", ".join(f"{k}: {v}" for k, v in sorted(harness.stats.items())), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--lib-dir", type=Path, default=None)
    parser.add_argument("--random", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--replay", type=Path, default=None)
    parser.add_argument("--self-check", action="store_true")
    args, rest = parser.parse_known_args()
    lib_dir = args.lib_dir or next((Path(d) for d in os.environ.get("LLAMA2_LIBRARY_PATH", "").split(":") if d),
                                   None)
    harness = Harness(lib_dir)
    if args.self_check:
        # an input of zeros is the plain valid model on the first backend; with the embedding one byte short
        # its first eval reads past that buffer, which the sanitizer must report (and abort)
        harness.run(bytes(64), sabotage=True)
        print("SELF-CHECK FAILED: a read past a buffer went unnoticed; is the sanitizer runtime preloaded?",
              file=sys.stderr)
        sys.exit(3)
    if args.replay is not None:
        harness.run(args.replay.read_bytes())
        print(f"INFO: {args.replay} passes", file=sys.stderr)
    elif args.random is not None:
        seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
        random_inputs(harness, args.random, seed, Path(tempfile.gettempdir()))
    else:
        atheris.Setup([sys.argv[0], *rest], harness.run)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
