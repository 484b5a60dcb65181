"""Every input the loader fuzzing found, kept minimised in tests/data/fuzz/.

Each one made the loader hang, recurse past Python's limit, raise an
undocumented exception, or accept garbage; each must now be refused with
ModelFormatError (or UnsupportedModelError), quickly, with a message naming
what is wrong. Chat templates (the file's own Jinja code) that took the
process's memory or time must raise ChatTemplateError. tests/fuzz/regression_inputs.py documents how each was made.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import llama2
from llama2.chat_template import render_jinja
from llama2.errors import ChatTemplateError, ModelFormatError, UnsupportedModelError
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


TEMPLATE_BOMB = "chat-template-repeat-bomb"
CHAT_TEMPLATES = json.loads((DATA / "chat-templates.json").read_text())


def test_every_kept_input_has_an_expectation() -> None:
    assert sorted(p.stem for p in DATA.glob("*.gguf")) == sorted([*EXPECTED, TEMPLATE_BOMB])


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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_chat_template_bomb_is_refused(name: str) -> None:
    """A template may not build huge strings or lists, loop without bound, or recurse: it is the file's code."""
    t0 = time.perf_counter()
    with pytest.raises(ChatTemplateError):
        render_jinja(CHAT_TEMPLATES[name], [{"role": "user", "content": "hi"}])
    assert time.perf_counter() - t0 < 5


def test_a_model_with_a_bomb_template_loads_and_refuses_to_chat() -> None:
    model = llama2.load(DATA / f"{TEMPLATE_BOMB}.gguf", backend="cpu_f32", n_ctx=32)
    with pytest.raises(ChatTemplateError, match="larger than a chat template may build"):
        model.apply_chat_template([{"role": "user", "content": "hi"}])
    assert model.tokenize("ab") == [5]  # the model stays usable
    model.close()


def test_bounded_templates_still_render_what_real_templates_use() -> None:
    template = ("{% for m in messages %}{{ '%s: %s' % (m['role'], m['content']) }}{{ '-' * 3 }}"
                "{% for i in range(3) %}{{ i }}{% endfor %}{{ '{:>4}'.format(m['content']|length) }}\n{% endfor %}")
    assert render_jinja(template, [{"role": "user", "content": "hi"}]) == "user: hi---012   2\n"


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
