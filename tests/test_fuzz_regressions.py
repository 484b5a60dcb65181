"""Every input the loader fuzzing found, kept minimised in tests/data/fuzz/.

Each one made the loader hang, recurse past Python's limit, raise an
undocumented exception, or accept garbage; each must now be refused with
ModelFormatError (or UnsupportedModelError), quickly, with a message naming
what is wrong. tests/fuzz/regression_inputs.py documents how each was made.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llama2.errors import ModelFormatError, UnsupportedModelError
from llama2.model_file import ModelFile
from llama2.tokenizer import tokenizer_from_metadata

DATA = Path(__file__).parent / "data" / "fuzz"

# input -> words the refusal must contain
EXPECTED = {
    "hang-array-count-past-eof": "declares 4611686018427387904 items",
    "recursion-nested-arrays": "nested more than",
    "vocab-size-string": "llama.vocab_size",
    "vocab-size-array": "llama.vocab_size",
    "embedding-length-nan": "llama.embedding_length should be an integer",
    "embedding-length-inf": "llama.embedding_length should be an integer",
    "embedding-length-fraction": "llama.embedding_length should be an integer",
    "bos-id-string": "tokenizer.ggml.bos_token_id should be int",
    "bos-id-nan": "tokenizer.ggml.bos_token_id should be int",
    "token-type-scalar": "tokenizer.ggml.token_type should be an array of int",
    "token-type-strings": "tokenizer.ggml.token_type should be an array of int",
    "merges-integers": "tokenizer.ggml.merges should be an array of str",
    "add-bos-string": "tokenizer.ggml.add_bos_token should be bool",
    "unk-id-huge": "unknown_token_id = 1099511627776 is outside the vocabulary",
    "unk-id-string": "tokenizer.ggml.unknown_token_id should be int",
    "tokens-integers": "tokenizer.ggml.tokens should be an array of str",
}


def test_every_kept_input_has_an_expectation() -> None:
    assert sorted(p.stem for p in DATA.glob("*.gguf")) == sorted(EXPECTED)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fuzz_finding_is_refused(name: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises((ModelFormatError, UnsupportedModelError)) as info:
        mf = ModelFile(DATA / f"{name}.gguf")
        try:
            tokenizer_from_metadata(mf.tokenizer_metadata())
        finally:
            mf.close()
    assert EXPECTED[name] in str(info.value)
    assert time.perf_counter() - t0 < 10, "refusing a small malformed file must be quick"


def test_typed_metadata_accepts_real_types(tiny_model) -> None:
    """The type checks added for the findings accept what the writer (and llama.cpp) produce."""
    mf = ModelFile(tiny_model("gqa", "Q8_0"))
    meta = mf.tokenizer_metadata()
    assert isinstance(meta["tokens"], list) and all(isinstance(t, str) for t in meta["tokens"])
    assert meta["add_bos"] is True and meta["bos"] == 1
    assert mf.typed("llama.rope.freq_base", float) == pytest.approx(100000.0)
    with pytest.raises(ModelFormatError, match="should be str"):
        mf.typed("llama.block_count", str)
    mf.close()


def test_smollm2_metadata_passes_the_type_checks(smollm2_path: Path) -> None:
    mf = ModelFile(smollm2_path)
    tok = tokenizer_from_metadata(mf.tokenizer_metadata())
    assert tok.n_vocab == mf.hparams.n_vocab == 49152
    mf.close()
