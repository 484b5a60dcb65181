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
Tokenization uses the project's tokenizer when the core package provides
it; otherwise a greedy longest-match over the vocabulary, which yields
ordinary-looking token sequences, all the statistics need.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .checkpoint import Checkpoint
from .gguf_writer import TokenizerData


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (space -> 'Ġ', newline -> 'Ċ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def greedy_tokenize(tok: TokenizerData, text: str, max_piece: int = 24) -> list[int]:
    """Longest vocabulary match at each position, in the vocabulary's own spelling of spaces and bytes."""
    if tok.model == "gpt2":
        table = _byte_to_unicode()
        spelled = "".join(table[b] for b in text.encode("utf-8"))
    else:
        spelled = "▁" + text.replace(" ", "▁")
    index = {piece: i for i, piece in enumerate(tok.tokens)}
    ids = [] if tok.bos_id is None or tok.add_bos is False else [tok.bos_id]
    pos = 0
    while pos < len(spelled):
        for length in range(min(max_piece, len(spelled) - pos), 0, -1):
            token = index.get(spelled[pos:pos + length])
            if token is not None:
                ids.append(token)
                pos += length
                break
        else:
            for b in spelled[pos].encode("utf-8"):  # sentencepiece byte fallback, when the vocabulary has it
                token = index.get(f"<0x{b:02X}>")
                if token is not None:
                    ids.append(token)
            pos += 1
    return ids


def tokenize_for_calibration(ckpt: Checkpoint, text: str) -> list[int]:
    try:
        import llama2

        load: Callable[..., object] | None = getattr(llama2, "load", None)
    except ImportError:
        load = None
    if load is not None and ckpt.path.is_file():
        return list(load(str(ckpt.path)).tokenize(text))  # type: ignore[attr-defined]
    return greedy_tokenize(ckpt.tokenizer, text)


def collect_importance(ckpt: Checkpoint, text: str, *, max_tokens: int = 1024, window: int = 256,
                       progress: bool = True) -> dict[str, np.ndarray]:
    """Mean squared input activation per column, for every matmul weight, keyed by GGUF tensor name."""
    from tqdm import tqdm

    from llama2.reference import ReferenceConfig, ReferenceLlama

    hp = ckpt.hparams
    tokens = tokenize_for_calibration(ckpt, text)[:max_tokens]
    if len(tokens) < 2:
        raise ValueError("the calibration text is too short (fewer than 2 tokens)")
    loading = tqdm(ckpt.tensors, desc="loading for calibration", disable=not progress)
    weights = {t.name: t.load() for t in loading}
    cfg = ReferenceConfig(n_vocab=hp.n_vocab, n_embd=hp.n_embd, n_layer=hp.n_layer, n_head=hp.n_head,
                          n_head_kv=hp.n_head_kv, n_ff=hp.n_ff, rms_eps=hp.rms_eps,
                          rope_freq_base=hp.rope_freq_base, n_rot=hp.rot_dims)
    model = ReferenceLlama(cfg, weights, dtype=torch.float32)
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
