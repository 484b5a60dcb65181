"""Sessions on the real core (cpu_f32, small random models): prefix reuse, overflow, stops, threads."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
from llama2.convert.gguf_writer import LlamaHParams
from llama2.convert.synthetic import synthetic_llama_tokenizer, write_random_llama

import llama2
from llama2.chat_template import llama2_chat_text
from llama2.errors import ContextOverflowError
from llama2.generation import common_prefix_length
from llama2.streaming import StopReason

HP = LlamaHParams(n_vocab=384, n_embd=96, n_layer=3, n_head=6, n_head_kv=2, n_ff=224)
PROMPT = "the capital of france is paris, and richard feynman was a physicist of the world"
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_llama(tmp_path_factory.mktemp("sessions") / "tiny.gguf", HP, seed=3)


@pytest.fixture(scope="module")
def model(model_path: Path):
    with llama2.load(model_path, backend="cpu_f32", threads=1, n_ctx=2048) as m:
        yield m


def conversation(turns: int) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "you are a model of the world"}]
    for i in range(turns):
        msgs.append({"role": "user", "content": f"tell me about paris, part {i}"})
        msgs.append({"role": "assistant", "content": f"paris is the capital of france, part {i}"})
    return msgs


# --- prefix reuse --------------------------------------------------------------------------


def test_feed_evaluates_only_new_tokens_and_matches_a_fresh_session(model) -> None:
    ids = model.tokenize(PROMPT)
    with model.session() as s, model.session() as fresh:
        s.feed(ids[:10])
        assert s.n_evaluated == 10
        logits = s.feed(ids)
        assert s.n_evaluated == len(ids)  # the first ten were not evaluated again
        np.testing.assert_allclose(logits, fresh.eval(ids), rtol=1e-5, atol=1e-5)
        # diverging at position 7: keep 7, evaluate the rest
        other = ids[:7] + model.tokenize(" hello world", add_bos=False)
        before = s.n_evaluated
        logits = s.feed(other)
        assert s.n_evaluated - before == len(other) - 7
        assert s.tokens == other
        fresh.reset()
        np.testing.assert_allclose(logits, fresh.eval(other), rtol=1e-5, atol=1e-5)
        # the same prompt again: only its last token, whose logits are wanted
        before = s.n_evaluated
        s.feed(other)
        assert s.n_evaluated - before == 1


def test_second_chat_turn_does_not_reevaluate_the_history(model) -> None:
    with model.session() as s:
        msgs = [*conversation(6), {"role": "user", "content": "and what about feynman?"}]
        g = s.chat(msgs, 12, temperature=0)
        answer = "".join(g)
        first_prompt = model.chat_format.tokens(msgs, model.tokenizer.encode)
        assert s.n_evaluated == len(first_prompt) + len(g.tokens) - 1
        cached = list(s.tokens)

        msgs2 = [*msgs, {"role": "assistant", "content": answer}, {"role": "user", "content": "thanks"}]
        second_prompt = model.chat_format.tokens(msgs2, model.tokenizer.encode)
        before = s.n_evaluated
        g2 = s.chat(msgs2, 1, temperature=0)  # one token: nothing is evaluated after the prompt
        "".join(g2)
        evaluated = s.n_evaluated - before
        reused = common_prefix_length(cached, second_prompt)
        assert reused >= len(first_prompt)  # the whole first prompt stayed in the cache
        assert evaluated == len(second_prompt) - reused
        assert evaluated < len(second_prompt) // 3


def test_generation_after_reuse_equals_generation_from_scratch(model) -> None:
    ids = model.tokenize(PROMPT)
    with model.session() as s, model.session() as fresh:
        s.feed(ids + model.tokenize(" something else entirely", add_bos=False))
        a = s.generate(ids, 16, temperature=0.9, seed=11)
        b = fresh.generate(ids, 16, temperature=0.9, seed=11)
        assert "".join(a) == "".join(b) and a.tokens == b.tokens


# --- the context policy --------------------------------------------------------------------


def test_overflow_is_a_clear_error(model_path: Path) -> None:
    with llama2.load(model_path, backend="cpu_f32", threads=1, n_ctx=64) as m:
        msgs = [*conversation(8), {"role": "user", "content": "one more"}]
        n = len(m.chat_format.tokens(msgs, m.tokenizer.encode))
        with pytest.raises(ContextOverflowError, match=f"{n} tokens .* holds 64") as info:
            m.chat(msgs)
        assert info.value.requested == n and info.value.capacity == 64
        with pytest.raises(ContextOverflowError, match="holds 64"):
            m.generate(PROMPT * 5)
        # the model's own session was given back: a fitting call still works
        assert "".join(m.generate("hello", 3, temperature=0)) is not None


def test_drop_oldest_keeps_the_system_prompt_and_the_last_turns(model_path: Path) -> None:
    with llama2.load(model_path, backend="cpu_f32", threads=1, n_ctx=128) as m:
        msgs = [*conversation(8), {"role": "user", "content": "one more"}]
        g = m.chat(msgs, 16, overflow="drop_oldest", temperature=0)
        "".join(g)
        kept = g.messages
        assert kept[0] == msgs[0] and kept[-1] == msgs[-1]
        assert kept[1:] == msgs[len(msgs) - len(kept) + 1 :]  # a tail of whole turns
        assert kept[1]["role"] == "user" and len(kept) < len(msgs)
        assert len(m.chat_format.tokens(kept, m.tokenizer.encode)) + 16 <= 128
        # one turn more would not have fit
        longer = [msgs[0], *msgs[len(msgs) - len(kept) - 1 :]]
        assert len(m.chat_format.tokens(longer, m.tokenizer.encode)) + 16 > 128
        # when even the last message cannot fit, the error still comes
        huge = [msgs[0], {"role": "user", "content": PROMPT * 6}]
        with pytest.raises(ContextOverflowError):
            m.chat(huge, overflow="drop_oldest")


def test_context_full_ends_generation(model) -> None:
    ids = model.tokenize(PROMPT)
    with model.session(n_ctx=len(ids) + 3) as s:
        g = s.generate(ids, 100, temperature=0)
        "".join(g)
        assert g.stop_reason is StopReason.CONTEXT_FULL
        assert len(g.tokens) == 4 and s.n_past == len(ids) + 3


# --- stop conditions -----------------------------------------------------------------------


def test_max_tokens(model) -> None:
    g = model.generate(PROMPT, 7, temperature=0)
    "".join(g)
    assert g.stop_reason is StopReason.MAX_TOKENS and len(g.tokens) == 7


def test_stop_string_across_tokens(model) -> None:
    with model.session() as s:
        g = s.generate(PROMPT, 40, temperature=0)
        full = "".join(g)
        pieces = [model.tokenizer.token_bytes(t).decode("utf-8", "replace") for t in g.tokens]
        # a stop string made of the end of one token and the start of the next
        k = next(i for i in range(5, len(pieces) - 1) if pieces[i] and pieces[i + 1] and pieces[i] != pieces[i + 1])
        start = sum(len(p) for p in pieces[:k]) + len(pieces[k]) - 1
        stop = full[start : start + 2]
        assert len(stop) == 2
        g2 = s.generate(PROMPT, 40, temperature=0, stop=["never appears", stop])
        text = "".join(g2)
        assert g2.stop_reason is StopReason.STOP
        assert text == full[: full.index(stop)]
        assert stop not in text


def test_eos_ends_generation(tmp_path: Path, model) -> None:
    # the same weights with the third greedy token declared the end of text
    ids = model.tokenize(PROMPT)
    greedy = model.session().generate(ids, 8, temperature=0)
    "".join(greedy)
    eos = greedy.tokens[2]
    tok = dataclasses.replace(synthetic_llama_tokenizer(HP.n_vocab), eos_id=eos)
    path = write_random_llama(tmp_path / "eos.gguf", HP, seed=3, tokenizer=tok)
    with llama2.load(path, backend="cpu_f32", threads=1, n_ctx=128) as m:
        g = m.generate(ids, 8, temperature=0)
        "".join(g)
        assert g.stop_reason is StopReason.EOS
        assert g.tokens == greedy.tokens[: greedy.tokens.index(eos)]


def test_cancel_from_another_thread(model) -> None:
    g = model.generate(PROMPT, 400, temperature=0.7, seed=1)
    got_three, resume = threading.Event(), threading.Event()
    seen: list[int] = []

    def consume() -> None:
        for _ in g:
            if len(g.tokens) >= 3 and not got_three.is_set():
                seen.append(len(g.tokens))
                got_three.set()
                resume.wait(10)

    t = threading.Thread(target=consume)
    t.start()
    assert got_three.wait(30)
    g.cancel()
    resume.set()
    t.join(30)
    assert not t.is_alive()
    assert g.stop_reason is StopReason.CANCELLED
    assert len(g.tokens) == seen[0]  # not one token after the cancel
    # the model's session is free again and keeps working
    g2 = model.generate(PROMPT, 3, temperature=0)
    "".join(g2)
    assert g2.stop_reason is StopReason.MAX_TOKENS


def test_cancel_event_and_close(model) -> None:
    ev = threading.Event()
    ev.set()
    g = model.generate(PROMPT, 10, cancel=ev)
    assert list(g) == [] and g.stop_reason is StopReason.CANCELLED
    g = model.generate(PROMPT, 10, temperature=0)
    next(iter(g), None)
    g.close()
    assert g.stop_reason is StopReason.CANCELLED
    g = model.generate(PROMPT, 10)  # never iterated
    g.close()
    g = model.generate(PROMPT, 2, temperature=0)
    assert "".join(g) is not None and g.stop_reason is StopReason.MAX_TOKENS


# --- many sessions, many threads -----------------------------------------------------------

JOBS = [
    ("the capital of france is", dict(temperature=0.9, seed=1)),
    ("richard feynman was a", dict(temperature=1.2, top_k=0, top_p=0.9, seed=2)),
    ("hello world, this is a model", dict(temperature=0.0)),
    ("the university of paris", dict(temperature=0.7, min_p=0.1, repeat_penalty=1.3, seed=4)),
]


def run_job(session, prompt: str, kwargs: dict) -> tuple[str, list[int]]:
    g = session.generate(prompt, 48, **kwargs)
    return "".join(g), g.tokens


def test_four_sessions_in_threads_match_one_by_one(model_path: Path) -> None:
    with llama2.load(model_path, backend="cpu_f32", threads=1, n_ctx=256) as m:
        sessions = [m.session() for _ in JOBS]
        alone = [run_job(s, p, kw) for s, (p, kw) in zip(sessions, JOBS, strict=True)]
        for s in sessions:
            s.reset()
        results: list[tuple[str, list[int]] | None] = [None] * len(JOBS)
        barrier = threading.Barrier(len(JOBS))

        def worker(i: int) -> None:
            barrier.wait()
            results[i] = run_job(sessions[i], *JOBS[i])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(JOBS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == alone
        assert len({tuple(tokens) for _, tokens in alone}) == len(JOBS)  # four different streams
        # Model.generate from four threads: one borrows the model's session, three get their own
        results = [None] * len(JOBS)

        def model_worker(i: int) -> None:
            barrier.wait()
            g = m.generate(JOBS[i][0], 48, **JOBS[i][1])
            results[i] = ("".join(g), g.tokens)

        threads = [threading.Thread(target=model_worker, args=(i,)) for i in range(len(JOBS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results == alone
        for s in sessions:
            s.close()


# --- chat templates through the model ------------------------------------------------------


def test_apply_chat_template_builtin_and_jinja(model, tmp_path: Path) -> None:
    msgs = [*conversation(1), {"role": "user", "content": "and then?"}]
    assert model.chat_template is None
    assert model.apply_chat_template(msgs) == llama2_chat_text(msgs)
    path = write_random_llama(tmp_path / "chatml.gguf", HP, seed=3, chat_template=CHATML)
    with llama2.load(path, backend="cpu_f32", threads=1, n_ctx=256) as m:
        text = m.apply_chat_template(msgs)
        assert text.startswith("<|im_start|>system\nyou are") and text.endswith("<|im_start|>assistant\n")
        assert not m.apply_chat_template(msgs, add_generation_prompt=False).endswith("assistant\n")
        g = m.chat(msgs, 4, temperature=0)
        "".join(g)
        assert g.stop_reason is StopReason.MAX_TOKENS


def test_smollm2_chat_answers_with_its_template(smollm2_path: Path) -> None:
    with llama2.load(smollm2_path, backend="cpu_f32", n_ctx=512) as m:
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        assert m.apply_chat_template(msgs).endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                                                     "<|im_start|>assistant\n")
        g = m.chat(msgs, 48, temperature=0)
        answer = "".join(g)
        assert "Paris" in answer
        assert g.stop_reason is StopReason.EOS  # <|im_end|> ends the turn
        assert "<|im_end|>" not in answer
