"""Speed of every usable backend (and llama.cpp) on the same files: decode, prefill, first token, load.

Run: pytest tests/benchmarks [--benchmark-json=out.json | --benchmark-autosave]
     [--benchmark-compare]; LLAMA2_BENCH_MODELS=tiny,smollm2,7b adds the 7B models.
Smoke run (CI): pytest tests/benchmarks --benchmark-disable (one round of each).
Each result carries tokens/s in extra_info; decode also its fraction of the
bandwidth limit measured in the same run. `llama2 bench --from-json out.json
--report r.md` turns a saved run into tables and plots.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from llama2.bench import WORKLOADS, Workload, describe_file, rate, read_bandwidth


def _info(benchmark, runner) -> None:  # type: ignore[no-untyped-def]
    benchmark.extra_info.update(model=runner.path.name, backend=runner.backend, threads=runner.threads,
                                **describe_file(runner.path))


def _run(benchmark, runner, workload: Workload) -> float:  # type: ignore[no-untyped-def]
    """Time the workload with pytest-benchmark; returns tokens/s of the best round."""
    session, prompt = runner.session, runner.prompt
    times: list[float] = []

    def setup():  # type: ignore[no-untyped-def]
        return (workload.prepare(session, prompt),), {}

    def target(state) -> None:  # type: ignore[no-untyped-def]
        import time

        t0 = time.perf_counter()
        workload.run(session, prompt, state)
        times.append(time.perf_counter() - t0)

    benchmark.pedantic(target, setup=setup, rounds=runner.rounds, iterations=1)
    tok_s = rate(workload, times)
    _info(benchmark, runner)
    benchmark.extra_info.update(workload=workload.name, tokens=workload.n_tokens, tok_s=tok_s,
                                seconds=times)
    assert tok_s > 0
    return tok_s


def _c_kernel_bandwidth(threads: int, tmp_path: Path) -> float | None:
    """GB/s from read_bandwidth.c (OpenMP, eight independent sums), when a C compiler is here."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = tmp_path / "read_bandwidth"
    src = Path(__file__).with_name("read_bandwidth.c")
    if subprocess.run([cc, "-O2", "-fopenmp", str(src), "-o", str(exe)], capture_output=True).returncode != 0:
        return None
    out = subprocess.run([str(exe), "512", str(threads)], capture_output=True, text=True)
    return float(out.stdout.strip()) if out.returncode == 0 else None


@pytest.mark.benchmark(group="bandwidth")
def test_read_bandwidth(benchmark, bandwidth: float, bench_threads: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The limit decode is measured against; the fixture's value is the one the decode results use.

    The numpy measurement is the one `llama2 bench` can make on any install; the C
    kernel beside it is a cross-check that numpy is not what limits the figure.
    """
    benchmark.pedantic(read_bandwidth, args=(bench_threads, 256 << 20, 1), rounds=1, iterations=1)
    benchmark.extra_info.update(workload="bandwidth", bytes_per_s=bandwidth, GB_s=bandwidth / 1e9,
                                threads=bench_threads, c_kernel_GB_s=_c_kernel_bandwidth(bench_threads, tmp_path))
    assert bandwidth > 1e8


@pytest.mark.benchmark(group="decode")
def test_decode(benchmark, runner, bandwidth: float) -> None:  # type: ignore[no-untyped-def]
    tok_s = _run(benchmark, runner, WORKLOADS["decode"])
    per_token = benchmark.extra_info["weight_bytes_per_token"]
    limit = bandwidth / per_token
    benchmark.extra_info.update(bandwidth_GB_s=bandwidth / 1e9, limit_tok_s=limit,
                                fraction_of_limit=tok_s / limit)


@pytest.mark.benchmark(group="prefill-64")
def test_prefill_64(benchmark, runner) -> None:  # type: ignore[no-untyped-def]
    _run(benchmark, runner, WORKLOADS["prefill-64"])


@pytest.mark.benchmark(group="prefill-512")
def test_prefill_512(benchmark, runner) -> None:  # type: ignore[no-untyped-def]
    _run(benchmark, runner, WORKLOADS["prefill-512"])


@pytest.mark.benchmark(group="ttft")
def test_time_to_first_token(benchmark, runner) -> None:  # type: ignore[no-untyped-def]
    _run(benchmark, runner, WORKLOADS["ttft"])


@pytest.mark.benchmark(group="load")
def test_load(benchmark, runner) -> None:  # type: ignore[no-untyped-def]
    """Load time, and the resident memory that loading and one token add to the process."""
    measured: list[tuple[float, int]] = []

    def target() -> None:
        _, seconds, rss = runner.load()
        measured.append((seconds, rss))

    benchmark.pedantic(target, setup=runner.unload, rounds=1, iterations=1)
    _info(benchmark, runner)
    seconds, rss = measured[-1]
    benchmark.extra_info.update(workload="load", load_seconds=seconds, resident_bytes=rss,
                                resident_MiB=rss / 2**20)
    assert seconds > 0
