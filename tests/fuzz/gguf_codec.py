"""A lenient GGUF codec and a structure-aware mutator for fuzzing the loader.

Byte-level mutation of a GGUF file mostly breaks a length field and stops at
the first check; parsing the file into its parts (header, key/values, tensor
table, data), changing one part, and writing it back with consistent lengths
reaches the checks behind those: tokenizer arrays, hyper-parameters, shapes,
offsets. The codec is independent of the gguf package on purpose, so that it
can write what the gguf package would refuse to write.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"GGUF"
STRING, ARRAY = 8, 9
# value type -> (struct format, signed int?) for scalars; bool is stored as a raw byte on purpose
_SCALARS: dict[int, str] = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}
_INT_TYPES = {0, 1, 2, 3, 4, 5, 7, 10, 11}
_FLOAT_TYPES = {6, 12}
# Parsing stops at these counts: the mutator only needs files it could have written.
_MAX_ITEMS = 1 << 20


@dataclass
class KV:
    key: bytes
    vtype: int
    value: Any  # int/float for scalars, bytes for strings, (item type, [values]) for arrays


@dataclass
class Tensor:
    name: bytes
    dims: list[int]
    type: int
    offset: int


@dataclass
class GGUF:
    version: int = 3
    kvs: list[KV] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    data: bytes = b""

    def kv(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key == key.encode()), None)

    @property
    def alignment(self) -> int:
        kv = self.kv("general.alignment")
        if kv is not None and kv.vtype == 4 and isinstance(kv.value, int) and 0 < kv.value <= 4096 \
                and kv.value & (kv.value - 1) == 0:
            return kv.value
        return 32


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("short read")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        return self.take(self.unpack("Q"))

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY and depth < 4:
            itype, count = self.unpack("I"), self.unpack("Q")
            if count > _MAX_ITEMS:
                raise ValueError("array too long to mutate")
            return itype, [self.value(itype, depth + 1) for _ in range(count)]
        raise ValueError(f"value type {vtype}")


def parse(data: bytes) -> GGUF | None:
    """The file's parts, or None when it is not a GGUF file this codec can take apart."""
    r = _Reader(data)
    try:
        if r.take(4) != MAGIC:
            return None
        g = GGUF(version=r.unpack("I"))
        n_tensors, n_kv = r.unpack("Q"), r.unpack("Q")
        if n_tensors > _MAX_ITEMS or n_kv > _MAX_ITEMS:
            return None
        for _ in range(n_kv):
            key = r.string()
            vtype = r.unpack("I")
            g.kvs.append(KV(key, vtype, r.value(vtype)))
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("I")
            if n_dims > 64:
                return None
            dims = [r.unpack("Q") for _ in range(n_dims)]
            g.tensors.append(Tensor(name, dims, r.unpack("I"), r.unpack("Q")))
    except (ValueError, struct.error):
        return None
    start = -(-r.pos // g.alignment) * g.alignment
    g.data = data[start:]
    return g


def _pack_scalar(vtype: int, value: Any) -> bytes:
    fmt = _SCALARS[vtype]
    if vtype in _FLOAT_TYPES:
        value = float(value) if isinstance(value, (int, float)) else 0.0
        if fmt == "f" and abs(value) > 3.4e38 and value == value and abs(value) != float("inf"):
            value = float("inf") if value > 0 else float("-inf")
        return struct.pack("<" + fmt, value)
    size = struct.calcsize(fmt)
    value = int(value) if isinstance(value, (int, float)) and value == value and abs(value) != float("inf") else 0
    value %= 1 << (8 * size)  # wrap like C, so any integer is representable
    return value.to_bytes(size, "little")


def _pack_value(vtype: int, value: Any) -> bytes:
    if vtype in _SCALARS:
        return _pack_scalar(vtype, value)
    if vtype == STRING:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(raw)) + raw
    if vtype == ARRAY:
        itype, items = value
        return struct.pack("<IQ", itype, len(items)) + b"".join(_pack_value(itype, v) for v in items)
    return b""  # an unknown type has no payload we could know; the reader must stop here


def serialize(g: GGUF) -> bytes:
    out = [MAGIC, struct.pack("<IQQ", g.version % (1 << 32), len(g.tensors), len(g.kvs))]
    for kv in g.kvs:
        out += [struct.pack("<Q", len(kv.key)), kv.key, struct.pack("<I", kv.vtype % (1 << 32)),
                _pack_value(kv.vtype, kv.value)]
    for t in g.tensors:
        out += [struct.pack("<Q", len(t.name)), t.name, struct.pack("<I", len(t.dims))]
        out += [struct.pack("<Q", d % (1 << 64)) for d in t.dims]
        out += [struct.pack("<IQ", t.type % (1 << 32), t.offset % (1 << 64))]
    head = b"".join(out)
    pad = -len(head) % g.alignment
    return head + b"\0" * pad + g.data


# --- mutation -----------------------------------------------------------------

INTERESTING_INTS = [0, 1, 2, 3, 7, 31, 32, 33, 255, 256, 4095, 65535, 1 << 16, (1 << 24) + 1, (1 << 31) - 1, 1 << 31,
                    (1 << 32) - 1, 1 << 32, (1 << 32) + 32, (1 << 40), (1 << 62), (1 << 63) - 1, 1 << 63,
                    (1 << 64) - 1, -1, -2, -(1 << 31)]
INTERESTING_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-45, 1e-6, 1e38, 3.5e38, float("inf"), float("-inf"), float("nan"),
                      1e308]
INTERESTING_STRINGS = [
    b"", b" ", b"\x00", b"\xe2\x96\x81", b"\xc4\xa0", b"<0x>", b"<0xZZ>", b"<0x41>", b"<0x0A>", b"a b", b"a  b",
    b" a", b"a ", b"\xff", b"\xed\xa0\x80", b"\xc3", b"a" * 5000, b"<s>", b"</s>", b"<unk>", b"<|im_start|>",
    b"<|im_end|>", b"{{", b"{%", b"llama", b"gpt2", b"smollm", b"llama-bpe", b"default", b"bert", b"rwkv",
    b"\xe2\x96\x81\xe2\x96\x81", b"\xf0\x9f\xa6\x99", b"\n", b"\r\n", b"\t",
]
TEMPLATES = [
    b"{{ messages }}",
    b"{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    b"{% for m in messages %}{{ bos_token + m['content'] + eos_token }}{% endfor %}",
    b"{{ raise_exception('no') }}",
    b"{% if %}",
    b"{{ ''.__class__.__mro__[1].__subclasses__() }}",
    b"{{ cycler.__init__.__globals__ }}",
    b"{% for i in range(1000000000) %}x{% endfor %}",
    b"{{ 'a' * 100 }}",
    b"{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    b"{{" * 200,
    b"{% raw %}",
    b"{{ messages[0]['content'] | upper }}",
    b"{% set x = namespace(a=1) %}{{ x.a }}",
]
KNOWN_KEYS = [
    "general.architecture", "general.alignment", "general.name", "llama.vocab_size", "llama.embedding_length",
    "llama.block_count", "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
    "llama.context_length", "llama.rope.dimension_count", "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template",
]
TENSOR_NAMES = [b"token_embd.weight", b"output.weight", b"output_norm.weight", b"blk.0.attn_q.weight",
                b"blk.0.attn_norm.weight", b"blk.1.attn_q.weight", b"blk.0.ffn_down.weight", b"", b"\xff"]
TENSOR_TYPES = [0, 1, 2, 3, 6, 7, 8, 9, 10, 12, 15, 24, 30, 31, 39, 255, 1 << 31, (1 << 32) - 1]


def random_value(rng: random.Random, vtype: int, depth: int = 0) -> Any:
    if vtype in _INT_TYPES:
        return rng.choice(INTERESTING_INTS) if rng.random() < 0.7 else rng.randrange(-300, 70000)
    if vtype in _FLOAT_TYPES:
        return rng.choice(INTERESTING_FLOATS) if rng.random() < 0.7 else rng.uniform(-1e6, 1e6)
    if vtype == STRING:
        return rng.choice(INTERESTING_STRINGS + TEMPLATES)
    if vtype == ARRAY:
        itype = rng.choice([0, 4, 5, 6, 7, 8, 8, 8, 10, 12] + ([ARRAY] if depth < 2 else []))
        return itype, [random_value(rng, itype, depth + 1) for _ in range(rng.choice([0, 1, 2, 5, 40]))]
    return 0


def _mutate_array(rng: random.Random, kv: KV, g: GGUF) -> None:
    itype, items = kv.value
    items = list(items)
    choice = rng.randrange(7)
    if choice == 0 and items:  # one element gets an interesting value
        items[rng.randrange(len(items))] = random_value(rng, itype)
    elif choice == 1:  # shorter or empty
        items = items[:rng.randrange(len(items) + 1)] if rng.random() < 0.8 else []
    elif choice == 2 and items:  # longer, by repeating elements
        items += [rng.choice(items) for _ in range(rng.choice([1, 2, 17, 300]))]
    elif choice == 3 and items:  # a duplicate of another element (duplicate tokens, merges)
        items[rng.randrange(len(items))] = rng.choice(items)
    elif choice == 4:  # another item type, with values of that type
        itype = rng.choice([0, 1, 4, 5, 6, 7, 8, 10, 11, 12, ARRAY])
        items = [random_value(rng, itype, 1) for _ in range(min(len(items), 400) or rng.randrange(4))]
    elif choice == 5 and items:  # swap two elements (reorders merges, token ids)
        i, j = rng.randrange(len(items)), rng.randrange(len(items))
        items[i], items[j] = items[j], items[i]
    else:  # an element gets another array's element (a token string becomes a merge, ...)
        other = [x for x in g.kvs if x.vtype == ARRAY and x.value[1]]
        if other and items:
            src = rng.choice(other).value
            if src[0] == itype:
                items[rng.randrange(len(items))] = rng.choice(src[1])
    kv.value = (itype, items)


def mutate(g: GGUF, rng: random.Random) -> GGUF:
    """Change one part of g in place (the header, a key/value, a tensor or the data) and return it."""
    kind = rng.randrange(16)
    if kind <= 6 and g.kvs:
        kv = rng.choice(g.kvs)
        if kind <= 2:  # a new value of the same type
            if kv.vtype == ARRAY:
                _mutate_array(rng, kv, g)
            elif kv.key == b"tokenizer.chat_template" and rng.random() < 0.7:
                kv.value = rng.choice(TEMPLATES)
            else:
                kv.value = random_value(rng, kv.vtype)
        elif kind == 3:  # another type
            kv.vtype = rng.choice([*range(13), 13, 1 << 31])
            kv.value = random_value(rng, kv.vtype)
        elif kind == 4:
            g.kvs.remove(kv)
        elif kind == 5:  # a duplicate key or a known key in another place
            if rng.random() < 0.5:
                g.kvs.insert(rng.randrange(len(g.kvs) + 1), KV(kv.key, kv.vtype, kv.value))
            else:
                kv.key = rng.choice(KNOWN_KEYS).encode()
        else:  # a known key added with any value
            vtype = rng.choice([4, 5, 6, 7, 8, 9, 10, 12])
            g.kvs.append(KV(rng.choice(KNOWN_KEYS).encode(), vtype, random_value(rng, vtype)))
    elif kind <= 12 and g.tensors:
        t = rng.choice(g.tensors)
        if kind == 7:
            t.type = rng.choice(TENSOR_TYPES)
        elif kind == 8 and t.dims:
            t.dims[rng.randrange(len(t.dims))] = rng.choice(INTERESTING_INTS + [d for x in g.tensors for d in x.dims])
        elif kind == 9:  # fewer or more dimensions
            if rng.random() < 0.5 and t.dims:
                t.dims.pop(rng.randrange(len(t.dims)))
            else:
                t.dims.insert(rng.randrange(len(t.dims) + 1), rng.choice([1, 1, 2, 32, 0, (1 << 32) + 1]))
        elif kind == 10:  # offsets: unaligned, overlapping, past the end
            t.offset = rng.choice([0, t.offset + 1, t.offset - 32, t.offset + 32, len(g.data), len(g.data) - 1,
                                   rng.choice(g.tensors).offset, *INTERESTING_INTS])
        elif kind == 11:
            t.name = rng.choice(TENSOR_NAMES + [x.name for x in g.tensors])
        elif rng.random() < 0.5:
            g.tensors.remove(t)
        else:
            g.tensors.insert(rng.randrange(len(g.tensors) + 1), Tensor(t.name + b"x", list(t.dims), t.type, t.offset))
    elif kind == 13:  # truncated or extended data
        cut = rng.randrange(len(g.data) + 1) if g.data else 0
        g.data = g.data[:cut] if rng.random() < 0.8 else g.data + bytes(rng.randrange(1, 4096))
    elif kind == 14:
        g.version = rng.choice([0, 1, 2, 3, 4, 1 << 16, (1 << 32) - 1])
    elif g.data:  # a few bytes of weights changed (NaN and Inf bit patterns included)
        data = bytearray(g.data)
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(len(data))
            data[i] = rng.choice([0x00, 0x7F, 0x80, 0xFF, 0x7C, 0xFC, rng.randrange(256)])
        g.data = bytes(data)
    return g
