"""Models and backends for the benchmark suite.

Which models run is chosen by environment variables, so CI's smoke run stays small:
- LLAMA2_BENCH_MODELS: comma-separated families, default "tiny,smollm2":
  tiny     random 4-layer models (F32, Q8_0, Q4_0, Q4_1), written in seconds;
  smollm2  SmolLM2-135M: its Q4_1 file and F32/Q8_0/Q4_0 versions made from it;
  7b       random models of LLaMA-2 7B's shape, Q4_0 (3.8 GB) and Q8_0 (7.2 GB). Its F32 file
           (27 GB) is left out: it does not fit in the RAM of the machines we measure on.
- LLAMA2_BENCH_DIR: where generated and derived models are kept between runs
  (default: the llama2 cache folder, ~/.cache/llama2/bench).
- LLAMA2_BENCH_ROUNDS (default 3), LLAMA2_BENCH_THREADS (default: physical cores).
Every registered, usable backend runs every model it can hold in memory, and
llama.cpp runs as a peer when llama-cpp-python is installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama2.convert.gguf_writer import GGMLType, LlamaHParams
from llama2.convert.synthetic import write_random_llama

from llama2.bench import BENCH_CTX, load_runner, read_bandwidth, skip_reason, usable_backends
from llama2.default_model import cache_dir
from llama2.llamacpp import PEER_NAME
from llama2.model_file import ModelFile
from llama2.system import physical_cores

FAMILIES = {
    "tiny": ["F32", "Q8_0", "Q4_0", "Q4_1"],
    "smollm2": ["Q4_1", "F32", "Q8_0", "Q4_0"],
    "7b": ["Q4_0", "Q8_0"],
}
TINY = LlamaHParams(n_vocab=1024, n_embd=256, n_layer=4, n_head=8, n_head_kv=4, n_ff=704)
LLAMA2_7B = LlamaHParams(n_vocab=32000, n_embd=4096, n_layer=32, n_head=32, n_head_kv=32, n_ff=11008)


def families() -> list[str]:
    chosen = [f.strip() for f in os.environ.get("LLAMA2_BENCH_MODELS", "tiny,smollm2").split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        raise pytest.UsageError(f"LLAMA2_BENCH_MODELS: unknown families {unknown}; known: {list(FAMILIES)}")
    return chosen


ROUNDS = int(os.environ.get("LLAMA2_BENCH_ROUNDS", "3"))
THREADS = int(os.environ.get("LLAMA2_BENCH_THREADS", "0")) or physical_cores()
MODELS = [f"{fam}-{t}" for fam in families() for t in FAMILIES[fam]]
BACKENDS = [*usable_backends(), PEER_NAME]
CASES = [(m, b) for m in MODELS for b in BACKENDS]


def bench_dir() -> Path:
    d = Path(os.environ.get("LLAMA2_BENCH_DIR") or cache_dir() / "bench")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _derive(src: Path, out: Path, qtype: str) -> Path:
    """SmolLM2 in another type, through the converter (plain rounding: the speed does not depend on it)."""
    if out.is_file():
        return out
    try:
        from llama2.convert.export import export, open_checkpoint
    except ImportError:
        pytest.skip("deriving SmolLM2 files needs the GGUF exporter (llama2.convert.export)")
    export(open_checkpoint(src), out, GGMLType[qtype], search=False, progress=False)
    return out


def model_path(key: str, smollm2: Path | None) -> Path:
    family, qtype = key.split("-", 1)
    if family == "tiny":
        out = bench_dir() / f"tiny-{qtype.lower()}.gguf"
        if not out.is_file():
            write_random_llama(out, TINY, qtype=GGMLType[qtype], seed=0)
        return out
    if family == "7b":
        # the same name and seed as the backends' own 7B benchmark scripts, so one copy serves both
        out = bench_dir() / f"7b-{qtype.lower()}.gguf"
        if not out.is_file():
            write_random_llama(out, LLAMA2_7B, qtype=GGMLType[qtype], seed=0)
        return out
    assert smollm2 is not None
    if qtype == "Q4_1":
        return smollm2
    return _derive(smollm2, bench_dir() / f"smollm2-135m-{qtype.lower()}.gguf", qtype)


@pytest.fixture(scope="session")
def bench_threads() -> int:
    return THREADS


@pytest.fixture(scope="session")
def bandwidth() -> float:
    """Read bandwidth in bytes/s with the benchmark's thread count, measured once per run."""
    return read_bandwidth(THREADS)


class Runner:
    """One (model file, backend) pair; the model is loaded on first use and freed with the fixture."""

    def __init__(self, path: Path, backend: str) -> None:
        self.path = path
        self.backend = backend
        self.threads = THREADS
        self.rounds = ROUNDS
        self._model = None
        self._session = None
        self._prompt: list[int] | None = None

    def unload(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._model is not None:
            self._model.close()
            self._model = None

    def load(self) -> tuple[object, float, int]:
        """A fresh load: (model, seconds, resident bytes added)."""
        self.unload()
        self._model, seconds, rss = load_runner(self.path, self.backend, THREADS)
        return self._model, seconds, rss

    @property
    def session(self):  # type: ignore[no-untyped-def]
        if self._model is None:
            self.load()
        if self._session is None:
            self._session = self._model.session()  # type: ignore[attr-defined]
        return self._session

    @property
    def prompt(self) -> list[int]:
        from llama2.bench import prompt_tokens

        if self._prompt is None:
            _ = self.session
            self._prompt = prompt_tokens(self._model, BENCH_CTX)
        return self._prompt


@pytest.fixture(scope="session", params=CASES, ids=[f"{m}-{b}" for m, b in CASES])
def runner(request: pytest.FixtureRequest) -> Iterator[Runner]:
    """Session-scoped and parametrized, so pytest runs all workloads of one pair before loading the next."""
    key, backend = request.param
    smollm2 = None
    if key.startswith("smollm2"):
        smollm2 = request.getfixturevalue("smollm2_path")
    path = model_path(key, smollm2)
    mf = ModelFile(path)
    try:
        why = skip_reason(mf, backend)
    finally:
        mf.close()
    if why:
        pytest.skip(f"{backend} on {path.name}: {why}")
    r = Runner(path, backend)
    yield r
    r.unload()
