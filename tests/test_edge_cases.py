"""Edge cases through the runtime: each gives an answer or a clear error, never a crash or a hang.

Long generations up to and past the context limit, empty prompts, a 100 kB
prompt, prompts made only of special tokens, extreme temperatures and top-p,
on SmolLM2 (the real tokenizer and template) and on a tiny random model
where many tokens are needed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

import llama2
from llama2.errors import ContextOverflowError
from llama2.streaming import StopReason

N_CTX = 96


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path):
    model = llama2.load(smollm2_path, backend="cpu_f32", n_ctx=N_CTX)
    yield model
    model.close()


@pytest.fixture(scope="module")
def tiny(tiny_model):
    model = llama2.load(tiny_model("gqa", "Q8_0"), backend="cpu_f32", n_ctx=40)
    yield model
    model.close()


def run(g) -> str:
    text = "".join(g)
    assert g.stop_reason is not None
    return text


def test_generation_runs_to_the_context_limit_and_stops_there(tiny) -> None:
    prompt = tiny.tokenize("the first of the")
    g = tiny.generate(prompt, max_tokens=10_000, temperature=0)
    run(g)
    # greedy on a random model may also meet EOS; either way the cache never overflows
    assert g.stop_reason in (StopReason.CONTEXT_FULL, StopReason.EOS)
    if g.stop_reason is StopReason.CONTEXT_FULL:
        assert len(prompt) + len(g.tokens) == tiny.n_ctx + 1  # the last token is emitted, never evaluated
    # and the model is still usable afterwards
    assert run(tiny.generate("the", max_tokens=3, temperature=0)) is not None


def test_prompt_longer_than_the_context_is_a_clear_error(tiny) -> None:
    with pytest.raises(ContextOverflowError, match="the context holds 40") as info:
        tiny.generate("the " * 200, max_tokens=5)
    assert info.value.capacity == 40 and info.value.requested > 40


def test_chat_beyond_the_context_drops_oldest_turns_or_says_why(smollm2) -> None:
    turns = []
    for i in range(12):
        turns += [{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"},
                  {"role": "assistant", "content": f"It is {2 * i}."}]
    turns.append({"role": "user", "content": "And 3 plus 4?"})
    with pytest.raises(ContextOverflowError, match="overflow='drop_oldest'"):
        smollm2.chat(turns, max_tokens=8, temperature=0)
    g = smollm2.chat(turns, max_tokens=8, temperature=0, overflow="drop_oldest")
    run(g)
    assert g.messages is not None and g.messages[-1] == turns[-1] and len(g.messages) < len(turns)


@pytest.mark.parametrize("prompt", ["", []])
def test_empty_prompt_starts_from_bos(smollm2, prompt) -> None:
    g = smollm2.generate(prompt, max_tokens=4, temperature=0)
    run(g)
    assert g.stop_reason in (StopReason.MAX_TOKENS, StopReason.EOS)


def test_empty_chat_message_gets_an_answer(smollm2) -> None:
    g = smollm2.chat([{"role": "user", "content": ""}], max_tokens=4, temperature=0)
    run(g)
    assert g.stop_reason in (StopReason.MAX_TOKENS, StopReason.EOS)


@pytest.mark.timeout(120)
def test_100kb_prompt_is_refused_quickly_and_clearly(smollm2) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. " * (100_000 // 45)
    t0 = time.perf_counter()
    with pytest.raises(ContextOverflowError, match=f"the context holds {N_CTX}"):
        smollm2.generate(prompt, max_tokens=4)
    with pytest.raises(ContextOverflowError):
        smollm2.chat([{"role": "user", "content": prompt}], max_tokens=4, overflow="drop_oldest")
    assert time.perf_counter() - t0 < 60


@pytest.mark.parametrize("prompt", [
    "<|im_start|><|im_end|><|endoftext|>",  # as text (parse_special=False): ordinary characters
    [1, 2, 1, 2, 0],  # as ids: only special tokens
    [2],  # only the end token
])
def test_prompts_of_only_special_tokens(smollm2, prompt) -> None:
    g = smollm2.generate(prompt, max_tokens=4, temperature=0)
    run(g)
    assert g.stop_reason in (StopReason.MAX_TOKENS, StopReason.EOS)


def test_chat_content_made_of_special_tokens(smollm2) -> None:
    g = smollm2.chat([{"role": "user", "content": "<|im_end|><|im_start|>system\n<|im_end|>" * 3}],
                     max_tokens=4, temperature=0)
    run(g)
    assert g.stop_reason in (StopReason.MAX_TOKENS, StopReason.EOS)


@pytest.mark.parametrize("temperature", [0.0, 1e-6, 5.0, 1e6, 1e30, math.inf])
def test_any_non_negative_temperature_answers(tiny, temperature: float) -> None:
    g = tiny.generate("the first", max_tokens=6, temperature=temperature, seed=1)
    run(g)
    assert all(0 <= t < tiny.n_vocab for t in g.tokens)


@pytest.mark.parametrize("temperature", [-1.0, math.nan])
def test_invalid_temperature_is_a_clear_error(tiny, temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        run(tiny.generate("the", max_tokens=2, temperature=temperature))


@pytest.mark.parametrize("top_p", [1.0, 1e-9, 0.5])
def test_top_p_in_range_answers(tiny, top_p: float) -> None:
    g = tiny.generate("the first", max_tokens=6, temperature=1.0, top_p=top_p, seed=2)
    run(g)
    assert len(g.tokens) > 0 or g.stop_reason is StopReason.EOS


def test_top_p_one_tiny_equals_greedy(tiny) -> None:
    """top_p that keeps only the top token is greedy, at any temperature."""
    a = tiny.generate("the first", max_tokens=8, temperature=3.0, top_p=1e-9, seed=3)
    b = tiny.generate("the first", max_tokens=8, temperature=0)
    run(a), run(b)
    assert a.tokens == b.tokens


@pytest.mark.parametrize("top_p", [0.0, -0.5, 1.5, math.nan])
def test_top_p_out_of_range_is_a_clear_error(tiny, top_p: float) -> None:
    with pytest.raises(ValueError, match="top_p must be in"):
        run(tiny.generate("the", max_tokens=2, top_p=top_p))


def test_zero_and_negative_max_tokens(tiny) -> None:
    g = tiny.generate("the", max_tokens=0)
    assert run(g) == "" and g.stop_reason is StopReason.MAX_TOKENS
    with pytest.raises(ValueError, match="max_tokens"):
        tiny.generate("the", max_tokens=-1)


def test_token_ids_outside_the_vocabulary_are_refused(tiny) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        run(tiny.generate([0, tiny.n_vocab], max_tokens=2))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        run(tiny.generate([-1], max_tokens=2))
