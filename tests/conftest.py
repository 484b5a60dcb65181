"""Shared fixtures: small random models and the real SmolLM2 model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from llama2.convert.gguf_writer import GGMLType, LlamaHParams
from llama2.convert.synthetic import write_random_llama

# Third-party backend packages installed on the machine stay out of the tests.
os.environ.setdefault("LLAMA2_LOAD_PLUGINS", "")

TINY_SHAPES = {
    "mha": LlamaHParams(n_vocab=320, n_embd=64, n_layer=2, n_head=4, n_head_kv=4, n_ff=160),
    "gqa": LlamaHParams(n_vocab=384, n_embd=96, n_layer=3, n_head=6, n_head_kv=2, n_ff=224,
                        rope_freq_base=100000.0),
    "mqa_rot": LlamaHParams(n_vocab=300, n_embd=128, n_layer=2, n_head=4, n_head_kv=1, n_ff=96, n_rot=16,
                            rms_eps=1e-6),
}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_dir: Path):
    """Factory: tiny_model(shape_name, qtype="F32", seed=0, tied=False) -> path of a random GGUF."""
    cache: dict[tuple, Path] = {}

    def make(shape: str = "gqa", qtype: str = "F32", seed: int = 0, tied: bool = False) -> Path:
        key = (shape, qtype, seed, tied)
        if key not in cache:
            path = model_dir / f"{shape}-{qtype}-{seed}{'-tied' if tied else ''}.gguf"
            write_random_llama(path, TINY_SHAPES[shape], qtype=GGMLType[qtype], seed=seed, tied_output=tied)
            cache[key] = path
        return cache[key]

    return make


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1), downloaded once into the cache; skips only when offline."""
    from llama2.default_model import default_model_path, fetch_default_model

    if not default_model_path().is_file() and os.environ.get("LLAMA2_OFFLINE"):
        pytest.skip("LLAMA2_OFFLINE is set and SmolLM2 is not cached")
    try:
        return fetch_default_model(quiet=True)
    except RuntimeError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"SmolLM2 could not be fetched (offline?): {exc}")
