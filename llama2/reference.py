"""The LLaMA-2 forward pass in plain PyTorch: the oracle every backend is tested against.

Written to be read next to the paper and Meta's model.py, not to be fast:
RMSNorm, interleaved rotary embeddings (pairs (x[2i], x[2i+1]), Meta's
convention, which GGUF llama files keep), grouped-query attention, SwiGLU.
Weights use GGUF tensor names and PyTorch shapes ([out, in]).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from .convert.gguf_writer import LlamaHParams


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotary(x: torch.Tensor, positions: torch.Tensor, n_rot: int, base: float) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of each head by angle pos * base^(-2i/n_rot).

    x: [tokens, heads, head_dim]; dimensions past n_rot are left as they are.
    """
    freqs = base ** (-torch.arange(0, n_rot, 2, dtype=torch.float64) / n_rot)
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]  # [tokens, n_rot/2]
    cos = torch.cos(angles).to(x.dtype)[:, None, :]
    sin = torch.sin(angles).to(x.dtype)[:, None, :]
    rot = x[..., :n_rot]
    even, odd = rot[..., 0::2], rot[..., 1::2]
    out = torch.empty_like(rot)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return torch.cat([out, x[..., n_rot:]], dim=-1)


def round_like_q8_activations(x: torch.Tensor) -> torch.Tensor:
    """x as the 8-bit CPU backends (and llama.cpp) see a matmul input: rounded in blocks of 32.

    Each block of 32 values along the last axis gets the scale d = max|x| / 127
    (a float32, as in `l2_block_q8_act`) and becomes d * round(x / d), rounding
    halves away from zero like C's roundf. The rounding is the only error that
    cpu_q8 and cpu_q4 add to the dequantized weights, so a reference that makes
    it too checks those backends to float rounding instead of to the ~1-3% that
    8-bit activations cost.
    """
    if x.shape[-1] % 32:
        raise ValueError(f"the last axis ({x.shape[-1]}) is not a whole number of blocks of 32")
    blocks = x.reshape(-1, 32)
    d = (blocks.abs().amax(dim=1, keepdim=True).to(torch.float32) / 127).to(x.dtype)
    scaled = blocks * torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)
    return (q * d).reshape(x.shape)


class ReferenceLlama:
    """Evaluates tokens with a growing KV cache, like a backend's context does.

    With round_activations, every matmul input is first rounded as the 8-bit
    CPU backends quantize it (`round_like_q8_activations`).
    """

    def __init__(self, cfg: LlamaHParams, weights: Mapping[str, torch.Tensor | np.ndarray],
                 dtype: torch.dtype = torch.float64, round_activations: bool = False) -> None:
        self.cfg = cfg
        self.dtype = dtype
        self.round_activations = round_activations
        self.w = {k: torch.as_tensor(np.asarray(v)).to(dtype) for k, v in weights.items()}
        if "output.weight" not in self.w:  # tied embeddings
            self.w["output.weight"] = self.w["token_embd.weight"]
        # called with (weight name, input rows) before every matmul; calibration collects statistics here
        self.observer: Callable[[str, torch.Tensor], None] | None = None
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.n_past = 0
        self.reset()

    def reset(self) -> None:
        cfg = self.cfg
        shape = (0, cfg.n_head_kv, cfg.head_dim)
        self.k_cache = [torch.empty(shape, dtype=self.dtype) for _ in range(cfg.n_layer)]
        self.v_cache = [torch.empty(shape, dtype=self.dtype) for _ in range(cfg.n_layer)]
        self.n_past = 0

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if self.observer is not None:
            self.observer(name, x)
        if self.round_activations:
            x = round_like_q8_activations(x)
        return x @ self.w[name].T

    @torch.no_grad()
    def eval(self, tokens: list[int]) -> np.ndarray:
        """Logits [len(tokens), n_vocab] for tokens appended after the cache."""
        cfg, w = self.cfg, self.w
        n = len(tokens)
        hd = cfg.head_dim
        n_rot = cfg.rot_dims
        positions = torch.arange(self.n_past, self.n_past + n)
        x = w["token_embd.weight"][torch.tensor(tokens, dtype=torch.long)]
        for i in range(cfg.n_layer):
            p = f"blk.{i}."
            h = rms_norm(x, w[p + "attn_norm.weight"], cfg.rms_eps)
            q = self.linear(h, p + "attn_q.weight").view(n, cfg.n_head, hd)
            k = self.linear(h, p + "attn_k.weight").view(n, cfg.n_head_kv, hd)
            v = self.linear(h, p + "attn_v.weight").view(n, cfg.n_head_kv, hd)
            q = rotary(q, positions, n_rot, cfg.rope_freq_base)
            k = rotary(k, positions, n_rot, cfg.rope_freq_base)
            self.k_cache[i] = torch.cat([self.k_cache[i], k])
            self.v_cache[i] = torch.cat([self.v_cache[i], v])
            keys = self.k_cache[i].repeat_interleave(cfg.n_head // cfg.n_head_kv, dim=1)
            values = self.v_cache[i].repeat_interleave(cfg.n_head // cfg.n_head_kv, dim=1)
            scores = torch.einsum("qhd,khd->hqk", q, keys) / hd**0.5
            total = self.n_past + n
            # causal: query at absolute position t sees keys 0..t
            mask = torch.arange(total)[None, :] > positions[:, None]
            scores = scores.masked_fill(mask[None], float("-inf"))
            attn = torch.softmax(scores, dim=-1)
            out = torch.einsum("hqk,khd->qhd", attn, values).reshape(n, cfg.n_embd)
            x = x + self.linear(out, p + "attn_output.weight")
            h = rms_norm(x, w[p + "ffn_norm.weight"], cfg.rms_eps)
            gate = torch.nn.functional.silu(self.linear(h, p + "ffn_gate.weight"))
            x = x + self.linear(gate * self.linear(h, p + "ffn_up.weight"), p + "ffn_down.weight")
        self.n_past += n
        x = rms_norm(x, w["output_norm.weight"], cfg.rms_eps)
        return self.linear(x, "output.weight").numpy()


def reference_from_gguf(path: str, dtype: torch.dtype = torch.float64,
                        round_activations: bool = False) -> ReferenceLlama:
    """A reference model on the dequantized weights of a GGUF file (any type gguf can read)."""
    import gguf

    from .model_file import FastGGUFReader

    reader = FastGGUFReader(path)

    def field(key: str, default: object = None) -> object:
        f = reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    n_embd = int(field("llama.embedding_length"))
    n_head = int(field("llama.attention.head_count"))
    weights: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        weights[t.name] = np.asarray(data, dtype=np.float64).reshape([int(d) for d in reversed(t.shape)])
    cfg = LlamaHParams(
        n_vocab=weights["token_embd.weight"].shape[0],
        n_embd=n_embd,
        n_layer=int(field("llama.block_count")),
        n_head=n_head,
        n_head_kv=int(field("llama.attention.head_count_kv", n_head)),
        n_ff=int(field("llama.feed_forward_length")),
        rms_eps=float(field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_freq_base=float(field("llama.rope.freq_base", 10000.0)),
        n_rot=int(field("llama.rope.dimension_count", n_embd // n_head)),
    )
    return ReferenceLlama(cfg, weights, dtype, round_activations)
