"""The minimised inputs of every loader finding, written into tests/data/fuzz/.

Each finding is one small change (a recipe) to the smallest file that
reaches the failing check: a tiny byte-level BPE model (a few kilobytes)
for metadata, a tiny sentencepiece model where only that tokenizer fails,
raw bytes where the GGUF reader itself failed. The files are kept in git so
the regression test needs nothing but them; this script documents how each
was made and rewrites them:

    python tests/fuzz/regression_inputs.py tests/data/fuzz
"""

from __future__ import annotations

import json
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gguf_codec as c
from llama2.convert.gguf_writer import GGMLType, LlamaHParams, TokenizerData
from llama2.convert.synthetic import synthetic_llama_tokenizer, write_random_llama


def tiny_bpe() -> bytes:
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "\u0120", "\u0120ab"]
    tok = TokenizerData(model="gpt2", tokens=tokens, token_types=[3, 3, 3, 1, 1, 1, 1, 1], merges=["a b", "\u0120 ab"],
                        bos_id=1, eos_id=2, unk_id=0, add_bos=False, pre="smollm")
    hp = LlamaHParams(n_vocab=len(tokens), n_embd=32, n_layer=1, n_head=2, n_head_kv=1, n_ff=32)
    return _write(hp, tok, GGMLType.Q4_0)


def tiny_sentencepiece() -> bytes:
    hp = LlamaHParams(n_vocab=286, n_embd=32, n_layer=1, n_head=2, n_head_kv=1, n_ff=32)
    return _write(hp, synthetic_llama_tokenizer(286), GGMLType.Q4_0)


def _write(hp: LlamaHParams, tok: TokenizerData, qtype: GGMLType) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = write_random_llama(Path(d) / "m.gguf", hp, qtype=qtype, tied_output=True, tokenizer=tok)
        return path.read_bytes()


def _set(key: str, vtype: int, value: object) -> Callable[[c.GGUF], None]:
    def change(g: c.GGUF) -> None:
        kv = g.kv(key)
        if kv is None:
            g.kvs.append(c.KV(key.encode(), vtype, value))
        else:
            kv.vtype, kv.value = vtype, value
    return change


def _raw_kv(key: bytes, vtype: int, payload: bytes, n_tensors: int = 0) -> bytes:
    """A GGUF file of one key/value, its payload given as raw bytes."""
    return c.MAGIC + struct.pack("<IQQ", 3, n_tensors, 1) + struct.pack("<Q", len(key)) + key + \
        struct.pack("<I", vtype) + payload


F32, F64, STR, ARR, U32, U64, I32 = 6, 12, 8, 9, 4, 10, 5

# name -> (base file, change); base "raw" means the change returns the whole file
RECIPES: dict[str, tuple[str, Callable]] = {
    # the gguf reader looped forever (and grew a list without bound) on an array longer than the file
    "hang-array-count-past-eof": ("raw", lambda: _raw_kv(b"general.architecture", ARR,
                                                         struct.pack("<IQ", 0, 1 << 62))),
    # nesting arrays past Python's recursion limit raised RecursionError
    "recursion-nested-arrays": ("raw", lambda: _raw_kv(b"x", ARR, struct.pack("<IQ", ARR, 1) * 1000 +
                                                       struct.pack("<IQ", U32, 0))),
    "vocab-size-string": ("bpe", _set("llama.vocab_size", STR, b"abc")),  # ValueError from int()
    "vocab-size-array": ("bpe", _set("llama.vocab_size", ARR, (U32, [8]))),  # TypeError from int()
    "embedding-length-nan": ("bpe", _set("llama.embedding_length", F32, float("nan"))),  # ValueError
    "embedding-length-inf": ("bpe", _set("llama.embedding_length", F64, float("inf"))),  # OverflowError
    "embedding-length-fraction": ("bpe", _set("llama.embedding_length", F64, 32.5)),  # silently truncated to 32
    "bos-id-string": ("bpe", _set("tokenizer.ggml.bos_token_id", STR, b"x")),  # ValueError
    "bos-id-nan": ("bpe", _set("tokenizer.ggml.bos_token_id", F32, float("nan"))),  # ValueError
    "token-type-scalar": ("bpe", _set("tokenizer.ggml.token_type", I32, 3)),  # TypeError: not iterable
    "token-type-strings": ("bpe", _set("tokenizer.ggml.token_type", ARR, (STR, [b"x"] * 8))),  # accepted
    "merges-integers": ("bpe", _set("tokenizer.ggml.merges", ARR, (U32, [1, 2]))),  # AttributeError
    "add-bos-string": ("bpe", _set("tokenizer.ggml.add_bos_token", STR, b"no")),  # accepted as True
    "unk-id-huge": ("sp", _set("tokenizer.ggml.unknown_token_id", U64, 1 << 40)),  # protobuf ValueError
    "unk-id-string": ("sp", _set("tokenizer.ggml.unknown_token_id", STR, b"x")),  # ValueError
    "tokens-integers": ("sp", lambda g: setattr(g.kv("tokenizer.ggml.tokens"), "value", (U32, list(range(286))))),
    # chat templates are the file's code: a 10 GB string (the process's memory) when rendered
    "chat-template-repeat-bomb": ("bpe", _set("tokenizer.chat_template", STR, b"{{ 'a' * 10000000000 }}")),
}

# Templates that took the process's memory or time, or raised RecursionError, when rendered.
CHAT_TEMPLATES = {
    "repeat-string": "{{ 'a' * 10000000000 }}",
    "repeat-messages": "{{ messages * 100000000 }}",
    "nested-ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "recursive-macro": "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}",
    "filter-width": "{{ 'x'|center(10000000000) }}",
    "method-width": "{{ 'x'.ljust(10000000000) }}",
    "format-width": "{{ '{:>10000000000}'.format('x') }}",
    "format-map-width": "{{ '{a:>10000000000}'.format_map({'a': 1}) }}",
    "percent-width": "{{ '%10000000000s' % 'x' }}",
    "format-filter-width": "{{ '%10000000000s'|format('x') }}",
    "power": "{{ 10 ** 100000000 }}",
}


def build(name: str) -> bytes:
    base, change = RECIPES[name]
    if base == "raw":
        return change()
    g = c.parse(tiny_bpe() if base == "bpe" else tiny_sentencepiece())
    assert g is not None
    change(g)
    return c.serialize(g)


def write_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in RECIPES:
        path = out / f"{name}.gguf"
        path.write_bytes(build(name))
        paths.append(path)
    templates = out / "chat-templates.json"
    templates.write_text(json.dumps(CHAT_TEMPLATES, indent=1) + "\n")
    return [*paths, templates]


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/fuzz")):
        print(p, p.stat().st_size)
