"""Random-weight llama models in real file layouts, for tests and benchmarks.

Decode speed does not depend on the weight values, so a random model of the
real 7B shape measures 7B speed without the download; small random models
are what the backends are checked on against the PyTorch reference.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from llama2.tokenizer import (
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    TOKEN_UNUSED,
    sentencepiece_model_proto,
)

from .gguf_writer import (
    GGMLType,
    LlamaHParams,
    TensorData,
    TensorSpec,
    TokenizerData,
    llama_tensor_shapes,
    write_llama_gguf,
)

_WORDS = (
    "the of and to in is was for that on as with by he at from his it an were are which this be "
    "or has had first one their its new after who they have her she two been other when there all "
    "during into school time may years more most only over city some world would where later up such "
    "used many can state about national out known university united then made france paris capital "
    "hello world richard feynman physics model language llama"
)
_COMMON_WORDS = _WORDS.split()


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
    for name, shape in llama_tensor_shapes(hp, tied_output).items():
        if len(shape) == 1:  # norms: near 1, varied
            yield name, (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        elif name == "token_embd.weight":
            yield name, rng.standard_normal(shape, dtype=np.float32)
        else:
            # 1/sqrt(in) keeps activations O(1) so logits are varied, not flat
            yield name, (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[1])).astype(np.float32)


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
    progress: bool = False,
    export_types: bool = False,
) -> Path:
    """Write a random llama GGUF, streaming (a 7B shape needs one tensor in memory at a time).

    Every matrix is qtype, norms F32; with export_types the matrices get the
    types an export to qtype gives them (quantize.tensor_type: Q8_0 embedding
    and output in 4-bit files). Plain rounding: the weights are noise.
    """
    from .quantize import FILE_TYPES, encode_tensor, tensor_type

    def type_of(name: str, shape: tuple[int, ...]) -> GGMLType:
        if export_types:
            return tensor_type(name, shape, qtype)
        return qtype if len(shape) == 2 else GGMLType.F32

    tok = tokenizer or synthetic_llama_tokenizer(hp.n_vocab)
    if len(tok.tokens) != hp.n_vocab:
        raise ValueError(f"tokenizer has {len(tok.tokens)} tokens but the model has n_vocab={hp.n_vocab}")
    shapes = llama_tensor_shapes(hp, tied_output)
    specs = [TensorSpec(name, shape, type_of(name, shape)) for name, shape in shapes.items()]

    def encoded() -> Iterator[TensorData]:
        from tqdm import tqdm

        arrays = random_llama_tensors(hp, seed, tied_output)
        pairs = zip(specs, arrays, strict=True)
        for spec, (name, array) in tqdm(pairs, total=len(specs), disable=not progress, desc=Path(out).name):
            yield encode_tensor(name, array, spec.type, search=False)

    return write_llama_gguf(out, hp, encoded(), tok, specs=specs, chat_template=chat_template,
                            name="random-llama", file_type=FILE_TYPES.get(qtype), force=force)


def sentencepiece_model_bytes(tok: TokenizerData) -> bytes:
    """A real sentencepiece tokenizer.model for a vocabulary, as Meta and HF ship it."""
    n = len(tok.tokens)
    return sentencepiece_model_proto(tok.tokens, tok.scores or [0.0] * n, tok.token_types or [TOKEN_NORMAL] * n,
                                     unk_id=tok.unk_id, bos_id=tok.bos_id, eos_id=tok.eos_id)


def _torch_weights(hp: LlamaHParams, seed: int, tied_output: bool, dtype: object
                   ) -> Iterator[tuple[str, object]]:
    import torch

    for name, array in random_llama_tensors(hp, seed, tied_output):
        yield name, torch.from_numpy(array).to(dtype)


def write_random_meta(
    folder: str | os.PathLike[str],
    hp: LlamaHParams,
    *,
    n_shards: int = 1,
    seed: int = 0,
    dtype: object = None,
    multiple_of: int = 256,
    ffn_dim_multiplier: float | None = None,
    tokenizer_beside: bool = False,
    tokenizer: TokenizerData | None = None,
) -> Path:
    """A random checkpoint in Meta's release layout: params.json, consolidated.NN.pth, tokenizer.model.

    Shards split each matrix the way Meta's model-parallel layers do (see
    convert/meta.py). The weights are random_llama_tensors(hp, seed), cast to
    dtype (default bfloat16, like Meta's releases). hp.n_ff must be what
    Meta's formula gives for multiple_of and ffn_dim_multiplier.
    """
    import torch

    from .meta import ffn_hidden_size, meta_name

    if ffn_hidden_size(hp.n_embd, multiple_of, ffn_dim_multiplier) != hp.n_ff:
        raise ValueError(f"n_ff={hp.n_ff} is not Meta's hidden size for dim={hp.n_embd}, "
                         f"multiple_of={multiple_of}, ffn_dim_multiplier={ffn_dim_multiplier}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or synthetic_llama_tokenizer(hp.n_vocab)
    params: dict[str, object] = {"dim": hp.n_embd, "multiple_of": multiple_of, "n_heads": hp.n_head,
                                 "n_layers": hp.n_layer, "norm_eps": hp.rms_eps, "vocab_size": -1}
    if hp.n_head_kv != hp.n_head:
        params["n_kv_heads"] = hp.n_head_kv
    if ffn_dim_multiplier is not None:
        params["ffn_dim_multiplier"] = ffn_dim_multiplier
    if hp.rope_freq_base != 10000.0:
        params["rope_theta"] = hp.rope_freq_base
    (folder / "params.json").write_text(json.dumps(params))
    (folder.parent if tokenizer_beside else folder).joinpath("tokenizer.model").write_bytes(
        sentencepiece_model_bytes(tok))
    shards: list[dict[str, object]] = [{} for _ in range(n_shards)]
    for name, t in _torch_weights(hp, seed, False, dtype or torch.bfloat16):
        key, dim = meta_name(name)
        pieces = [t] * n_shards if dim is None else torch.chunk(t, n_shards, dim=dim)  # type: ignore[attr-defined]
        for shard, piece in zip(shards, pieces, strict=True):
            shard[key] = piece.clone()  # its own storage, as a real shard has
    for i, shard in enumerate(shards):
        torch.save(shard, folder / f"consolidated.{i:02d}.pth")
    return folder


def write_random_hf(
    folder: str | os.PathLike[str],
    hp: LlamaHParams,
    *,
    seed: int = 0,
    dtype: object = None,
    weights_format: str = "safetensors",
    n_files: int = 1,
    tied_output: bool = False,
    chat_template: str | None = None,
    tokenizer: TokenizerData | None = None,
) -> Path:
    """A random checkpoint in Hugging Face's layout, with HF's q/k row permutation applied.

    weights_format: "safetensors" or "bin" (pytorch_model*.bin); n_files > 1
    writes shards with an index, as transformers' save_pretrained does.
    """
    import torch

    from .hf import hf_name, hf_permute

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizer or synthetic_llama_tokenizer(hp.n_vocab)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hp.n_embd,
        "intermediate_size": hp.n_ff, "num_attention_heads": hp.n_head, "num_hidden_layers": hp.n_layer,
        "num_key_value_heads": hp.n_head_kv, "rms_norm_eps": hp.rms_eps, "rope_theta": hp.rope_freq_base,
        "vocab_size": hp.n_vocab, "max_position_embeddings": hp.n_ctx_train,
        "tie_word_embeddings": tied_output,
        "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer.model").write_bytes(sentencepiece_model_bytes(tok))
    if chat_template is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": chat_template}))
    state: dict[str, torch.Tensor] = {}
    for name, t in _torch_weights(hp, seed, tied_output, dtype or torch.float32):
        suffix = name.split(".", 2)[-1]
        if suffix == "attn_q.weight":
            t = torch.from_numpy(hf_permute(t.float().numpy(), hp.n_head)).to(t.dtype)
        elif suffix == "attn_k.weight":
            t = torch.from_numpy(hf_permute(t.float().numpy(), hp.n_head_kv)).to(t.dtype)
        state[hf_name(name)] = t.contiguous()
    names = list(state)
    groups = [names[i::n_files] for i in range(n_files)]
    ext = "safetensors" if weights_format == "safetensors" else "bin"
    stem = "model" if ext == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"{stem}.{ext}" if n_files == 1 else f"{stem}-{i + 1:05d}-of-{n_files:05d}.{ext}"
        part = {n: state[n] for n in group}
        if ext == "safetensors":
            from safetensors.torch import save_file

            save_file(part, folder / file, metadata={"format": "pt"})
        else:
            torch.save(part, folder / file)
        weight_map.update(dict.fromkeys(group, file))
    if n_files > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index))
    return folder
