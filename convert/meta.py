"""Meta's release layout: params.json, consolidated.NN.pth shards, tokenizer.model.

Larger models are split for model parallelism (13B in 2 shards, 70B in 8).
Meta's model.py says how: column-parallel layers (wq, wk, wv, w1, w3, output)
hold a slice of the output rows, row-parallel ones (wo, w2) a slice of the
input columns, the embedding a slice of its columns; norms are replicated.
Joining the slices along those dimensions gives back the full matrices.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .checkpoint import (
    Checkpoint,
    ConvertError,
    SourceTensor,
    check_float_dtype,
    check_vocab,
    mapped_ranges,
    read_json,
    release_pages,
    torch_to_float32,
)
from .gguf_writer import LlamaHParams, llama_tensor_shapes
from .tokenizer import LLAMA2_CHAT_TEMPLATE, find_tokenizer_model, looks_like_chat_model, tokenizer_from_spm

_LAYER_NAMES = {
    # GGUF suffix: (Meta suffix, dimension the shards split, None = replicated)
    "attn_norm.weight": ("attention_norm.weight", None),
    "attn_q.weight": ("attention.wq.weight", 0),
    "attn_k.weight": ("attention.wk.weight", 0),
    "attn_v.weight": ("attention.wv.weight", 0),
    "attn_output.weight": ("attention.wo.weight", 1),
    "ffn_norm.weight": ("ffn_norm.weight", None),
    "ffn_gate.weight": ("feed_forward.w1.weight", 0),  # Meta: w2(silu(w1(x)) * w3(x))
    "ffn_up.weight": ("feed_forward.w3.weight", 0),
    "ffn_down.weight": ("feed_forward.w2.weight", 1),
}
_GLOBAL_NAMES = {
    "token_embd.weight": ("tok_embeddings.weight", 1),
    "output_norm.weight": ("norm.weight", None),
    "output.weight": ("output.weight", 0),
}
_IGNORED = {"rope.freqs"}  # LLaMA-1 checkpoints store the RoPE frequencies; they are recomputed


def meta_name(gguf_name: str) -> tuple[str, int | None]:
    """Meta's name for a GGUF tensor name, and the dimension its shards are split along."""
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if m:
        suffix, dim = _LAYER_NAMES[m.group(2)]
        return f"layers.{m.group(1)}.{suffix}", dim
    return _GLOBAL_NAMES[gguf_name]


def ffn_hidden_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Exactly Meta's FeedForward: 2/3 of 4*dim, scaled, rounded up to a multiple."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def hparams_from_params(params: dict[str, object], n_vocab: int, where: Path) -> LlamaHParams:
    try:
        dim = int(params["dim"])  # type: ignore[arg-type]
        n_layer = int(params["n_layers"])  # type: ignore[arg-type]
        n_head = int(params["n_heads"])  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{where}: missing or bad key {e}") from e
    n_head_kv = int(params.get("n_kv_heads") or n_head)  # type: ignore[arg-type]
    multiplier = params.get("ffn_dim_multiplier")
    n_ff = ffn_hidden_size(dim, int(params.get("multiple_of", 256)),  # type: ignore[arg-type]
                           None if multiplier is None else float(multiplier))  # type: ignore[arg-type]
    norm_eps = float(params.get("norm_eps", 1e-5))  # type: ignore[arg-type]
    # params.json has no context length; LLaMA-2 (eps 1e-5) was trained on 4096, LLaMA-1 (1e-6) on 2048
    n_ctx = int(params.get("max_seq_len") or (4096 if norm_eps == 1e-5 else 2048))  # type: ignore[arg-type]
    if dim % n_head or n_head % n_head_kv:
        raise ConvertError(f"{where}: dim {dim}, n_heads {n_head}, n_kv_heads {n_head_kv} do not divide")
    return LlamaHParams(
        n_vocab=n_vocab, n_embd=dim, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff,
        n_ctx_train=n_ctx, rms_eps=norm_eps,
        rope_freq_base=float(params.get("rope_theta", 10000.0)),  # type: ignore[arg-type]
    )


def shard_paths(folder: Path) -> list[Path]:
    """consolidated.00.pth ... consolidated.NN.pth, checked to be complete."""
    found: dict[int, Path] = {}
    for p in folder.glob("consolidated.*.pth"):
        m = re.fullmatch(r"consolidated\.(\d+)\.pth", p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        raise ConvertError(f"{folder}: no consolidated.NN.pth shards")
    missing = [i for i in range(max(found) + 1) if i not in found]
    if missing:
        raise ConvertError(f"{folder}: shard consolidated.{missing[0]:02d}.pth is missing "
                           f"(found {', '.join(p.name for _, p in sorted(found.items()))})")
    return [found[i] for i in range(len(found))]


def open_meta(folder: str | Path) -> Checkpoint:
    import torch

    folder = Path(folder)
    params_path = folder / "params.json"
    params = read_json(params_path, "a Meta checkpoint folder")
    paths = shard_paths(folder)
    tokenizer = tokenizer_from_spm(find_tokenizer_model(folder))
    vocab = int(params.get("vocab_size", -1))
    if vocab == -1:
        vocab = len(tokenizer.tokens)
    check_vocab(vocab, tokenizer, f"{params_path}: vocab_size")
    hp = hparams_from_params(params, vocab, params_path)

    shards = []
    for p in paths:
        try:
            sd = torch.load(p, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:
            raise ConvertError(f"{p}: cannot read as a PyTorch checkpoint ({e})") from e
        shards.append((p, sd, mapped_ranges(p)))
    names = set(shards[0][1]) - _IGNORED
    for p, sd, _ in shards[1:]:
        diff = names.symmetric_difference(set(sd) - _IGNORED)
        if diff:
            raise ConvertError(f"{p}: tensor {sorted(diff)[0]} is in one shard and not in {paths[0].name}")

    tied = "output.weight" not in names  # Meta always has it; tolerate its absence as tying
    expected = llama_tensor_shapes(hp, tied_output=tied)
    wanted = {meta_name(n)[0] for n in expected}
    extra = names - wanted
    if extra:
        raise ConvertError(f"{paths[0]}: unexpected tensor {sorted(extra)[0]}")

    def loader(key: str, dim: int | None, shape: tuple[int, ...]):
        def load() -> np.ndarray:
            pieces = [sd[key] for _, sd, _ in shards]
            for (p, _, _), t in zip(shards, pieces, strict=True):
                check_float_dtype(t, f"{p}: {key}")
            if dim is None:
                for (p, _, _), t in zip(shards, pieces, strict=True):
                    if t.shape != pieces[0].shape:
                        raise ConvertError(f"{p}: {key} has shape {list(t.shape)}, "
                                           f"{paths[0].name} has {list(pieces[0].shape)}")
                joined = list(pieces[0].shape)
            else:
                joined = list(pieces[0].shape)
                if len(joined) > dim:
                    joined[dim] = sum(t.shape[dim] for t in pieces)
                for t in pieces:
                    other = [n for i, n in enumerate(t.shape) if i != dim]
                    if other != [n for i, n in enumerate(shape) if i != dim]:
                        joined = list(t.shape)
                        break
            if tuple(joined) != shape:
                raise ConvertError(
                    f"{paths[0]}: {key} has shape {joined} after joining {len(shards)} shard(s), "
                    f"expected {list(shape)} from params.json (shard count or params mismatch?)")
            if dim is None or len(pieces) == 1:
                full = torch_to_float32(pieces[0], f"{paths[0]}: {key}")
            else:
                # each slice converts straight into its place: no second full-size copy
                full = np.empty(shape, dtype=np.float32)
                view, pos = torch.from_numpy(full), 0
                for t in pieces:
                    view.narrow(dim, pos, t.shape[dim]).copy_(t)
                    pos += t.shape[dim]
            for (_, _, ranges), t in zip(shards, pieces, strict=True):
                release_pages(t, ranges)
            return full
        return load

    tensors = []
    for gguf_name, shape in expected.items():
        key, dim = meta_name(gguf_name)
        if key not in names:
            raise ConvertError(f"{paths[0]}: tensor {key} is missing")
        load = loader(key, dim, shape)
        tensors.append(SourceTensor(gguf_name, shape, load, f"{paths[0]}: {key}"))
    return Checkpoint(
        path=folder, hparams=hp, tokenizer=tokenizer, tensors=tensors,
        chat_template=LLAMA2_CHAT_TEMPLATE if looks_like_chat_model(folder) else None,
        name=folder.resolve().name,
    )
