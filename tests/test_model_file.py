"""The model file reader: valid files load, malformed ones raise a clear error and never reach C."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf_patch import patch_tensor

import llama2
from llama2.convert.gguf_writer import GGMLType, LlamaHParams, tensor_from_float, write_llama_gguf
from llama2.convert.synthetic import random_llama_tensors, synthetic_llama_tokenizer
from llama2.errors import ModelFormatError, UnsupportedModelError
from llama2.model_file import ModelFile


def test_reads_hyperparameters_and_tensors(tiny_model):
    f = ModelFile(tiny_model("gqa"))
    hp = f.hparams
    assert (hp.n_vocab, hp.n_embd, hp.n_layer, hp.n_head, hp.n_head_kv, hp.n_ff) == (384, 96, 3, 6, 2, 224)
    assert hp.rope_freq_base == 100000.0
    assert f.tensors["blk.0.attn_k.weight"].shape == (32, 96)
    assert not f.tied_output


def test_tied_output_is_allowed(tiny_model):
    assert ModelFile(tiny_model("mha", tied=True)).tied_output


@pytest.mark.parametrize("content, match", [
    (b"", "not a GGUF file"),
    (b"GGML" + b"\0" * 100, "not a GGUF file"),
    (b"GGUF", "malformed GGUF"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 0), "architecture"),
])
def test_rejects_garbage(tmp_path, content, match):
    p = tmp_path / "bad.gguf"
    p.write_bytes(content)
    with pytest.raises((ModelFormatError, UnsupportedModelError), match=match):
        ModelFile(p)


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.7, 0.999])
def test_truncated_files_are_rejected(tmp_path, tiny_model, fraction):
    src = tiny_model("mha").read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(src[: int(len(src) * fraction)])
    with pytest.raises(ModelFormatError):
        llama2.load(p, backend="cpu_f32")


def test_offset_past_the_end(tmp_path, tiny_model):
    p = patch_tensor(tiny_model("mha"), tmp_path / "off.gguf", "blk.1.ffn_up.weight", offset=1 << 40)
    with pytest.raises(ModelFormatError):
        ModelFile(p)


@pytest.mark.parametrize("dims", [[1 << 40, 160], [64, 1 << 33], [64, 0], [(1 << 64) - 1, 2]])
def test_absurd_dimensions(tmp_path, tiny_model, dims):
    p = patch_tensor(tiny_model("mha"), tmp_path / "dims.gguf", "blk.1.ffn_up.weight", dims=dims)
    with pytest.raises(ModelFormatError):
        ModelFile(p)


def test_shape_disagreeing_with_hyperparameters(tmp_path, tiny_model):
    # [64, 160] -> [160, 64] keeps the byte size but not the shape the hyper-parameters imply
    p = patch_tensor(tiny_model("mha"), tmp_path / "shape.gguf", "blk.1.ffn_up.weight", dims=[160, 64])
    with pytest.raises(ModelFormatError, match="ffn_up"):
        ModelFile(p)


def test_unsupported_tensor_type(tmp_path, tiny_model):
    p = patch_tensor(tiny_model("mha"), tmp_path / "type.gguf", "blk.0.attn_q.weight", type_id=12)  # Q4_K
    with pytest.raises((UnsupportedModelError, ModelFormatError)):
        ModelFile(p)


def _write(tmp_path: Path, hp: LlamaHParams, drop: str | None = None, arch_ok: bool = True) -> Path:
    tensors = [tensor_from_float(n, a) for n, a in random_llama_tensors(hp) if n != drop]
    return write_llama_gguf(tmp_path / "m.gguf", hp, tensors, synthetic_llama_tokenizer(hp.n_vocab), force=True)


def test_missing_tensor(tmp_path):
    hp = LlamaHParams(n_vocab=300, n_embd=32, n_layer=2, n_head=2, n_head_kv=2, n_ff=64)
    with pytest.raises(ModelFormatError, match="missing tensor blk.1.ffn_gate.weight"):
        ModelFile(_write(tmp_path, hp, drop="blk.1.ffn_gate.weight"))


def test_vocabulary_mismatch_between_tokenizer_and_model(tmp_path):
    hp = LlamaHParams(n_vocab=300, n_embd=32, n_layer=1, n_head=2, n_head_kv=2, n_ff=64)
    tensors = [tensor_from_float(n, a) for n, a in random_llama_tensors(hp)]
    p = write_llama_gguf(tmp_path / "v.gguf", hp, tensors, synthetic_llama_tokenizer(310), force=True)
    with pytest.raises(ModelFormatError, match="tokenizer has 310 tokens"):
        llama2.load(p, backend="cpu_f32")


def test_quantized_row_length_must_be_whole_blocks(tmp_path):
    hp = LlamaHParams(n_vocab=300, n_embd=48, n_layer=1, n_head=2, n_head_kv=2, n_ff=64)
    tensors = [tensor_from_float(n, a) for n, a in random_llama_tensors(hp)]
    p = write_llama_gguf(tmp_path / "q.gguf", hp, tensors, synthetic_llama_tokenizer(300), force=True)
    # a Q8_0 type on a row of 48 weights: 1.5 blocks
    p2 = patch_tensor(p, tmp_path / "q2.gguf", "blk.0.attn_q.weight", type_id=int(GGMLType.Q8_0))
    with pytest.raises(ModelFormatError):
        ModelFile(p2)


def test_writer_is_atomic_and_refuses_to_overwrite(tmp_path):
    hp = LlamaHParams(n_vocab=300, n_embd=32, n_layer=1, n_head=2, n_head_kv=2, n_ff=64)
    path = _write(tmp_path, hp)
    with pytest.raises(FileExistsError):
        write_llama_gguf(path, hp, [], synthetic_llama_tokenizer(300))

    def failing():
        yield tensor_from_float("token_embd.weight", np.zeros((300, 32), np.float32))
        raise RuntimeError("disk full")

    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        write_llama_gguf(path, hp, failing(), synthetic_llama_tokenizer(300), force=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
