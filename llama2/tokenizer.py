"""Tokenizers rebuilt from the vocabulary stored in a GGUF file.

- "llama": a sentencepiece BPE model (LLaMA-2's tokenizer.model) rebuilt from
  the token, score and type arrays, so files need no side-car tokenizer.model.
- "gpt2": byte-level BPE (SmolLM2, Llama-3 style files) rebuilt with the
  `tokenizers` library, pre-tokenized the way Hugging Face does for that model.

Both expose bytes per token, so streaming can assemble valid UTF-8 across
byte-fallback tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache, lru_cache
from typing import Any, Protocol

from .errors import ModelFormatError, UnsupportedModelError

# sentencepiece piece types, as stored in tokenizer.ggml.token_type
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer regexes of byte-level BPE models, by tokenizer.ggml.pre; each
# list is applied in order, like a Hugging Face Sequence of Split pre-tokenizers.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_REGEXES: dict[str, list[str]] = {
    "default": [_GPT2_REGEX],
    "gpt2": [_GPT2_REGEX],
    "smollm": [r"\p{N}", _GPT2_REGEX],  # digits split one by one, then GPT-2's rule
    "llama-bpe": [_LLAMA3_REGEX],
    "llama3": [_LLAMA3_REGEX],
}


class Tokenizer(Protocol):
    n_vocab: int
    bos_id: int | None
    eos_id: int | None
    add_bos: bool

    def encode(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]: ...
    def token_bytes(self, token_id: int) -> bytes: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def is_special(self, token_id: int) -> bool: ...


_SURROGATE = re.compile("[\ud800-\udfff]")


def unicode_text(text: str) -> str:
    """text with lone surrogates (not Unicode, so not encodable) replaced by U+FFFD, as browsers do.

    Both tokenizer libraries raised their own exceptions on them (found by fuzzing); a str can
    hold them after decoding with 'surrogateescape' or from JSON's "\\ud800".
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    if _SURROGATE.search(text) is None:
        return text
    # UTF-16 joins surrogate pairs into their character and replaces the lone ones
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _check_id(name: str, value: Any, n_vocab: int) -> int | None:
    if value is None:
        return None
    value = int(value)
    if not 0 <= value < n_vocab:
        raise ModelFormatError(f"{name} = {value} is outside the vocabulary of {n_vocab} tokens")
    return value


class _BaseTokenizer:
    def __init__(self, tokens: list[str], types: list[int], meta: dict[str, Any]) -> None:
        self.tokens = tokens
        self.types = types
        self.n_vocab = len(tokens)
        self.bos_id = _check_id("tokenizer.ggml.bos_token_id", meta.get("bos"), self.n_vocab)
        self.eos_id = _check_id("tokenizer.ggml.eos_token_id", meta.get("eos"), self.n_vocab)
        self.add_bos = bool(meta.get("add_bos", True)) and self.bos_id is not None

    def is_special(self, token_id: int) -> bool:
        return self.types[token_id] in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_UNUSED)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.token_bytes(i) for i in ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_ids(self, ids: Sequence[int]) -> None:
        for i in ids:
            if not 0 <= i < self.n_vocab:
                raise ValueError(f"token id {i} is outside the vocabulary of {self.n_vocab} tokens")


def sentencepiece_model_proto(tokens: list[str], scores: list[float], types: list[int], *, unk_id: int | None,
                              bos_id: int | None, eos_id: int | None, add_space_prefix: bool = True) -> bytes:
    """A serialized sentencepiece ModelProto (BPE with byte fallback, as LLaMA's) for a GGUF vocabulary:
    what tokenizer.model holds."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id = unk_id if unk_id is not None else -1
    proto.trainer_spec.bos_id = bos_id if bos_id is not None else -1
    proto.trainer_spec.eos_id = eos_id if eos_id is not None else -1
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = add_space_prefix
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for piece, score, kind in zip(tokens, scores, types, strict=True):
        p = proto.pieces.add()
        p.piece = piece
        p.score = float(score)
        p.type = kind if kind in (1, 2, 3, 4, 5, 6) else TOKEN_NORMAL
    return proto.SerializeToString()


class SentencePieceTokenizer(_BaseTokenizer):
    """LLaMA-2's tokenizer: sentencepiece BPE with byte fallback."""

    def __init__(self, tokens: list[str], scores: list[float], types: list[int], meta: dict[str, Any]) -> None:
        super().__init__(tokens, types, meta)
        import sentencepiece as spm

        unk = _check_id("tokenizer.ggml.unknown_token_id", meta.get("unk", 0), self.n_vocab)
        self.add_space_prefix = bool(meta.get("add_space_prefix", True))
        proto = sentencepiece_model_proto(tokens, scores, types, unk_id=unk if unk is not None else 0,
                                          bos_id=self.bos_id, eos_id=self.eos_id,
                                          add_space_prefix=self.add_space_prefix)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(proto)
        except RuntimeError as exc:
            raise ModelFormatError(f"cannot rebuild the sentencepiece tokenizer: {exc}") from exc
        self._specials = {t: i for i, (t, k) in enumerate(zip(tokens, types, strict=True))
                          if k in (TOKEN_CONTROL, TOKEN_USER_DEFINED) and t}

    def encode(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        ids: list[int] = [self.bos_id] if add_bos and self.bos_id is not None else []
        text = unicode_text(text)
        if not parse_special or not self._specials:
            return ids + list(self._sp.EncodeAsIds(text))
        for piece, special in _split_specials(text, self._specials):
            ids.extend([special] if special is not None else self._sp.EncodeAsIds(piece))
        return ids

    @cache  # noqa: B019 - one tokenizer per model, lives as long as it
    def token_bytes(self, token_id: int) -> bytes:
        self._check_ids([token_id])
        piece, kind = self.tokens[token_id], self.types[token_id]
        if kind == TOKEN_BYTE and len(piece) == 6 and piece.startswith("<0x"):
            return bytes([int(piece[3:5], 16)])
        if kind in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_UNUSED):
            return b""
        return piece.replace("▁", " ").encode("utf-8")

    def decode(self, ids: Sequence[int]) -> str:
        text = self.decode_bytes(ids).decode("utf-8", errors="replace")
        # sentencepiece drops the space its dummy prefix added in front of the first word
        if self.add_space_prefix and text.startswith(" "):
            text = text[1:]
        return text


def _split_specials(text: str, specials: dict[str, int]) -> list[tuple[str, int | None]]:
    """Cut text at occurrences of special-token strings (longest match first)."""
    pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
    parts: list[tuple[str, int | None]] = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            parts.append((text[pos:m.start()], None))
        parts.append((m.group(0), specials[m.group(0)]))
        pos = m.end()
    if pos < len(text):
        parts.append((text[pos:], None))
    return parts


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's reversible map from printable unicode characters back to bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class ByteLevelBPETokenizer(_BaseTokenizer):
    """GPT-2 style byte-level BPE, as SmolLM2 and Llama-3 files use."""

    def __init__(self, tokens: list[str], types: list[int], merges: list[str], meta: dict[str, Any]) -> None:
        super().__init__(tokens, types, meta)
        from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        pre = str(meta.get("pre") or "default")
        if pre not in _PRE_TOKENIZER_REGEXES:
            raise UnsupportedModelError(
                f"unsupported tokenizer.ggml.pre {pre!r} (known: {', '.join(sorted(_PRE_TOKENIZER_REGEXES))})"
            )
        vocab = {t: i for i, t in enumerate(tokens)}
        pairs = []
        for m in merges:
            left, sep, right = m.partition(" ")
            if not sep:
                raise ModelFormatError(f"malformed BPE merge {m!r} in tokenizer.ggml.merges")
            pairs.append((left, right))
        try:
            model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=pre in ("llama-bpe", "llama3"))
        except Exception as exc:  # the library raises its own exception type
            raise ModelFormatError(f"cannot rebuild the BPE tokenizer: {exc}") from exc
        splits = [
            pre_tokenizers.Split(Regex(rx), behavior="isolated", invert=False)
            for rx in _PRE_TOKENIZER_REGEXES[pre]
        ]

        def build() -> HFTokenizer:
            hf = HFTokenizer(model)
            hf.pre_tokenizer = pre_tokenizers.Sequence(
                [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
            )
            hf.decoder = decoders.ByteLevel()
            return hf

        # Two encoders: special-token text in a user's prompt stays plain text
        # (as llama.cpp's parse_special=false), while rendered chat templates
        # map "<|im_start|>" and friends to their single ids.
        self._hf_plain = build()
        self._hf = build()
        self._hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                     for t, k in zip(tokens, types, strict=True)
                                     if k in (TOKEN_CONTROL, TOKEN_USER_DEFINED)])
        self._decoder = _byte_decoder()
        self._special_ids = {i for i, k in enumerate(types) if k in (TOKEN_CONTROL, TOKEN_USER_DEFINED)}

    def encode(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        ids: list[int] = [self.bos_id] if add_bos and self.bos_id is not None else []
        encoder = self._hf if parse_special else self._hf_plain
        return ids + encoder.encode(unicode_text(text), add_special_tokens=False).ids

    @cache  # noqa: B019 - one tokenizer per model, lives as long as it
    def token_bytes(self, token_id: int) -> bytes:
        self._check_ids([token_id])
        piece = self.tokens[token_id]
        if token_id in self._special_ids:
            return b"" if self.types[token_id] == TOKEN_CONTROL else piece.encode("utf-8")
        try:
            return bytes(self._decoder[c] for c in piece)
        except KeyError:  # not a byte-level piece: take its text as it is
            return piece.encode("utf-8")


def tokenizer_from_metadata(meta: dict[str, Any]) -> Tokenizer:
    """Build the tokenizer described by GGUF tokenizer.ggml.* values (already read into meta)."""
    kind = meta.get("model")
    tokens = meta.get("tokens")
    if not tokens:
        raise ModelFormatError("the file has no tokenizer.ggml.tokens")
    n = len(tokens)
    types = list(meta.get("types") or [TOKEN_NORMAL] * n)
    if len(types) != n:
        raise ModelFormatError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
    if kind == "llama":
        scores = list(meta.get("scores") or [0.0] * n)
        if len(scores) != n:
            raise ModelFormatError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
        return SentencePieceTokenizer(list(tokens), scores, types, meta)
    if kind == "gpt2":
        return ByteLevelBPETokenizer(list(tokens), types, list(meta.get("merges") or []), meta)
    raise UnsupportedModelError(f"unsupported tokenizer.ggml.model {kind!r} (supported: llama, gpt2)")
