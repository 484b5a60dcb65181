"""Activation statistics for importance-weighted quantization (`--calibration FILE`).

A matmul's output error from weight errors e_j is sum_j e_j * x_j, so over
inputs x its expected square is about sum_j e_j^2 * E[x_j^2] when the input
columns are not strongly correlated. E[x_j^2], the mean squared activation
of input column j, is therefore the weight each column's squared error gets
in the quantizer's scale search (quantize.py). This is the simple diagonal
form of AWQ's and llama.cpp's importance matrix.

The statistics come from running the float32 PyTorch reference
(llama2/reference.py) over the calibration text, so the whole model is held
in float32 memory: fine for small models; for 7B it needs about 28 GB.
"""

from __future__ import annotations

import numpy as np
import torch

from .checkpoint import Checkpoint
from .gguf_writer import TokenizerData


def tokenize_for_calibration(tok: TokenizerData, text: str) -> list[int]:
    """The text in the model's own tokens, through the project's tokenizer (llama2.tokenizer)."""
    from llama2.tokenizer import tokenizer_from_metadata

    extra = tok.extra.get("tokenizer.ggml.add_space_prefix", True)
    add_space_prefix = extra[1] if isinstance(extra, tuple) else extra
    meta = {"model": tok.model, "pre": tok.pre, "tokens": tok.tokens, "scores": tok.scores,
            "types": tok.token_types, "merges": tok.merges, "bos": tok.bos_id, "eos": tok.eos_id,
            "unk": tok.unk_id if tok.unk_id is not None else 0,
            "add_bos": tok.add_bos if tok.add_bos is not None else True, "add_space_prefix": add_space_prefix}
    tokenizer = tokenizer_from_metadata(meta)
    return list(tokenizer.encode(text, add_bos=bool(meta["add_bos"])))


def collect_importance(ckpt: Checkpoint, text: str, *, max_tokens: int = 1024, window: int = 256,
                       progress: bool = True) -> dict[str, np.ndarray]:
    """Mean squared input activation per column, for every matmul weight, keyed by GGUF tensor name."""
    from tqdm import tqdm

    from llama2.reference import ReferenceLlama

    hp = ckpt.hparams
    tokens = tokenize_for_calibration(ckpt.tokenizer, text)[:max_tokens]
    if len(tokens) < 2:
        raise ValueError("the calibration text is too short (fewer than 2 tokens)")
    loading = tqdm(ckpt.tensors, desc="loading for calibration", disable=not progress)
    weights = {t.name: t.load() for t in loading}
    model = ReferenceLlama(hp, weights, dtype=torch.float32)
    del weights
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1]).to(torch.float64)
        sums[name] = sums.get(name, 0) + (flat * flat).sum(0)  # type: ignore[operator]
        counts[name] = counts.get(name, 0) + flat.shape[0]

    model.observer = observe
    # short windows: attention cost stays small and every window starts from a fresh context like real use
    for start in tqdm(range(0, len(tokens), window), desc="calibrating", disable=not progress):
        model.reset()
        model.eval(tokens[start:start + window])
    importance = {name: (sums[name] / counts[name]).numpy().astype(np.float32) for name in sums}
    if "output.weight" in importance and all(t.name != "output.weight" for t in ckpt.tensors):
        importance["token_embd.weight"] = importance.pop("output.weight")  # tied: the embedding is the output
    return importance
