"""A GGUF file as a source (ours or llama.cpp's): re-quantize, widen, or copy tensors.

The tokenizer keys and chat template are carried over as they are, whatever
the tokenizer type (sentencepiece "llama" or byte-level BPE "gpt2"). Tensors
whose type does not change are copied byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from .checkpoint import Checkpoint, ConvertError, SourceTensor, check_vocab, mapped_ranges, release_pages
from .gguf_writer import GGMLType, LlamaHParams, TokenizerData, llama_tensor_shapes

# keys the writer sets itself from the hyper-parameters and the file's new contents
_WRITTEN_BY_US = {"general.architecture", "general.name", "general.file_type", "general.quantization_version",
                  "general.alignment"}
_TOKENIZER_FIELDS = {
    "tokenizer.ggml.model": "model", "tokenizer.ggml.tokens": "tokens", "tokenizer.ggml.scores": "scores",
    "tokenizer.ggml.token_type": "token_types", "tokenizer.ggml.merges": "merges",
    "tokenizer.ggml.bos_token_id": "bos_id", "tokenizer.ggml.eos_token_id": "eos_id",
    "tokenizer.ggml.unknown_token_id": "unk_id", "tokenizer.ggml.padding_token_id": "pad_id",
    "tokenizer.ggml.add_bos_token": "add_bos", "tokenizer.ggml.add_eos_token": "add_eos",
    "tokenizer.ggml.pre": "pre",
}


def open_reader(path: str | Path) -> gguf.GGUFReader:
    from llama2.model_file import FastGGUFReader

    try:
        return FastGGUFReader(path)
    except Exception as e:  # gguf raises ValueError, struct.error, ... on a damaged file
        raise ConvertError(f"{path}: not a readable GGUF file ({e})") from e


def _typed(field: gguf.ReaderField) -> tuple[object, ...]:
    """A field as (type, value[, element type]), the form the writer's add_typed_value takes."""
    value = field.contents()
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return (field.types[0], value, field.types[1] if len(field.types) > 1 else None)
    return (field.types[0], value)


def tokenizer_from_gguf(reader: gguf.GGUFReader, path: str | Path) -> tuple[TokenizerData, str | None]:
    """The tokenizer (every tokenizer.ggml.* key) and chat template of a GGUF file."""
    known: dict[str, object] = {}
    extra: dict[str, object] = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        if key in _TOKENIZER_FIELDS:
            known[_TOKENIZER_FIELDS[key]] = field.contents()
        else:
            extra[key] = _typed(field)
    if "tokens" not in known or "model" not in known:
        raise ConvertError(f"{path}: no tokenizer (tokenizer.ggml.tokens/model) in the file")
    template = reader.fields.get("tokenizer.chat_template")
    tok = TokenizerData(**known, extra=extra)  # type: ignore[arg-type]
    return tok, None if template is None else str(template.contents())


def hparams_from_gguf(reader: gguf.GGUFReader, n_vocab: int, path: str | Path) -> LlamaHParams:
    def get(key: str, default: object = None) -> object:
        field = reader.fields.get(key)
        if field is None:
            if default is None:
                raise ConvertError(f"{path}: missing key {key}")
            return default
        return field.contents()

    arch = get("general.architecture")
    if arch != "llama":
        raise ConvertError(f"{path}: architecture {arch!r} is not llama")
    n_embd = int(get("llama.embedding_length"))  # type: ignore[arg-type]
    n_head = int(get("llama.attention.head_count"))  # type: ignore[arg-type]
    n_rot = int(get("llama.rope.dimension_count", n_embd // n_head))  # type: ignore[arg-type]
    return LlamaHParams(
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=int(get("llama.block_count")),  # type: ignore[arg-type]
        n_head=n_head,
        n_head_kv=int(get("llama.attention.head_count_kv", n_head)),  # type: ignore[arg-type]
        n_ff=int(get("llama.feed_forward_length")),  # type: ignore[arg-type]
        n_ctx_train=int(get("llama.context_length", 4096)),  # type: ignore[arg-type]
        rms_eps=float(get("llama.attention.layer_norm_rms_epsilon", 1e-5)),  # type: ignore[arg-type]
        rope_freq_base=float(get("llama.rope.freq_base", 10000.0)),  # type: ignore[arg-type]
        n_rot=None if n_rot == n_embd // n_head else n_rot,
    )


def open_gguf(path: str | Path) -> Checkpoint:
    path = Path(path)
    reader = open_reader(path)
    by_name = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in by_name:
        raise ConvertError(f"{path}: tensor token_embd.weight is missing")
    tokenizer, template = tokenizer_from_gguf(reader, path)
    n_vocab = int(by_name["token_embd.weight"].shape[1])
    check_vocab(n_vocab, tokenizer, f"{path}: token_embd.weight rows")
    hp = hparams_from_gguf(reader, n_vocab, path)
    expected = llama_tensor_shapes(hp, tied_output="output.weight" not in by_name)
    extra = sorted(set(by_name) - set(expected))
    if extra:
        raise ConvertError(f"{path}: unsupported tensor {extra[0]}")

    ranges = mapped_ranges(path)
    tensors = []
    for name, shape in expected.items():
        t = by_name.get(name)
        if t is None:
            raise ConvertError(f"{path}: tensor {name} is missing")
        found = tuple(int(d) for d in reversed(t.shape))
        if found != shape:
            raise ConvertError(f"{path}: {name} has shape {list(found)}, expected {list(shape)}")
        tensors.append(SourceTensor(
            name, shape, _dequantizer(t, shape, f"{path}: {name}", ranges), f"{path}: {name}",
            raw_type=GGMLType(int(t.tensor_type)), load_raw=_raw_copier(t, ranges)))
    general_name = reader.fields.get("general.name")
    carried = {k: _typed(f) for k, f in reader.fields.items()
               if k.startswith("general.") and k not in _WRITTEN_BY_US}
    for key in reader.fields:
        if key.startswith("tokenizer.chat_template."):  # named templates (tool use, RAG)
            carried[key] = _typed(reader.fields[key])
    return Checkpoint(path=path, hparams=hp, tokenizer=tokenizer, tensors=tensors, chat_template=template,
                      name=str(general_name.contents()) if general_name else path.stem, extra_kv=carried)


def _dequantizer(t: gguf.ReaderTensor, shape: tuple[int, ...], origin: str, ranges: list[tuple[int, int]]):
    def load() -> np.ndarray:
        data = np.asarray(t.data)
        try:
            values = gguf.quants.dequantize(data, t.tensor_type)
        except NotImplementedError as e:
            raise ConvertError(f"{origin}: cannot decode tensor type {t.tensor_type.name}") from e
        values = np.asarray(values, dtype=np.float32).reshape(shape)
        if np.may_share_memory(values, data):  # F32 "dequantizes" to a view of the file
            values = values.copy()
        release_pages(data, ranges)
        return values
    return load


def _raw_copier(t: gguf.ReaderTensor, ranges: list[tuple[int, int]]):
    def load_raw() -> np.ndarray:
        data = np.asarray(t.data)
        copy = data.copy()
        release_pages(data, ranges)
        return copy
    return load_raw
