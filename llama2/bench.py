"""Speed measurements shared by `llama2 bench` and the pytest-benchmark suite (tests/benchmarks).

One workload = an untimed preparation and a timed run on a session, so the
CLI and the suite time exactly the same thing:
- decode: after a 16-token prompt, 64 tokens each evaluated alone, the next
  one picked greedily from the logits (through the Python API, so the
  per-token cost of Python, cffi and sampling is part of the number);
- prefill-64 / prefill-512: one prompt of that many tokens from an empty cache;
- ttft: time to first token: a 16-token prompt and the pick of the first token.
Decode is bounded by memory bandwidth: every weight is read once per token,
so `read_bandwidth` (measured in the same run) / `weight_bytes_per_token` is
the fastest any CPU backend could go, and results are also shown as a
fraction of it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .model_file import ModelFile
from .system import available_memory_bytes

PROMPT_TOKENS = 16
DECODE_TOKENS = 64
BENCH_CTX = 512  # holds the longest workload (prefill-512) and prompt + decode


# --- the machine ------------------------------------------------------------------


def _l3_bytes() -> int:
    try:
        return int(os.sysconf("SC_LEVEL3_CACHE_SIZE")) or 32 << 20
    except (ValueError, OSError, AttributeError):
        return 32 << 20


def read_bandwidth(threads: int = 1, nbytes: int | None = None, repeats: int = 5) -> float:
    """Bytes per second the CPU streams from memory, with `threads` threads reading disjoint slices.

    The buffer is at least 16 times the L3 cache (256 MB to 1 GB), so almost
    nothing is served from cache; the best of `repeats` passes is kept, as for
    the decode timings. numpy's int8 max is SIMD and releases the GIL, so the
    threads run in parallel and the loop is bound by the load ports, not by
    arithmetic: the number a decode loop can hope for.
    """
    if nbytes is None:
        nbytes = min(max(256 << 20, 16 * _l3_bytes()), 1 << 30)
    buf = np.ones(nbytes, dtype=np.int8)  # written once so every page is really backed
    parts = np.array_split(buf, max(1, threads))

    def one_pass() -> float:
        workers = [threading.Thread(target=np.max, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return time.perf_counter() - t0

    one_pass()  # warm-up: thread start-up and page faults out of the timing
    best = min(one_pass() for _ in range(repeats))
    del buf
    return nbytes / best


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the model file ---------------------------------------------------------------


def weight_bytes_per_token(model_file: ModelFile) -> int:
    """Bytes of the file's matrices one decoded token reads.

    Every matrix is read once; the token embedding is only looked up (one row)
    unless it doubles as the output matrix. KV-cache reads are left out: at
    the benchmarks' short contexts they are under 1% of the weights.
    """
    total = 0
    for t in model_file.tensors.values():
        if t.name == "token_embd.weight" and not model_file.tied_output:
            continue
        total += t.n_bytes
    return total


def bits_per_weight(model_file: ModelFile) -> float:
    """Bits per weight over every tensor of the file, llama.cpp's BPW."""
    n = sum(t.n_elements for t in model_file.tensors.values())
    return 8 * sum(t.n_bytes for t in model_file.tensors.values()) / n


def main_type(model_file: ModelFile) -> str:
    totals = model_file.weight_bytes_by_type()
    return max(totals, key=lambda k: totals[k]) if totals else "F32"


def load_memory_estimate(model_file: ModelFile, native_types: Sequence[int]) -> int:
    """Bytes a backend allocates at load: tensors of types it does not run natively, widened to F32.

    Pessimistic (a backend may convert to something smaller); it only decides
    whether to skip a combination that cannot fit, like cpu_f32 on a 7B model.
    """
    return sum(4 * t.n_elements for t in model_file.tensors.values() if t.type not in native_types)


def skip_reason(model_file: ModelFile, backend_name: str) -> str | None:
    """Why this backend cannot run this file on this machine (None when it can)."""
    from . import plugins

    if backend_name == "llama.cpp":
        from .llamacpp import available

        ok, why = available()
        return None if ok else why
    b = plugins.backends().get(backend_name)
    if b is None:
        return f"no backend {backend_name!r} is registered"
    ok, why = b.probe()
    if not ok:
        return why
    need = load_memory_estimate(model_file, b.native_types)
    avail = available_memory_bytes()
    if avail is not None and need > 0.8 * avail:
        return (f"{backend_name} would convert this file to about {need / 2**30:.0f} GiB, "
                f"{avail / 2**30:.0f} GiB are available")
    return None


def usable_backends() -> list[str]:
    from . import plugins

    return sorted(name for name, b in plugins.backends().items() if b.probe()[0])


# --- workloads --------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    n_tokens: int  # the tokens per run the rate is computed over
    prepare: Callable[[Any, Sequence[int]], Any]  # (session, prompt) -> state, untimed
    run: Callable[[Any, Sequence[int], Any], None]  # (session, prompt, state), timed


def _greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


def _prepare_decode(session: Any, prompt: Sequence[int]) -> Any:
    session.reset()
    return session.eval(list(prompt[:PROMPT_TOKENS]))


def _run_decode(session: Any, prompt: Sequence[int], logits: Any) -> None:
    for _ in range(DECODE_TOKENS):
        logits = session.eval([_greedy(logits)])


def _prepare_empty(session: Any, prompt: Sequence[int]) -> None:
    session.reset()


def _prefill(n: int) -> Callable[[Any, Sequence[int], Any], None]:
    def run(session: Any, prompt: Sequence[int], state: Any) -> None:
        session.eval(list(prompt[:n]))

    return run


def _run_ttft(session: Any, prompt: Sequence[int], state: Any) -> None:
    _greedy(session.eval(list(prompt[:PROMPT_TOKENS])))


WORKLOADS: dict[str, Workload] = {
    "decode": Workload("decode", DECODE_TOKENS, _prepare_decode, _run_decode),
    "prefill-64": Workload("prefill-64", 64, _prepare_empty, _prefill(64)),
    "prefill-512": Workload("prefill-512", 512, _prepare_empty, _prefill(512)),
    "ttft": Workload("ttft", PROMPT_TOKENS, _prepare_empty, _run_ttft),
}


def prompt_tokens(model: Any, n: int = BENCH_CTX) -> list[int]:
    """n tokens of real text (Python's documentation strings), the same for every run of one file."""
    from .perplexity import pydoc_text

    text = pydoc_text(8 * n)
    ids = list(model.tokenize(text))
    while len(ids) < n:  # a tokenizer with very long pieces: repeat the text
        ids += ids
    return ids[:n]


# --- results ----------------------------------------------------------------------


@dataclass
class Result:
    """One (model file, backend) pair measured on every workload."""

    model: str  # file name
    backend: str
    threads: int
    main_type: str
    bits_per_weight: float
    weight_bytes_per_token: int
    load_seconds: float | None = None
    resident_bytes: int | None = None  # what loading and one decode pass added to the process
    tok_s: dict[str, float] = field(default_factory=dict)  # workload -> tokens per second (best round)
    seconds: dict[str, list[float]] = field(default_factory=dict)  # workload -> every round's time
    skipped: str | None = None
    bandwidth: float | None = None  # bytes/s read bandwidth measured in the same run, for the limit

    def ttft_seconds(self) -> float | None:
        runs = self.seconds.get("ttft")
        return min(runs) if runs else None

    def limit_tok_s(self, bandwidth: float) -> float:
        return bandwidth / self.weight_bytes_per_token


def time_workload(session: Any, prompt: Sequence[int], workload: Workload, rounds: int) -> list[float]:
    """Seconds of each of `rounds` timed runs."""
    times = []
    for _ in range(rounds):
        state = workload.prepare(session, prompt)
        t0 = time.perf_counter()
        workload.run(session, prompt, state)
        times.append(time.perf_counter() - t0)
    return times


def rate(workload: Workload, times: Sequence[float]) -> float:
    """Tokens per second of the best round: the machine is shared, the best round is the least disturbed."""
    return workload.n_tokens / min(times)


def describe_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    mf = ModelFile(path)
    try:
        return {"main_type": main_type(mf), "bits_per_weight": bits_per_weight(mf),
                "weight_bytes_per_token": weight_bytes_per_token(mf)}
    finally:
        mf.close()


def load_runner(path: str | os.PathLike[str], backend: str, threads: int) -> tuple[Any, float, int]:
    """(model, load seconds, resident bytes it added after one decode step) for a backend or llama.cpp."""
    from .llamacpp import load_for_comparison

    before = resident_bytes()
    t0 = time.perf_counter()
    model = load_for_comparison(path, backend, threads, BENCH_CTX)
    seconds = time.perf_counter() - t0
    # weights mapped but never touched are not resident yet: one token touches all of them
    s = model.session()
    s.eval([int(model.tokenize("a", add_bos=False)[0])])
    s.close()
    return model, seconds, max(0, resident_bytes() - before)


def measure(path: str | os.PathLike[str], backend: str, threads: int, rounds: int = 3,
            workloads: Sequence[str] = tuple(WORKLOADS), on_step: Callable[[str], None] | None = None) -> Result:
    """Every workload of one (file, backend) pair; a pair that cannot run comes back with `skipped` set."""
    from pathlib import Path

    info = describe_file(path)
    result = Result(model=Path(path).name, backend=backend, threads=threads, **info)
    mf = ModelFile(path)
    try:
        result.skipped = skip_reason(mf, backend)
    finally:
        mf.close()
    if result.skipped:
        return result
    if on_step:
        on_step("load")
    model, result.load_seconds, result.resident_bytes = load_runner(path, backend, threads)
    try:
        prompt = prompt_tokens(model)
        session = model.session()
        try:
            for name in workloads:
                if on_step:
                    on_step(name)
                w = WORKLOADS[name]
                times = time_workload(session, prompt, w, rounds)
                result.seconds[name] = times
                result.tok_s[name] = rate(w, times)
        finally:
            session.close()
    finally:
        model.close()
    return result


def machine_description() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f", {int(f.readline().split()[1]) / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs{mem}, {platform.system()} {platform.release()}"

