"""Random-weight llama models in real file layouts, for tests and benchmarks.

Decode speed does not depend on the weight values, so a random model of the
real 7B shape measures 7B speed without the download; small random models
are what the backends are checked on against the PyTorch reference.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from llama2.tokenizer import TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_UNUSED

from .gguf_writer import (
    GGMLType,
    LlamaHParams,
    TensorData,
    TokenizerData,
    tensor_from_float,
    write_llama_gguf,
)

_COMMON_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "that",
    "on",
    "as",
    "with",
    "by",
    "he",
    "at",
    "from",
    "his",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "first",
    "one",
    "their",
    "its",
    "new",
    "after",
    "who",
    "they",
    "have",
    "her",
    "she",
    "two",
    "been",
    "other",
    "when",
    "there",
    "all",
    "during",
    "into",
    "school",
    "time",
    "may",
    "years",
    "more",
    "most",
    "only",
    "over",
    "city",
    "some",
    "world",
    "would",
    "where",
    "later",
    "up",
    "such",
    "used",
    "many",
    "can",
    "state",
    "about",
    "national",
    "out",
    "known",
    "university",
    "united",
    "then",
    "made",
    "france",
    "paris",
    "capital",
    "hello",
    "world",
    "richard",
    "feynman",
    "physics",
    "model",
    "language",
    "llama",
]


def synthetic_llama_tokenizer(n_vocab: int) -> TokenizerData:
    """A sentencepiece-style vocabulary (unk, bos, eos, 256 byte pieces, then words).

    It tokenizes any text (bytes fall back to <0xNN> pieces), which is all a
    random model needs.
    """
    if n_vocab < 3 + 256 + 27:
        raise ValueError(f"a synthetic llama vocabulary needs at least 286 tokens, got {n_vocab}")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256
    pieces: list[str] = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += [chr(c) for c in range(ord("A"), ord("Z") + 1)] + list("0123456789.,!?'-:;()")
    pieces += ["▁" + w for w in _COMMON_WORDS]
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    pieces += [a + b for a in letters for b in letters]
    pieces += ["▁" + a + b for a in letters for b in letters]
    seen: set[str] = set()
    unique = [p for p in pieces if not (p in seen or seen.add(p))]
    need = n_vocab - len(tokens)
    unique = unique[:need]
    unique += [f"<unused{i}>" for i in range(need - len(unique))]
    # BPE merge priority follows score: earlier pieces merge first
    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(unique))]
    types += [TOKEN_UNUSED if p.startswith("<unused") else TOKEN_NORMAL for p in unique]
    return TokenizerData(
        model="llama",
        tokens=tokens + unique,
        scores=scores,
        token_types=types,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        add_bos=True,
        add_eos=False,
    )


def random_llama_tensors(
    hp: LlamaHParams, seed: int = 0, tied_output: bool = False
) -> Iterator[tuple[str, np.ndarray]]:
    """Float32 weights of a llama model in GGUF names and PyTorch shapes, one at a time."""
    rng = np.random.default_rng(seed)
    head_dim = hp.head_dim
    kv_dim = hp.n_head_kv * head_dim

    def matrix(out_dim: int, in_dim: int) -> np.ndarray:
        # 1/sqrt(in) keeps activations O(1) so logits are varied, not flat
        return (rng.standard_normal((out_dim, in_dim), dtype=np.float32) / np.sqrt(in_dim)).astype(np.float32)

    def norm(dim: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(dim, dtype=np.float32)).astype(np.float32)

    yield "token_embd.weight", rng.standard_normal((hp.n_vocab, hp.n_embd), dtype=np.float32)
    for i in range(hp.n_layer):
        yield f"blk.{i}.attn_norm.weight", norm(hp.n_embd)
        yield f"blk.{i}.attn_q.weight", matrix(hp.n_embd, hp.n_embd)
        yield f"blk.{i}.attn_k.weight", matrix(kv_dim, hp.n_embd)
        yield f"blk.{i}.attn_v.weight", matrix(kv_dim, hp.n_embd)
        yield f"blk.{i}.attn_output.weight", matrix(hp.n_embd, hp.n_embd)
        yield f"blk.{i}.ffn_norm.weight", norm(hp.n_embd)
        yield f"blk.{i}.ffn_gate.weight", matrix(hp.n_ff, hp.n_embd)
        yield f"blk.{i}.ffn_up.weight", matrix(hp.n_ff, hp.n_embd)
        yield f"blk.{i}.ffn_down.weight", matrix(hp.n_embd, hp.n_ff)
    yield "output_norm.weight", norm(hp.n_embd)
    if not tied_output:
        yield "output.weight", matrix(hp.n_vocab, hp.n_embd)


def write_random_llama(
    out: str | os.PathLike[str],
    hp: LlamaHParams,
    *,
    qtype: GGMLType = GGMLType.F32,
    seed: int = 0,
    tied_output: bool = False,
    tokenizer: TokenizerData | None = None,
    chat_template: str | None = None,
    force: bool = True,
) -> Path:
    """Write a random llama GGUF; 2-D weights in qtype (plain rounding), norms in F32."""
    tok = tokenizer or synthetic_llama_tokenizer(hp.n_vocab)
    if len(tok.tokens) != hp.n_vocab:
        raise ValueError(f"tokenizer has {len(tok.tokens)} tokens but the model has n_vocab={hp.n_vocab}")

    def encoded() -> Iterator[TensorData]:
        for name, array in random_llama_tensors(hp, seed, tied_output):
            tensor_type = qtype if array.ndim == 2 else GGMLType.F32
            yield tensor_from_float(name, array, tensor_type)

    return write_llama_gguf(
        out, hp, list(encoded()), tok, chat_template=chat_template, name="random-llama", force=force
    )
