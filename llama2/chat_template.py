"""Chat messages to prompt: the model's own Jinja template, or LLaMA-2's format built in.

Messages are OpenAI-shaped: `[{"role": "system" | "user" | "assistant", "content": str}]`.

- A file with `tokenizer.chat_template` is rendered by that template, as
  Hugging Face does (same sandbox, same globals), to text; the text is then
  tokenized with special-token strings such as `<|im_start|>` mapped to their ids.
- A file without one gets LLaMA-2's chat format exactly as Meta's
  `chat_completion` builds it, as token ids: BOS and EOS are ids around each
  exchange, never text a user could forge or the tokenizer could split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

from .errors import ChatTemplateError

Message = Mapping[str, Any]

# Meta's markers (llama/generation.py)
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


# --- the model's Jinja template ------------------------------------------------------------


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the messages: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Hugging Face's tojson: unlike Jinja's, it does not escape HTML characters
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    # the environment Hugging Face's apply_chat_template uses, so templates written for it render alike
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the chat template does not parse (line {exc.lineno}): {exc.message}") from exc


def render_jinja(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """Render messages with a Jinja chat template in an immutable sandbox."""
    compiled = _compile(template)
    try:
        return compiled.render(
            messages=[dict(m) for m in messages],
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            **extra,
        )
    except ChatTemplateError:
        raise
    except jinja2.sandbox.SecurityError as exc:
        raise ChatTemplateError(f"the chat template tried an unsafe operation: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template failed: {exc}") from exc


# --- LLaMA-2's chat format -----------------------------------------------------------------


def _content(message: Message) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI's content parts; only text has a meaning here
        texts = [p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
        if len(texts) == len(content):
            return "".join(texts)
    raise ChatTemplateError(f"message content must be text, got {type(content).__name__}")


def llama2_exchanges(messages: Sequence[Message]) -> list[tuple[str, str | None]]:
    """(user, answer) text pairs in Meta's construction; answer None for the open last turn.

    The system prompt goes inside the first user turn; roles must then alternate
    user, assistant, user, ...
    """
    turns = [(str(m.get("role")), _content(m)) for m in messages]
    if turns and turns[0][0] == "system":
        if len(turns) < 2:
            # Meta's code needs a user turn to carry the system prompt; so do we
            raise ChatTemplateError("a system prompt needs a user message after it")
        turns = [(turns[1][0], B_SYS + turns[0][1] + E_SYS + turns[1][1]), *turns[2:]]
    if not turns:
        raise ChatTemplateError("no messages to render")
    for i, (role, _) in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            where = "after the system prompt, " if messages[0].get("role") == "system" else ""
            raise ChatTemplateError(
                f"LLaMA-2's chat format needs {where}alternating user and assistant messages starting "
                f"with user; message {i + (len(messages) - len(turns))} is {role!r} where {want!r} belongs"
            )
    pairs: list[tuple[str, str | None]] = []
    for i in range(0, len(turns), 2):
        answer = turns[i + 1][1] if i + 1 < len(turns) else None
        pairs.append((turns[i][1], answer))
    return pairs


def _exchange_text(user: str, answer: str | None) -> str:
    if answer is None:
        return f"{B_INST} {user.strip()} {E_INST}"
    return f"{B_INST} {user.strip()} {E_INST} {answer.strip()} "


def llama2_chat_tokens(
    messages: Sequence[Message], tokenize: Callable[[str], list[int]], bos_id: int, eos_id: int
) -> list[int]:
    """Prompt token ids in LLaMA-2's format; tokenize must add no BOS and parse no special text."""
    ids: list[int] = []
    for user, answer in llama2_exchanges(messages):
        ids += [bos_id, *tokenize(_exchange_text(user, answer))]
        if answer is not None:
            ids.append(eos_id)
    return ids


def llama2_chat_text(messages: Sequence[Message], bos_token: str = "<s>", eos_token: str = "</s>") -> str:
    """The same prompt as text, BOS and EOS written as their token strings (for display)."""
    out = []
    for user, answer in llama2_exchanges(messages):
        out.append(bos_token + _exchange_text(user, answer) + (eos_token if answer is not None else ""))
    return "".join(out)


# --- one model's chat format ---------------------------------------------------------------


class ChatFormat:
    """How one model turns messages into a prompt: its Jinja template, else LLaMA-2's format."""

    def __init__(
        self,
        template: str | None,
        *,
        bos_token: str,
        eos_token: str,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
    ) -> None:
        self.template = template or None
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id, self.eos_id = bos_id, eos_id
        self.add_bos = add_bos
        if self.template is None and (bos_id is None or eos_id is None):
            raise ChatTemplateError("the model has no chat template and no BOS/EOS tokens for LLaMA-2's format")
        if self.template is not None:
            _compile(self.template)  # a broken template fails at load, not at the first message

    @classmethod
    def for_tokenizer(cls, template: str | None, tokenizer: Any) -> ChatFormat:
        """The format for a model with this template (None: LLaMA-2's) and tokenizer."""
        tokens = tokenizer.tokens

        def text(i: int | None) -> str:
            return tokens[i] if i is not None else ""

        return cls(template, bos_token=text(tokenizer.bos_id), eos_token=text(tokenizer.eos_id),
                   bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, add_bos=tokenizer.add_bos)

    @property
    def builtin(self) -> bool:
        return self.template is None

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt as text (with LLaMA-2's format, add_generation_prompt changes nothing:
        a conversation ending in a user turn is always left open for the answer)."""
        if self.template is None:
            return llama2_chat_text(messages, self.bos_token, self.eos_token)
        return render_jinja(
            self.template,
            messages,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            add_generation_prompt=add_generation_prompt,
            **extra,
        )

    def tokens(
        self,
        messages: Sequence[Message],
        encode: Callable[..., list[int]],
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> list[int]:
        """The prompt as token ids; encode is Tokenizer.encode(text, add_bos=, parse_special=)."""
        if self.template is None:
            assert self.bos_id is not None and self.eos_id is not None  # checked in __init__
            return llama2_chat_tokens(
                messages, lambda s: encode(s, add_bos=False, parse_special=False), self.bos_id, self.eos_id
            )
        text = self.render(messages, add_generation_prompt, **extra)
        # a template that writes bos_token itself gets no second BOS
        add_bos = self.add_bos and not (self.bos_token and text.startswith(self.bos_token))
        return encode(text, add_bos=add_bos, parse_special=True)
