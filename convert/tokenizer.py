"""The tokenizer and chat template that go into a converted file.

A sentencepiece tokenizer.model is read as its protobuf (ModelProto), not
through a SentencePieceProcessor, so pieces, scores and types are copied
exactly as trained, including control and byte pieces.
"""

from __future__ import annotations

from pathlib import Path

from .gguf_writer import TokenizerData

# Llama-2-chat's prompt format: [INST] ... [/INST] per user turn, the system prompt inside the
# first one between <<SYS>> markers, each exchange wrapped in BOS ... EOS.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token }}[INST] "
    "{% if loop.first and system %}<<SYS>>\n{{ system }}\n<</SYS>>\n\n{% endif %}"
    "{{ message['content'] | trim }} [/INST]"
    "{% elif message['role'] == 'assistant' %}"
    " {{ message['content'] | trim }} {{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)


class TokenizerError(ValueError):
    pass


def tokenizer_from_spm(path: str | Path) -> TokenizerData:
    """Tokens, scores, types and special ids of a sentencepiece tokenizer.model."""
    from sentencepiece import sentencepiece_model_pb2

    path = Path(path)
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises its own DecodeError
        raise TokenizerError(f"{path}: not a sentencepiece model ({e})") from e
    if not proto.pieces:
        raise TokenizerError(f"{path}: sentencepiece model has no pieces")
    spec = proto.trainer_spec

    def special(i: int) -> int | None:
        return i if 0 <= i < len(proto.pieces) else None

    return TokenizerData(
        model="llama",
        tokens=[p.piece for p in proto.pieces],
        scores=[float(p.score) for p in proto.pieces],
        # sentencepiece's piece types (NORMAL=1 ... BYTE=6) are GGUF's token types
        token_types=[int(p.type) for p in proto.pieces],
        bos_id=special(spec.bos_id),
        eos_id=special(spec.eos_id),
        unk_id=special(spec.unk_id),
        pad_id=special(spec.pad_id),
        add_bos=True,
        add_eos=False,
        extra={"tokenizer.ggml.add_space_prefix": bool(proto.normalizer_spec.add_dummy_prefix)},
    )


def find_tokenizer_model(folder: Path) -> Path:
    """tokenizer.model in the checkpoint folder or beside it (Meta's downloads put it one level up)."""
    for candidate in (folder / "tokenizer.model", folder.parent / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    raise TokenizerError(f"{folder}: no tokenizer.model in the folder or beside it")


def looks_like_chat_model(folder: Path) -> bool:
    """Meta names its chat releases llama-2-*-chat; HF repos the same with -chat-hf."""
    return "chat" in folder.resolve().name.lower()
