"""Streaming text: whole UTF-8 characters only, stop strings across tokens never emitted."""

from __future__ import annotations

import random

import pytest
from llama2.convert.synthetic import synthetic_llama_tokenizer

from llama2.streaming import StopReason, TextAssembler
from llama2.tokenizer import Tokenizer, tokenizer_from_metadata


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """A sentencepiece tokenizer with byte fallback: <0xNN> is token 3 + NN."""
    data = synthetic_llama_tokenizer(1000)
    meta = {"model": "llama", "tokens": data.tokens, "scores": data.scores, "types": data.token_types,
            "bos": data.bos_id, "eos": data.eos_id, "unk": data.unk_id, "add_bos": True}
    return tokenizer_from_metadata(meta)


def byte_tokens(data: bytes) -> list[int]:
    return [3 + b for b in data]


def stream(tok: Tokenizer, ids: list[int], stop: list[str] = ()) -> tuple[list[str], TextAssembler]:
    a = TextAssembler(tok, stop)
    pieces = []
    for i in ids:
        pieces.append(a.push(i))
        if a.stopped:
            return pieces, a
    pieces.append(a.finish())
    return pieces, a


def test_byte_tokens_are_what_the_fixture_says(tok: Tokenizer) -> None:
    assert all(tok.token_bytes(3 + b) == bytes([b]) for b in range(256))


def test_multibyte_characters_are_held_until_complete(tok: Tokenizer) -> None:
    text = "a é ✓ 中 😀."
    pieces, _ = stream(tok, byte_tokens(text.encode()))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # each character comes out with its last byte, not before, not later
    utf8 = text.encode()
    expect = []
    for ch in text:
        expect += [""] * (len(ch.encode()) - 1) + [ch]
    assert pieces[:-1] == expect and pieces[-1] == ""
    assert len(utf8) == len(pieces) - 1


def test_real_tokenization_with_byte_fallback(tok: Tokenizer) -> None:
    text = "the capital of france is paris; naïve ✓ 中文 emoji 😀 done"
    ids = tok.encode(text, add_bos=True)
    assert any(3 <= i < 259 for i in ids)  # characters outside the vocabulary fell back to bytes
    pieces, _ = stream(tok, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode_bytes(ids).decode("utf-8")


def test_invalid_and_unfinished_bytes_become_replacement_characters(tok: Tokenizer) -> None:
    pieces, _ = stream(tok, byte_tokens(b"ok\x9c!"))  # a lone continuation byte
    assert "".join(pieces) == "ok\ufffd!"
    pieces, _ = stream(tok, byte_tokens(b"end\xe2\x9c"))  # cut inside a 3-byte character
    assert pieces[-1] == "\ufffd" and "".join(pieces) == "end\ufffd"


def test_stop_string_spanning_tokens_is_not_emitted(tok: Tokenizer) -> None:
    ids = tok.encode("hello world. the end", add_bos=False)
    pieces, a = stream(tok, ids, stop=["world."])
    assert a.stopped and a.stop_string == "world."
    assert "".join(pieces) == " hello "
    with pytest.raises(RuntimeError):
        a.push(ids[0])


def test_partial_match_is_held_then_released(tok: Tokenizer) -> None:
    pieces, a = stream(tok, byte_tokens(b"xxabcabx"), stop=["abcd"])
    assert not a.stopped
    assert "".join(pieces) == "xxabcabx"
    # "abc" could still become "abcd": nothing of it is out until the "a" that breaks the match
    assert pieces[:6] == ["x", "x", "", "", "", "abc"]


def test_earliest_stop_string_wins_and_multibyte_stops(tok: Tokenizer) -> None:
    pieces, a = stream(tok, byte_tokens("un ✓ deux ✗ trois".encode()), stop=["✗", "deux ✗ t"])
    assert a.stop_string == "✗" and "".join(pieces) == "un ✓ deux "
    # "x" is complete before "deux ✗ t" is: generation would have stopped there
    pieces, a = stream(tok, byte_tokens("un ✓ deux ✗ trois".encode()), stop=["deux ✗ t", "x"])
    assert a.stop_string == "x" and "".join(pieces) == "un ✓ deu"
    # both complete with the same token: the one that started first (the longer) cuts
    ab = tok.tokens.index("ab")
    a = TextAssembler(tok, ["b", "ab"])
    assert a.push(3 + ord("x")) == "x" and a.push(ab) == ""
    assert a.stopped and a.stop_string == "ab"
    pieces, a = stream(tok, byte_tokens("ab✓".encode()), stop=["✓"])
    assert a.stopped and "".join(pieces) == "ab"


def test_stop_string_completed_by_its_last_byte(tok: Tokenizer) -> None:
    a = TextAssembler(tok, ["é"])
    out = a.push(3 + 0x41) + a.push(3 + 0xC3) + a.push(3 + 0xA9)
    assert a.stopped and out == "A"
    assert a.finish() == ""


def reference(text: str, stops: list[str]) -> str:
    """text up to the stop string that is complete first (the longest of those ending together)."""
    for end in range(len(text) + 1):
        ending = [s for s in stops if s and text[:end].endswith(s)]
        if ending:
            return text[: end - max(len(s) for s in ending)]
    return text


@pytest.mark.parametrize("seed", range(40))
def test_random_texts_and_stops_against_reference(tok: Tokenizer, seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "ab é✓"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
    stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 3))]
    # one byte per token: every character and every stop string straddles tokens
    pieces, a = stream(tok, byte_tokens(text.encode()), stops)
    assert "".join(pieces) == reference(text, stops)
    assert a.stopped == any(s in text for s in stops)
    # nothing was emitted that a later byte could have turned into part of a match
    emitted = ""
    for p in pieces:
        emitted += p
        assert reference(text, stops).startswith(emitted)


def test_stop_reason_values() -> None:
    assert [str(r) for r in StopReason] == ["eos", "max_tokens", "stop", "cancelled", "context_full"]
    assert StopReason("stop") is StopReason.STOP
