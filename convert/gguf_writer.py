"""Write llama-architecture GGUF files with the `gguf` package, atomically.

The file is written under a temporary name in the destination folder and
renamed at the end, so a failure never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

GGMLType = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class LlamaHParams:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int = 2048
    rms_eps: float = 1e-5
    rope_freq_base: float = 10000.0
    n_rot: int | None = None  # defaults to n_embd // n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def rot_dims(self) -> int:
        return self.n_rot if self.n_rot is not None else self.head_dim


@dataclass
class TokenizerData:
    """What GGUF's tokenizer.ggml.* keys hold."""

    model: str  # "llama" (sentencepiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    scores: list[float] | None = None
    token_types: list[int] | None = None
    merges: list[str] | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool | None = None
    add_eos: bool | None = None
    pre: str | None = None  # gpt2 pre-tokenizer name, e.g. "smollm"
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class TensorData:
    """One tensor to write: a float array (F32/F16) or raw quantized bytes.

    shape is the logical PyTorch shape ([out, in] for a weight matrix).
    """

    name: str
    shape: tuple[int, ...]
    type: GGMLType
    data: np.ndarray  # float32/float16 array of `shape`, or uint8 bytes of a quantized type


@dataclass(frozen=True)
class TensorSpec:
    """What a tensor will be, known before its data exists: enough to write the tensor infos."""

    name: str
    shape: tuple[int, ...]
    type: GGMLType

    @property
    def nbytes(self) -> int:
        block, type_size = gguf.GGML_QUANT_SIZES[self.type]
        n = int(np.prod(self.shape, dtype=np.int64))
        return n // block * type_size


def llama_tensor_shapes(hp: LlamaHParams, tied_output: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor of a llama GGUF in file order, with its PyTorch shape ([out, in])."""
    kv_dim = hp.n_head_kv * hp.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (hp.n_vocab, hp.n_embd)}
    for i in range(hp.n_layer):
        p = f"blk.{i}."
        shapes[p + "attn_norm.weight"] = (hp.n_embd,)
        shapes[p + "attn_q.weight"] = (hp.n_embd, hp.n_embd)
        shapes[p + "attn_k.weight"] = (kv_dim, hp.n_embd)
        shapes[p + "attn_v.weight"] = (kv_dim, hp.n_embd)
        shapes[p + "attn_output.weight"] = (hp.n_embd, hp.n_embd)
        shapes[p + "ffn_norm.weight"] = (hp.n_embd,)
        shapes[p + "ffn_gate.weight"] = (hp.n_ff, hp.n_embd)
        shapes[p + "ffn_up.weight"] = (hp.n_ff, hp.n_embd)
        shapes[p + "ffn_down.weight"] = (hp.n_embd, hp.n_ff)
    shapes["output_norm.weight"] = (hp.n_embd,)
    if not tied_output:
        shapes["output.weight"] = (hp.n_vocab, hp.n_embd)
    return shapes


def tensor_from_float(name: str, array: np.ndarray, qtype: GGMLType = GGMLType.F32) -> TensorData:
    """Encode a float array as qtype with plain round-to-nearest (gguf.quants)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if qtype == GGMLType.F32:
        return TensorData(name, array.shape, qtype, array)
    if qtype == GGMLType.F16:
        return TensorData(name, array.shape, qtype, array.astype(np.float16))
    raw = gguf.quants.quantize(array, qtype)
    return TensorData(name, array.shape, qtype, raw)


def write_tokenizer(writer: gguf.GGUFWriter, tok: TokenizerData) -> None:
    writer.add_tokenizer_model(tok.model)
    if tok.pre is not None:
        writer.add_tokenizer_pre(tok.pre)
    writer.add_token_list(tok.tokens)
    if tok.scores is not None:
        writer.add_token_scores(tok.scores)
    if tok.token_types is not None:
        writer.add_token_types(tok.token_types)
    if tok.merges is not None:
        writer.add_token_merges(tok.merges)
    for value, add in (
        (tok.bos_id, writer.add_bos_token_id),
        (tok.eos_id, writer.add_eos_token_id),
        (tok.unk_id, writer.add_unk_token_id),
        (tok.pad_id, writer.add_pad_token_id),
    ):
        if value is not None:
            add(value)
    if tok.add_bos is not None:
        writer.add_add_bos_token(tok.add_bos)
    if tok.add_eos is not None:
        writer.add_add_eos_token(tok.add_eos)
    for key, value in tok.extra.items():
        add_typed_value(writer, key, value)


def add_typed_value(writer: gguf.GGUFWriter, key: str, value: object) -> None:
    """Write a key whose GGUF type is implied by the Python value, or given as (GGUFValueType, value)."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], gguf.GGUFValueType):
        vtype, value = value
        sub_type = None
        if vtype == gguf.GGUFValueType.ARRAY and isinstance(value, list) and value:
            sub_type = gguf.GGUFValueType.get_type(value[0])
        writer.add_key_value(key, value, vtype, sub_type)
        return
    writer.add_key_value(key, value, gguf.GGUFValueType.get_type(value))


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `out`; rename it onto `out` only on success."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_llama_gguf(
    out: str | os.PathLike[str],
    hp: LlamaHParams,
    tensors: Iterable[TensorData],
    tokenizer: TokenizerData,
    *,
    specs: Sequence[TensorSpec] | None = None,
    chat_template: str | None = None,
    name: str = "llama",
    file_type: int | None = None,
    extra_kv: dict[str, object] | None = None,
    force: bool = False,
) -> Path:
    """Write a complete llama-architecture GGUF file atomically and return its path.

    With `specs` (every tensor's name, shape and type, in order) the tensor
    infos are written first and `tensors` is consumed one tensor at a time, so
    a generator keeps only one tensor in memory. Without `specs` the tensors
    are gathered into a list first, which is fine for small models.
    """
    if specs is None:
        tensors = list(tensors)
        specs = [TensorSpec(t.name, tuple(t.shape), t.type) for t in tensors]
    with atomic_path(out, force=force) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name(name)
        writer.add_context_length(hp.n_ctx_train)
        writer.add_embedding_length(hp.n_embd)
        writer.add_block_count(hp.n_layer)
        writer.add_feed_forward_length(hp.n_ff)
        writer.add_head_count(hp.n_head)
        writer.add_head_count_kv(hp.n_head_kv)
        writer.add_rope_dimension_count(hp.rot_dims)
        writer.add_rope_freq_base(hp.rope_freq_base)
        writer.add_layer_norm_rms_eps(hp.rms_eps)
        writer.add_vocab_size(hp.n_vocab)
        if file_type is not None:
            writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_tokenizer(writer, tokenizer)
        if chat_template is not None:
            writer.add_chat_template(chat_template)
        for key, value in (extra_kv or {}).items():
            add_typed_value(writer, key, value)
        for spec in specs:
            # gguf reverses the logical shape itself; the dtype only tells it F32/F16 from raw bytes
            if spec.type == GGMLType.F32:
                writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), spec.nbytes)
            elif spec.type == GGMLType.F16:
                writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float16), spec.nbytes)
            else:
                writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), spec.nbytes,
                                       raw_dtype=spec.type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        n_written = 0
        for spec, t in zip(specs, tensors, strict=False):
            if (t.name, tuple(t.shape), t.type) != (spec.name, spec.shape, spec.type) or t.data.nbytes != spec.nbytes:
                raise ValueError(
                    f"tensor {t.name} {t.type.name}{list(t.shape)} ({t.data.nbytes} bytes) arrived where "
                    f"{spec.name} {spec.type.name}{list(spec.shape)} ({spec.nbytes} bytes) was announced"
                )
            writer.write_tensor_data(t.data)
            n_written += 1
        if n_written != len(specs):
            raise ValueError(f"only {n_written} of {len(specs)} announced tensors arrived")
        writer.close()
    return Path(out)
