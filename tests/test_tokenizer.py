"""Tokenizers rebuilt from GGUF arrays agree with the libraries' own models."""

from __future__ import annotations

import pytest

from llama2.model_file import ModelFile
from llama2.tokenizer import ByteLevelBPETokenizer, SentencePieceTokenizer, tokenizer_from_metadata

TEXTS = [
    "Hello world",
    "The capital of France is Paris.",
    "  leading spaces and\ttabs\nnew lines",
    "numbers 12345 and 3.14159",
    "unicode: héllo wörld, 日本語, emoji 🦙",
    "",
]


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    """A real sentencepiece BPE model trained here, as LLaMA's tokenizer.model is built."""
    spm = pytest.importorskip("sentencepiece")
    d = tmp_path_factory.mktemp("spm")
    corpus = d / "corpus.txt"
    import pydoc_data.topics

    text = "\n".join(list(pydoc_data.topics.topics.values())[:60])
    corpus.write_text(text)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(d / "tok"), vocab_size=600, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=str(d / "tok.model"))


def _metadata_from_processor(sp) -> dict:
    """What a converter stores in GGUF: pieces, scores, types (as llama.cpp's convert does)."""
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                     else 5 if sp.is_unused(i) else 1)
    return {"model": "llama", "tokens": tokens, "scores": scores, "types": types, "bos": 1, "eos": 2,
            "unk": 0, "add_bos": True}


def test_sentencepiece_rebuilt_from_arrays_matches_the_original(sentencepiece_model):
    tok = tokenizer_from_metadata(_metadata_from_processor(sentencepiece_model))
    assert isinstance(tok, SentencePieceTokenizer)
    for text in [*TEXTS, "def f(x):\n    return x ** 2  # comment"]:
        assert tok.encode(text, add_bos=False) == sentencepiece_model.encode(text), text
        assert tok.encode(text, add_bos=True)[:1] == [1]
        ids = sentencepiece_model.encode(text)
        assert tok.decode(ids) == sentencepiece_model.decode(ids), text


def test_sentencepiece_bytes_assemble_split_characters(sentencepiece_model):
    tok = tokenizer_from_metadata(_metadata_from_processor(sentencepiece_model))
    ids = tok.encode("🦙", add_bos=False)
    assert len(ids) >= 4  # byte fallback: one token per UTF-8 byte
    assert b"".join(tok.token_bytes(i) for i in ids).strip() == "🦙".encode()


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_path) -> ByteLevelBPETokenizer:
    tok = tokenizer_from_metadata(ModelFile(smollm2_path).tokenizer_metadata())
    assert isinstance(tok, ByteLevelBPETokenizer)
    return tok


def test_smollm2_known_tokens(smol_tokenizer):
    ids = smol_tokenizer.encode("The capital of France is", add_bos=False)
    assert [smol_tokenizer.tokens[i] for i in ids] == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
    # SmolLM2's pre-tokenizer splits digits one by one
    digits = smol_tokenizer.encode("2024", add_bos=False)
    assert [smol_tokenizer.tokens[i] for i in digits] == ["2", "0", "2", "4"]


def test_smollm2_round_trip_and_specials(smol_tokenizer):
    for text in TEXTS:
        assert smol_tokenizer.decode(smol_tokenizer.encode(text, add_bos=False)) == text
    im_start = smol_tokenizer.tokens.index("<|im_start|>")
    assert smol_tokenizer.encode("<|im_start|>user", add_bos=False, parse_special=True)[0] == im_start
    # typed by a user, the same text is not a control token
    assert im_start not in smol_tokenizer.encode("<|im_start|>user", add_bos=False)
    assert smol_tokenizer.is_special(im_start)
