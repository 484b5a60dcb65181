"""The Gradio app: a streaming chat over the models of a catalog, one runtime session per user.

Users are told apart by Gradio's session hash (one per page load, one per
gradio_client Client). Each user has their own KV cache per model (kept in the
ModelCache, so weights are shared) and their own stop switch; the page's
settings live in the browser (gr.BrowserState) and arrive with every request.

Endpoints for scripts (gradio_client): /chat (message in, answer out, the
conversation kept per client), /respond (the page's own turn: history and
settings in, history and stats line out), /stop, /clear, /set_model and
/set_backend (load, with a status line).
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gradio as gr

from llama2.default_model import cache_dir
from llama2.errors import BackendUnavailableError, ContextOverflowError, Llama2Error
from llama2.system import physical_cores

from .catalog import BackendChoice, ModelEntry, backend_choices
from .model_cache import ModelCache
from .settings import SAMPLER_CONTROLS, SAMPLERS, Settings
from .turns import Message, TurnStats, chat_turn, conversation

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_IDLE_SECONDS = 3600  # a user silent this long (an API client that went away) has its caches freed
GENERATE = "generate"  # concurrency group of every event that runs the model


def default_concurrency() -> int:
    """Turns that run at once; the rest wait in Gradio's queue.

    Two at least, so one long answer never blocks every other user; beyond
    that one per four cores, each turn getting an equal share of the cores.
    """
    return max(2, physical_cores() // 4)


# --- users -----------------------------------------------------------------------------------------------


@dataclass
class User:
    id: str
    lock: threading.Lock = field(default_factory=threading.Lock)  # one turn at a time per user
    cancel: threading.Event = field(default_factory=threading.Event)  # the running turn's stop switch
    api_history: list[Message] = field(default_factory=list)  # the /chat endpoint's conversation
    last_seen: float = field(default_factory=time.monotonic)


class Users:
    def __init__(self, cache: ModelCache) -> None:
        self._cache = cache
        self._users: dict[str, User] = {}
        self._lock = threading.Lock()

    def get(self, request: gr.Request | None) -> User:
        uid = (request.session_hash if request is not None else None) or "anonymous"
        now = time.monotonic()
        with self._lock:
            idle = [u for u in self._users.values() if now - u.last_seen > USER_IDLE_SECONDS and u.id != uid]
            user = self._users.get(uid)
            if user is None:
                user = self._users[uid] = User(uid)
            user.last_seen = now
        for u in idle:
            self.drop(u.id)
        return user

    def drop(self, uid: str) -> None:
        with self._lock:
            user = self._users.pop(uid, None)
        if user is not None:
            user.cancel.set()
        self._cache.drop_user(uid)


# --- helpers ---------------------------------------------------------------------------------------------


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message whatever shape Gradio gave it (a string or a list of content parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def plain_history(history: Sequence[dict[str, Any]] | None) -> list[Message]:
    return [{"role": m["role"], "content": message_text(m)} for m in history or []
            if m.get("role") in ("user", "assistant")]


def friendly_error(exc: BaseException) -> str:
    """One sentence for the page; the traceback goes to the terminal only."""
    if isinstance(exc, ContextOverflowError):
        return f"The context is full: {exc}"
    if isinstance(exc, (Llama2Error, ValueError, FileNotFoundError)):
        return str(exc)
    return f"Something went wrong ({type(exc).__name__}: {exc}); the app keeps running."


def browser_secret() -> str:
    """A key kept in the cache folder, so settings saved in a browser survive a restart of the app."""
    path = cache_dir() / "webui-secret"
    try:
        return path.read_text().strip()
    except OSError:
        pass
    secret = secrets.token_hex(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(secret)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return secret


def stream_in_thread(produce: Callable[[threading.Event], Iterator[T]], user: User) -> Iterator[T]:
    """Run produce() in its own thread and pass its items on as they come.

    The thread holds the user's lock, so a user's turns never overlap on their
    KV cache; a dedicated thread also gives each turn its own OpenMP team,
    freed when the turn ends. If the consumer goes away (the page closed), the
    turn is told to stop.
    """
    items: queue.Queue[tuple[str, Any]] = queue.Queue()
    cancel = threading.Event()

    def work() -> None:
        try:
            with user.lock:
                user.cancel = cancel
                for item in produce(cancel):
                    items.put(("item", item))
        except BaseException as exc:
            items.put(("error", exc))
        finally:
            items.put(("done", None))

    threading.Thread(target=work, name=f"turn-{user.id[:8]}", daemon=True).start()
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        cancel.set()


# --- the app ---------------------------------------------------------------------------------------------


class ChatApp:
    def __init__(self, models: Sequence[ModelEntry], cache: ModelCache, concurrency: int | None = None) -> None:
        if not models:
            raise ValueError("no models to serve")
        self.models = list(models)
        self.cache = cache
        self.concurrency = concurrency or default_concurrency()
        self.users = Users(cache)

    # --- lookups ------------------------------------------------------------
    def entry(self, path: str) -> ModelEntry:
        if not path:
            return self.models[0]
        for e in self.models:
            if str(e.path) == path:
                return e
        raise ValueError(f"unknown model {path!r}; choose one from the list")

    def backend_for(self, entry: ModelEntry, wanted: str) -> str:
        """The backend to run entry on: wanted, or the model's default when wanted is ""."""
        choices = backend_choices(entry)
        usable = [c.name for c in choices if c.usable]
        if wanted:
            if wanted in usable:
                return wanted
            why = next((c.note for c in choices if c.name == wanted), "no backend of that name is installed")
            raise BackendUnavailableError(f"backend {wanted} cannot run here: {why}")
        if entry.default_backend in usable:
            return entry.default_backend
        if usable:
            return usable[0]
        reasons = "; ".join(f"{c.name}: {c.note}" for c in choices) or "none is installed"
        raise BackendUnavailableError(f"no backend can run {entry.label} here ({reasons})")

    # --- turns --------------------------------------------------------------
    def turn(self, user: User, settings: Settings, history: list[Message], message: str
             ) -> Iterator[tuple[str, TurnStats]]:
        """Stream (answer so far, stats) for one user turn, in its own thread."""
        settings.validate()
        entry = self.entry(settings.model)
        backend = self.backend_for(entry, settings.backend)
        messages = conversation(history, message, settings.system_prompt)

        def produce(cancel: threading.Event) -> Iterator[tuple[str, TurnStats]]:
            with self.cache.session(entry.path, backend, user.id) as (model, session):
                yield from chat_turn(model, session, messages, settings.sampling(), settings.max_new_tokens,
                                     cancel, label=entry.label)

        return stream_in_thread(produce, user)

    def respond(self, message: str, history: list[dict[str, Any]] | None, model: str = "", backend: str = "",
                sampler: str = Settings.sampler, temperature: float = Settings.temperature,
                top_k: int = Settings.top_k, top_p: float = Settings.top_p, min_p: float = Settings.min_p,
                max_new_tokens: int = Settings.max_new_tokens,
                repetition_penalty: float = Settings.repetition_penalty, seed: int = Settings.seed,
                system_prompt: str = "", request: gr.Request | None = None
                ) -> Iterator[tuple[list[dict[str, Any]], str, str]]:
        """The page's turn: yields (chat history, stats line, message box)."""
        user = self.users.get(request)
        chat = plain_history(history)
        message = (message or "").strip()
        if not message:
            yield chat, "Type a message first.", ""
            return
        try:
            settings = Settings.from_dict(dict(
                model=model, backend=backend, sampler=sampler, temperature=temperature, top_k=top_k, top_p=top_p,
                min_p=min_p, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, seed=seed,
                system_prompt=system_prompt))
            settings.validate()
        except ValueError as exc:
            yield chat, f"**Error:** {exc}", message
            return
        chat.append({"role": "user", "content": message})
        chat.append({"role": "assistant", "content": ""})
        yield chat, "…", ""
        try:
            for answer, stats in self.turn(user, settings, chat[:-2], message):
                chat[-1]["content"] = answer
                yield chat, stats.line(), ""
        except Exception as exc:
            self.log_error(exc)
            if chat[-1]["content"]:
                yield chat, f"**Error:** {friendly_error(exc)}", ""
            else:  # nothing was answered: the message goes back to the box, to send again
                yield chat[:-2], f"**Error:** {friendly_error(exc)}", message

    @staticmethod
    def take_last_question(history: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], str]:
        """For regenerate: the history before the last user message, and that message (to send again)."""
        chat = plain_history(history)
        while chat and chat[-1]["role"] == "assistant":
            chat.pop()
        if not chat:
            return [], ""
        return chat[:-1], chat[-1]["content"]

    def stop(self, request: gr.Request) -> None:
        self.users.get(request).cancel.set()

    def clear(self, request: gr.Request) -> tuple[list[dict[str, Any]], str]:
        self.users.get(request).api_history.clear()
        return [], ""

    def leave(self, request: gr.Request) -> None:
        self.users.drop(request.session_hash or "anonymous")

    def chat_api(self, message: str, system_prompt: str = "", sampler: str = "top-p", temperature: float = 0.7,
                 max_new_tokens: int = 256, seed: int = -1, model: str = "", backend: str = "",
                 request: gr.Request = None) -> str:  # type: ignore[assignment]
        """Send a message and get the assistant's answer; the conversation continues across calls of one client
        (/clear starts over). model: a model path (see /set_model), "" = the first; backend: "" = the best."""
        user = self.users.get(request)
        settings = Settings(model=model, backend=backend, sampler=sampler, temperature=temperature,
                            max_new_tokens=max_new_tokens, seed=seed, system_prompt=system_prompt)
        answer = ""
        try:
            for text, _ in self.turn(user, settings, user.api_history, message):
                answer = text
        except Exception as exc:
            self.log_error(exc)
            raise gr.Error(friendly_error(exc)) from None
        user.api_history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer}]
        return answer

    # --- model and backend switching ----------------------------------------
    def backend_update(self, entry: ModelEntry, wanted: str) -> tuple[dict[str, Any], str]:
        """The backend dropdown for a model, and the line that names the unusable backends and why."""
        choices = backend_choices(entry)
        usable = [(c.label, c.name) for c in choices if c.usable]
        value = wanted if wanted in [name for _, name in usable] else None
        if value is None:
            try:
                value = self.backend_for(entry, "")
            except Llama2Error:
                value = None
        return gr.update(choices=usable, value=value), unusable_line(choices)

    def switch(self, model: str, backend: str) -> Iterator[tuple[dict[str, Any], str, str]]:
        """Load the chosen model on the chosen backend; yields (backend dropdown, unusable line, status)."""
        try:
            entry = self.entry(model)
            dropdown, unusable = self.backend_update(entry, backend)
            name = dropdown["value"] or self.backend_for(entry, "")  # raises, saying why none is usable
        except Exception as exc:
            self.log_error(exc)
            yield gr.update(), "", f"**Error:** {friendly_error(exc)}"
            return
        if not self.cache.is_loaded(entry.path, name):
            yield dropdown, unusable, f"Loading {entry.label} on {name}…"
        t0 = time.perf_counter()
        try:
            m = self.cache.get(entry.path, name)
        except Exception as exc:
            self.log_error(exc)
            yield dropdown, unusable, f"**Error:** {name} could not load {entry.label}: {friendly_error(exc)}"
            return
        took = time.perf_counter() - t0
        when = f"loaded in {took:.1f} s" if took > 0.05 else "already loaded"
        yield dropdown, unusable, f"Ready: {entry.label} on {name} · {m.native.memory_bytes / 2**20:.0f} MiB · {when}"

    # --- settings -----------------------------------------------------------
    SETTINGS_FIELDS = ("model", "backend", "sampler", "temperature", "top_k", "top_p", "min_p", "max_new_tokens",
                       "repetition_penalty", "seed", "system_prompt")

    def restore(self, stored: Any) -> tuple[Any, ...]:
        """The page's controls from what the browser stored (defaults where nothing valid is stored)."""
        s = Settings.from_dict(stored)
        try:
            entry = self.entry(s.model)
        except ValueError:
            entry = self.models[0]
        s.model = str(entry.path)
        dropdown, unusable = self.backend_update(entry, s.backend)
        values = [getattr(s, f) for f in self.SETTINGS_FIELDS]
        values[1] = dropdown
        return (*values, unusable, *sampler_visibility(s.sampler))

    def save(self, *values: Any) -> dict[str, Any]:
        return Settings.from_dict(dict(zip(self.SETTINGS_FIELDS, values, strict=True))).to_dict()

    @staticmethod
    def log_error(exc: BaseException) -> None:
        if isinstance(exc, (Llama2Error, ValueError)):
            log.warning("%s", exc)
        else:
            log.exception("unexpected error", exc_info=exc)

    # --- the page -----------------------------------------------------------
    def build(self) -> gr.Blocks:
        first = self.models[0]
        defaults = Settings(model=str(first.path))
        with gr.Blocks(title="llama2 chat") as demo:
            stored = gr.BrowserState(defaults.to_dict(), storage_key="llama2-webui-settings",
                                     secret=browser_secret())
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    gr.Markdown("## llama2 chat", elem_id="title")
                    chatbot = gr.Chatbot(elem_id="chatbot", height=460, label="Chat", buttons=["copy"],
                                         placeholder="Ask anything. Answers stream as they are generated.")
                    stats = gr.Markdown("", elem_id="stats")
                    with gr.Row():
                        message = gr.Textbox(placeholder="Message…", show_label=False, scale=8, elem_id="message",
                                             autofocus=True, lines=1, max_lines=6)
                        send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                        stop = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="stop")
                    with gr.Row():
                        regen = gr.Button("Regenerate", size="sm", elem_id="regenerate")
                        clear = gr.Button("Clear", size="sm", elem_id="clear")
                with gr.Column(scale=1, min_width=280):
                    model = gr.Dropdown([(e.label, str(e.path)) for e in self.models], value=str(first.path),
                                        label="Model", elem_id="model")
                    first_backends, first_unusable = self.backend_update(first, "")
                    backend = gr.Dropdown(first_backends["choices"], value=first_backends["value"], label="Backend",
                                          elem_id="backend")
                    unusable = gr.Markdown(first_unusable, elem_id="unusable")
                    status = gr.Markdown("", elem_id="status")
                    sampler = gr.Radio(list(SAMPLERS), value=defaults.sampler, label="Sampler", elem_id="sampler")
                    temperature = gr.Slider(0.05, 2.0, value=defaults.temperature, step=0.05, label="Temperature",
                                            elem_id="temperature")
                    top_k = gr.Slider(1, 200, value=defaults.top_k, step=1, label="Top-k", elem_id="top_k")
                    top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.01, label="Top-p", elem_id="top_p")
                    min_p = gr.Slider(0.0, 0.5, value=defaults.min_p, step=0.01, label="Min-p", elem_id="min_p")
                    seed = gr.Number(defaults.seed, precision=0, label="Seed (-1: random)", elem_id="seed")
                    max_new = gr.Slider(1, 2048, value=defaults.max_new_tokens, step=1, label="Max new tokens",
                                        elem_id="max_new_tokens")
                    rep = gr.Slider(1.0, 2.0, value=defaults.repetition_penalty, step=0.01,
                                    label="Repetition penalty", elem_id="repetition_penalty")
                    system = gr.Textbox(defaults.system_prompt, label="System prompt", lines=3,
                                        placeholder="(the model's own default)", elem_id="system_prompt")

            controls = [model, backend, sampler, temperature, top_k, top_p, min_p, max_new, rep, seed, system]
            assert [c.elem_id for c in controls] == list(self.SETTINGS_FIELDS)
            hideable = [temperature, top_k, top_p, min_p, seed]
            gen = {"concurrency_id": GENERATE, "concurrency_limit": self.concurrency}

            submit_args = {"fn": self.respond, "inputs": [message, chatbot, *controls],
                           "outputs": [chatbot, stats, message], "show_progress": "hidden", **gen}
            message.submit(api_name="respond_on_enter", api_visibility="private", **submit_args)
            send.click(api_name="respond", **submit_args)
            # regenerate: take the last question off the chat, then answer it as if just sent
            question = gr.State("")
            for trigger in (regen.click, chatbot.retry):
                trigger(self.take_last_question, chatbot, [chatbot, question], api_visibility="private",
                        queue=False, show_progress="hidden").then(
                    fn=self.respond, inputs=[question, chatbot, *controls], outputs=[chatbot, stats, message],
                    show_progress="hidden", api_visibility="private", **gen)
            stop.click(self.stop, None, None, api_name="stop", queue=False)
            clear.click(self.clear, None, [chatbot, stats], api_name="clear", queue=False)
            chatbot.clear(self.clear, None, [chatbot, stats], api_name="clear_chatbot", api_visibility="private",
                          queue=False)

            switch_out = [backend, unusable, status]
            model.input(self.switch, [model, backend], switch_out, api_name="set_model",
                        concurrency_id="load", concurrency_limit=1, show_progress="hidden")
            backend.input(self.switch, [model, backend], switch_out, api_name="set_backend",
                          concurrency_id="load", concurrency_limit=1, show_progress="hidden")
            sampler.change(sampler_visibility, sampler, hideable, api_visibility="private", queue=False,
                           show_progress="hidden")
            gr.on([c.change for c in controls], self.save, controls, stored, api_visibility="private",
                  queue=False, show_progress="hidden")
            demo.load(self.restore, stored, [*controls, unusable, *hideable], api_visibility="private",
                      show_progress="hidden").then(
                self.switch, [model, backend], switch_out, api_visibility="private", concurrency_id="load",
                concurrency_limit=1, show_progress="hidden")
            demo.unload(self.leave)
            gr.api(self.chat_api, api_name="chat", **gen)
        return demo


def sampler_visibility(sampler: str) -> list[dict[str, Any]]:
    """Show the controls the sampler uses: temperature, top_k, top_p, min_p, seed."""
    used = SAMPLER_CONTROLS.get(sampler, frozenset())
    return [gr.update(visible=name in used) for name in ("temperature", "top_k", "top_p", "min_p", "seed")]


def unusable_line(choices: Sequence[BackendChoice]) -> str:
    bad = [c for c in choices if not c.usable]
    return "" if not bad else "Not usable here: " + "; ".join(f"`{c.name}`: {c.note}" for c in bad)


def launch(app: ChatApp, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           auth: tuple[str, str] | None = None, prevent_thread_lock: bool = False, quiet: bool = False
           ) -> tuple[gr.Blocks, str]:
    """Build and start the app; returns (the Blocks, its local URL)."""
    demo = app.build()
    demo.queue(default_concurrency_limit=app.concurrency)
    _, url, _ = demo.launch(server_name=host, server_port=port, share=share, auth=auth,
                            prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=False,
                            footer_links=["api"])
    return demo, url


def parse_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth takes user:password")
    return user, password
