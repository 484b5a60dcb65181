"""Hugging Face llama folders: config.json, safetensors or pytorch_model*.bin, tokenizer.model.

HF's conversion script permutes the rows of wq and wk so that its rotary
code can rotate the two halves of each head (x[i], x[i + d/2]) instead of
Meta's adjacent pairs (x[2i], x[2i+1]). GGUF llama files keep Meta's
convention, so the permutation is undone here, as llama.cpp's converter does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .checkpoint import (
    Checkpoint,
    ConvertError,
    SourceTensor,
    check_vocab,
    mapped_ranges,
    read_json,
    release_pages,
    torch_to_float32,
)
from .gguf_writer import LlamaHParams, llama_tensor_shapes
from .tokenizer import LLAMA2_CHAT_TEMPLATE, find_tokenizer_model, looks_like_chat_model, tokenizer_from_spm

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # old HF files store it


def hf_name(gguf_name: str) -> str:
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if m:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    return _GLOBAL_NAMES[gguf_name]


def hf_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What HF's conversion does to wq/wk: within each head, rows (2i, 2i+1) become (i, i + d/2)."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def hf_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of hf_permute: back to Meta's interleaved rows."""
    rows, cols = w.shape
    out = w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)
    return np.ascontiguousarray(out)


def hparams_from_config(config: dict[str, object], where: Path) -> tuple[LlamaHParams, bool]:
    if config.get("model_type", "llama") != "llama":
        raise ConvertError(f"{where}: model_type {config.get('model_type')!r} is not llama")
    try:
        n_embd = int(config["hidden_size"])  # type: ignore[arg-type]
        n_head = int(config["num_attention_heads"])  # type: ignore[arg-type]
        hp = LlamaHParams(
            n_vocab=int(config["vocab_size"]),  # type: ignore[arg-type]
            n_embd=n_embd,
            n_layer=int(config["num_hidden_layers"]),  # type: ignore[arg-type]
            n_head=n_head,
            n_head_kv=int(config.get("num_key_value_heads") or n_head),  # type: ignore[arg-type]
            n_ff=int(config["intermediate_size"]),  # type: ignore[arg-type]
            n_ctx_train=int(config.get("max_position_embeddings", 4096)),  # type: ignore[arg-type]
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),  # type: ignore[arg-type]
            rope_freq_base=float(config.get("rope_theta", 10000.0)),  # type: ignore[arg-type]
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{where}: missing or bad key {e}") from e
    if config.get("head_dim") not in (None, n_embd // n_head):
        raise ConvertError(f"{where}: head_dim {config['head_dim']} != hidden_size / num_attention_heads")
    if config.get("rope_scaling"):
        raise ConvertError(f"{where}: rope_scaling {config['rope_scaling']} is not supported")
    return hp, bool(config.get("tie_word_embeddings", False))


class _WeightFiles:
    """Which file holds which tensor, and how to read one tensor from it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where: dict[str, Path] = {}
        self._pth: dict[Path, tuple[dict[str, object], list[tuple[int, int]]]] = {}
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = folder / index_name
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise ConvertError(f"{index}: not a weight index ({e})") from e
                for name, file in weight_map.items():
                    path = folder / file
                    if not path.is_file():
                        raise ConvertError(f"{index}: {name} is in {file}, which is missing")
                    self.where[name] = path
                return
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
        if not files:
            raise ConvertError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
        for path in files:
            for name in self._names(path):
                self.where[name] = path

    def _names(self, path: Path) -> list[str]:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(path, framework="pt") as f:
                    return list(f.keys())
            except Exception as e:
                raise ConvertError(f"{path}: cannot read as safetensors ({e})") from e
        return list(self._torch_file(path)[0])

    def _torch_file(self, path: Path) -> tuple[dict[str, object], list[tuple[int, int]]]:
        import torch

        if path not in self._pth:
            try:
                sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:
                raise ConvertError(f"{path}: cannot read as a PyTorch checkpoint ({e})") from e
            self._pth[path] = (sd, mapped_ranges(path))
        return self._pth[path]

    def reader(self, name: str) -> Callable[[], np.ndarray]:
        path = self.where[name]

        def load() -> np.ndarray:
            origin = f"{path}: {name}"
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                # opened per tensor so that its mapping, and the pages read through it, go away after
                with safe_open(path, framework="pt") as f:
                    return torch_to_float32(f.get_tensor(name), origin)
            sd, ranges = self._torch_file(path)
            t = sd[name]
            out = torch_to_float32(t, origin)
            release_pages(t, ranges)
            return out
        return load


def open_hf(folder: str | Path) -> Checkpoint:
    folder = Path(folder)
    config_path = folder / "config.json"
    config = read_json(config_path, "a Hugging Face model folder")
    hp, tied = hparams_from_config(config, config_path)
    tokenizer = tokenizer_from_spm(find_tokenizer_model(folder))
    check_vocab(hp.n_vocab, tokenizer, f"{config_path}: vocab_size")
    files = _WeightFiles(folder)
    tied = tied or "lm_head.weight" not in files.where
    expected = llama_tensor_shapes(hp, tied_output=tied)
    wanted = {hf_name(n) for n in expected}
    extra = [n for n in files.where if n not in wanted and not _IGNORED.fullmatch(n)]
    if extra and not (tied and extra == ["lm_head.weight"]):
        raise ConvertError(f"{files.where[extra[0]]}: unexpected tensor {extra[0]}")

    tensors = []
    for gguf_name, shape in expected.items():
        name = hf_name(gguf_name)
        if name not in files.where:
            raise ConvertError(f"{folder}: tensor {name} is missing")
        load = files.reader(name)
        heads = {"attn_q.weight": hp.n_head, "attn_k.weight": hp.n_head_kv}.get(gguf_name.split(".", 2)[-1])
        if heads is not None:
            load = _unpermuted(load, heads, shape, f"{files.where[name]}: {name}")
        tensors.append(SourceTensor(gguf_name, shape, load, f"{files.where[name]}: {name}"))

    chat_template = None
    tok_config = folder / "tokenizer_config.json"
    if tok_config.is_file():
        chat_template = _template_from(json.loads(tok_config.read_text()).get("chat_template"))
    if chat_template is None and looks_like_chat_model(folder):
        chat_template = LLAMA2_CHAT_TEMPLATE
    return Checkpoint(path=folder, hparams=hp, tokenizer=tokenizer, tensors=tensors,
                      chat_template=chat_template, name=folder.resolve().name)


def _unpermuted(load: Callable[[], np.ndarray], n_head: int, shape: tuple[int, ...], origin: str
                ) -> Callable[[], np.ndarray]:
    def wrapped() -> np.ndarray:
        w = load()
        if w.shape != shape:  # checked here too: the un-permutation needs the right shape
            raise ConvertError(f"{origin}: shape {list(w.shape)}, expected {list(shape)} from config.json")
        return hf_unpermute(w, n_head)
    return wrapped


def _template_from(value: object) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of named templates."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    return None
