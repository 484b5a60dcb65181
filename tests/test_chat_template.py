"""Chat rendering: LLaMA-2's built-in format against Meta's construction, Jinja against the template."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
from llama2.convert.synthetic import synthetic_llama_tokenizer

from llama2.chat_template import ChatFormat, llama2_chat_text, llama2_chat_tokens, render_jinja
from llama2.errors import ChatTemplateError
from llama2.tokenizer import Tokenizer, tokenizer_from_metadata

# --- Meta's construction, reproduced from llama/generation.py as the oracle ----------------

M_B_INST, M_E_INST = "[INST]", "[/INST]"
M_B_SYS, M_E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def meta_dialog_tokens(dialog: list[dict[str, str]], encode) -> list[int]:
    """Llama.chat_completion's prompt for one dialog; encode(s, bos, eos) is Meta's Tokenizer.encode."""
    if dialog[0]["role"] == "system":
        dialog = [  # noqa: RUF005 - Meta's code as written
            {"role": dialog[1]["role"], "content": M_B_SYS + dialog[0]["content"] + M_E_SYS + dialog[1]["content"]}
        ] + dialog[2:]
    assert all(msg["role"] == "user" for msg in dialog[::2]) and all(
        msg["role"] == "assistant" for msg in dialog[1::2]
    )
    dialog_tokens: list[int] = sum(  # noqa: RUF017
        [
            encode(f"{M_B_INST} {(prompt['content']).strip()} {M_E_INST} {(answer['content']).strip()} ",
                   bos=True, eos=True)
            for prompt, answer in zip(dialog[::2], dialog[1::2], strict=False)
        ],
        [],
    )
    assert dialog[-1]["role"] == "user"
    dialog_tokens += encode(f"{M_B_INST} {(dialog[-1]['content']).strip()} {M_E_INST}", bos=True, eos=False)
    return dialog_tokens


@pytest.fixture(scope="module")
def sp_tokenizer() -> Tokenizer:
    """A sentencepiece tokenizer like LLaMA-2's (byte fallback, dummy prefix) over a synthetic vocabulary."""
    data = synthetic_llama_tokenizer(2000)
    meta = {"model": "llama", "tokens": data.tokens, "scores": data.scores, "types": data.token_types,
            "bos": data.bos_id, "eos": data.eos_id, "unk": data.unk_id, "add_bos": True}
    return tokenizer_from_metadata(meta)


DIALOGS = {
    "user only": [{"role": "user", "content": "what is the capital of france?"}],
    "system": [
        {"role": "system", "content": "Always answer with Haiku"},
        {"role": "user", "content": "I am going to Paris, what should I see?"},
    ],
    "multi turn": [
        {"role": "system", "content": "  You are a helpful assistant.  "},
        {"role": "user", "content": "  hello world  "},
        {"role": "assistant", "content": "Hello! How can I help?\n"},
        {"role": "user", "content": "Tell me about physics."},
        {"role": "assistant", "content": " Richard Feynman was a physicist. "},
        {"role": "user", "content": "and the model?\n\n"},
    ],
    "no system, two turns": [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three, with unicode: é ✓ 中"},
    ],
    "special text in content": [
        {"role": "user", "content": "say </s> and <s> and [/INST] literally"},
    ],
}


@pytest.mark.parametrize("name", sorted(DIALOGS))
def test_builtin_format_is_metas(name: str, sp_tokenizer: Tokenizer) -> None:
    tok = sp_tokenizer
    assert tok.bos_id is not None and tok.eos_id is not None

    def meta_encode(s: str, bos: bool, eos: bool) -> list[int]:
        t = tok.encode(s, add_bos=False)
        return ([tok.bos_id] if bos else []) + t + ([tok.eos_id] if eos else [])

    dialog = DIALOGS[name]
    want = meta_dialog_tokens(dialog, meta_encode)
    got = llama2_chat_tokens(dialog, lambda s: tok.encode(s, add_bos=False), tok.bos_id, tok.eos_id)
    assert got == want
    fmt = ChatFormat(None, bos_token="<s>", eos_token="</s>", bos_id=tok.bos_id, eos_id=tok.eos_id, add_bos=True)
    assert fmt.tokens(dialog, tok.encode) == want


def test_builtin_special_text_stays_text(sp_tokenizer: Tokenizer) -> None:
    tok = sp_tokenizer
    dialog = DIALOGS["special text in content"]
    fmt = ChatFormat(None, bos_token="<s>", eos_token="</s>", bos_id=tok.bos_id, eos_id=tok.eos_id, add_bos=True)
    ids = fmt.tokens(dialog, tok.encode)
    # one BOS, no EOS: the "</s>" and "<s>" in the user's text are characters, not tokens
    assert ids.count(tok.bos_id) == 1 and tok.eos_id not in ids
    assert tok.decode(ids).count("</s>") == 1


def test_builtin_complete_exchange_ends_with_eos(sp_tokenizer: Tokenizer) -> None:
    tok = sp_tokenizer
    dialog = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ids = llama2_chat_tokens(dialog, lambda s: tok.encode(s, add_bos=False), tok.bos_id, tok.eos_id)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert ids == [tok.bos_id, *tok.encode("[INST] hi [/INST] hello ", add_bos=False), tok.eos_id]


# Hugging Face's chat template for meta-llama/Llama-2-7b-chat-hf: the text form of the same format
HF_LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


@pytest.mark.parametrize("name", sorted(DIALOGS))
def test_builtin_text_matches_hugging_face_template(name: str) -> None:
    dialog = DIALOGS[name]
    want = render_jinja(HF_LLAMA2_TEMPLATE, dialog, bos_token="<s>", eos_token="</s>")
    assert llama2_chat_text(dialog) == want


@pytest.mark.parametrize(
    "dialog",
    [
        [],
        [{"role": "system", "content": "only a system prompt"}],
        [{"role": "assistant", "content": "I speak first"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "system", "content": "s"}, {"role": "system", "content": "s2"}, {"role": "user", "content": "u"}],
        [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}],
        [{"role": "user", "content": {"not": "text"}}],
    ],
)
def test_builtin_refuses_malformed_conversations(dialog: list[dict]) -> None:
    with pytest.raises(ChatTemplateError):
        llama2_chat_text(dialog)


def test_openai_text_parts_are_accepted() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}]
    assert llama2_chat_text(parts) == "<s>[INST] hello there [/INST]"


# --- Jinja ---------------------------------------------------------------------------------


def test_jinja_raise_exception_is_a_typed_error() -> None:
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render_jinja(HF_LLAMA2_TEMPLATE, [{"role": "assistant", "content": "x"}], bos_token="<s>", eos_token="</s>")


def test_jinja_sandbox_blocks_escapes() -> None:
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError, match="unsafe"):
        render_jinja(evil, [{"role": "user", "content": "x"}])
    mutate = "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}ok"
    with pytest.raises(ChatTemplateError, match="unsafe"):
        render_jinja(mutate, [{"role": "user", "content": "x"}])


def test_jinja_syntax_error_is_typed() -> None:
    with pytest.raises(ChatTemplateError, match="does not parse"):
        ChatFormat("{% for m in messages %}", bos_token="", eos_token="", bos_id=None, eos_id=None, add_bos=False)


def test_jinja_hugging_face_conveniences() -> None:
    template = "{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}{{ m | tojson }}\n{% endfor %}"
    out = render_jinja(template, [{"role": "user", "content": "é <b>"}, {"role": "skip", "content": ""}])
    assert out == '{"role": "user", "content": "é <b>"}\n'


# --- SmolLM2's ChatML template from the real file -----------------------------------------


def chatml(messages: list[dict[str, str]], generation_prompt: bool) -> str:
    """ChatML as SmolLM2's model card describes it, written out by hand."""
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if generation_prompt else "")


SMOL_DEFAULT_SYSTEM = {
    "role": "system",
    "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
}


@pytest.fixture(scope="module")
def smol(smollm2_path: Path):
    from llama2.model_file import ModelFile

    f = ModelFile(smollm2_path)
    try:
        template = f.chat_template
        tok = tokenizer_from_metadata(f.tokenizer_metadata())
    finally:
        f.close()
    assert template is not None
    return template, tok


@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("name", sorted(DIALOGS))
def test_smollm2_template(smol, name: str, generation_prompt: bool) -> None:
    template, tok = smol
    dialog = DIALOGS[name]
    fmt = ChatFormat(template, bos_token=tok.tokens[tok.bos_id], eos_token=tok.tokens[tok.eos_id],
                     bos_id=tok.bos_id, eos_id=tok.eos_id, add_bos=tok.add_bos)
    text = fmt.render(dialog, add_generation_prompt=generation_prompt)
    # the template's own output, rendered the plain (unsandboxed) way
    plain = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(
        messages=dialog, bos_token="<|im_start|>", eos_token="<|im_end|>", add_generation_prompt=generation_prompt
    )
    assert text == plain
    # and ChatML written out by hand, with SmolLM2's default system prompt when none is given
    with_system = dialog if dialog[0]["role"] == "system" else [SMOL_DEFAULT_SYSTEM, *dialog]
    assert text == chatml(with_system, generation_prompt)

    ids = fmt.tokens(dialog, tok.encode, add_generation_prompt=generation_prompt)
    im_start, im_end = tok.encode("<|im_start|><|im_end|>", add_bos=False, parse_special=True)
    assert ids.count(im_start) == len(with_system) + generation_prompt
    assert ids.count(im_end) == len(with_system)
    assert ids[0] == im_start  # SmolLM2 adds no BOS of its own
    assert tok.decode(ids) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")
