"""The web UI: launched for real and driven through gradio_client, plus its parts on their own."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest
from llama2.webui.app import ChatApp, friendly_error, launch, message_text, parse_auth, plain_history
from llama2.webui.catalog import backend_choices, find_models
from llama2.webui.commands import parse_size
from llama2.webui.default_models import quantized_copy_path
from llama2.webui.model_cache import ModelCache
from llama2.webui.settings import Settings

gradio_client = pytest.importorskip("gradio_client")

STATS = re.compile(r"(\d+) tokens · (?:[\d.]+|–) tokens/s · first token [\d.]+ s · "
                   r"prompt (\d+) tokens \((\d+) cached\)")
N_CTX = 512  # small, so that the context-full test is quick


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smollm2_path: Path):
    models = find_models([smollm2_path])
    cache = ModelCache(threads=1, n_ctx=N_CTX)
    app = ChatApp(models, cache, concurrency=2)
    demo, url = launch(app, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield app, url
    demo.close()
    cache.close()


def client(url: str) -> gradio_client.Client:
    return gradio_client.Client(url, verbose=False)


def respond(c: gradio_client.Client, message: str, **settings: object) -> tuple[str, str]:
    """One page turn through the API: (the answer, the stats line)."""
    settings = {"sampler": "greedy", "max_new_tokens": 16, **settings}
    chat, stats, _ = c.predict(message=message, api_name="/respond", **settings)
    return (message_text(chat[-1]) if chat and chat[-1]["role"] == "assistant" else ""), stats


def test_greedy_answer_mentions_paris_with_stats(server) -> None:
    _, url = server
    answer, stats = respond(client(url), "What is the capital of France?")
    assert "Paris" in answer
    m = STATS.search(stats)
    assert m, stats
    assert 1 <= int(m.group(1)) <= 16
    assert "on cpu_" in stats


def test_a_second_turn_reuses_the_users_cache(server) -> None:
    _, url = server
    c = client(url)
    question = "What is the capital of France?"
    chat, stats1, _ = c.predict(message=question, sampler="greedy", max_new_tokens=8, api_name="/respond")
    chat, stats2, _ = c.predict(message="And of Italy?", history=chat, sampler="greedy", max_new_tokens=4,
                                api_name="/respond")
    prompt1 = int(STATS.search(stats1).group(2))
    m = STATS.search(stats2)
    assert m, stats2
    # the first turn's prompt is not evaluated again
    assert int(m.group(3)) >= prompt1, (stats1, stats2)


def test_chat_endpoint_keeps_a_conversation_per_client(server) -> None:
    app, url = server
    c = client(url)
    assert "Paris" in c.predict("What is the capital of France?", sampler="greedy", max_new_tokens=12,
                                api_name="/chat")
    c.predict("Thanks!", sampler="greedy", max_new_tokens=2, api_name="/chat")
    histories = [len(u.api_history) for u in app.users._users.values()]
    assert 4 in histories
    c.predict(api_name="/clear")
    assert 4 not in [len(u.api_history) for u in app.users._users.values()]


def test_changing_backend_changes_the_backend_used(server) -> None:
    app, url = server
    usable = [b.name for b in backend_choices(app.models[0]) if b.usable]
    c = client(url)
    model = str(app.models[0].path)
    for name in usable[:2]:
        _, _, status = c.predict(model=model, backend=name, api_name="/set_backend")
        assert status.startswith("Ready:") and f"on {name}" in status, status
        _, stats = respond(c, "Hi!", backend=name, max_new_tokens=2)
        assert f"on {name}" in stats, stats
    if len(usable) < 2:
        pytest.skip(f"only one usable backend here ({usable}): nothing to switch to")


def test_an_unusable_backend_is_a_message_not_a_traceback(server) -> None:
    _, url = server
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client(url).predict("Hi", backend="no_such_backend", api_name="/chat")
    assert "no_such_backend cannot run here" in str(err.value)
    assert "Traceback" not in str(err.value)


def test_a_full_context_is_a_message_and_the_app_keeps_working(server) -> None:
    _, url = server
    c = client(url)
    answer, stats = respond(c, "Hi", system_prompt="word " * N_CTX)
    assert stats.startswith("**Error:**") and "context is full" in stats and "Traceback" not in stats
    assert answer == ""
    answer, stats = respond(c, "What is the capital of France?")
    assert "Paris" in answer


def test_stop_ends_only_that_users_generation_early(server) -> None:
    _, url = server
    a, b = client(url), client(url)
    long = {"message": "Write a long story about a dragon and a knight.", "sampler": "greedy",
            "max_new_tokens": 200, "api_name": "/respond"}
    job_a = a.submit(**long)
    job_b = b.submit(**{**long, "max_new_tokens": 12})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until a's answer is streaming
        outs = job_a.outputs()
        if outs and STATS.search(outs[-1][1]) and int(STATS.search(outs[-1][1]).group(1)) >= 2:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a's answer never started streaming")
    stopped_at = time.monotonic()
    a.predict(api_name="/stop")
    _, stats_a, _ = job_a.result(timeout=60)
    assert time.monotonic() - stopped_at < 10
    assert stats_a.endswith("stopped"), stats_a
    assert int(STATS.search(stats_a).group(1)) < 200
    _, stats_b, _ = job_b.result(timeout=120)
    assert not stats_b.endswith("stopped"), stats_b  # b's stop switch is its own
    assert STATS.search(stats_b), stats_b


def test_two_clients_at_once_both_complete(server) -> None:
    _, url = server
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = respond(client(url), "What is the capital of France?", max_new_tokens=8)[1]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert sorted(results) == [0, 1]
    for stats in results.values():
        assert STATS.search(stats), stats


# --- the parts --------------------------------------------------------------------------------------------


def test_settings_from_browser_storage_ignore_junk() -> None:
    s = Settings.from_dict({"sampler": "nonsense", "temperature": "hot", "top_k": "12", "extra": 1})
    assert (s.sampler, s.temperature, s.top_k) == (Settings.sampler, Settings.temperature, 12)
    assert Settings.from_dict(None) == Settings()
    assert Settings.from_dict(Settings(seed=5).to_dict()) == Settings(seed=5)


def test_each_sampler_switches_on_only_its_stage() -> None:
    assert Settings(sampler="greedy").sampling()["temperature"] == 0.0
    k = Settings(sampler="top-k", top_k=7, seed=3).sampling()
    assert (k["top_k"], k["top_p"], k["min_p"], k["seed"]) == (7, 1.0, 0.0, 3)
    p = Settings(sampler="top-p", top_p=0.5).sampling()
    assert (p["top_k"], p["top_p"], p["min_p"], p["seed"]) == (0, 0.5, 0.0, None)
    m = Settings(sampler="min-p", min_p=0.1).sampling()
    assert (m["top_k"], m["top_p"], m["min_p"]) == (0, 1.0, 0.1)
    with pytest.raises(ValueError, match="temperature"):
        Settings(sampler="top-p", temperature=0).validate()


def test_model_cache_unloads_least_recently_used_idle_models(tiny_model) -> None:
    paths = [tiny_model("gqa", seed=i) for i in range(3)]
    probe = ModelCache(threads=1, n_ctx=16)
    size = probe.get(paths[0], "cpu_f32").native.memory_bytes
    probe.close()
    cache = ModelCache(budget_bytes=2 * size + size // 2, threads=1, n_ctx=16)
    with cache.session(paths[0], "cpu_f32", "u1") as (_, s0):
        s0.eval([1, 2, 3])
        cache.get(paths[1], "cpu_f32")
        cache.get(paths[2], "cpu_f32")  # over budget: paths[1] goes, paths[0] is busy
        loaded = [p for p, _, _, _ in cache.loaded()]
        assert paths[0].resolve() in loaded and paths[1].resolve() not in loaded
    cache.get(paths[1], "cpu_f32")  # now paths[0] is idle and least recently used
    assert [p for p, _, _, _ in cache.loaded()] == [paths[2].resolve(), paths[1].resolve()]
    cache.close()


def test_model_cache_keeps_each_users_session(tiny_model) -> None:
    path = tiny_model("gqa")
    cache = ModelCache(threads=1, n_ctx=16)
    with cache.session(path, "cpu_f32", "a") as (m, sa):
        sa.eval([1, 2])
    with cache.session(path, "cpu_f32", "b") as (m2, sb):
        assert m2 is m and sb is not sa and sb.n_past == 0
    with cache.session(path, "cpu_f32", "a") as (_, sa2):
        assert sa2 is sa and sa2.n_past == 2
    cache.drop_user("a")
    with cache.session(path, "cpu_f32", "a") as (_, sa3):
        assert sa3.n_past == 0
    cache.close()


def test_find_models_skips_bad_files(tmp_path: Path, tiny_model) -> None:
    (tmp_path / "broken.gguf").write_bytes(b"not a model")
    good = tiny_model("mha")
    models = find_models([good], tmp_path)
    assert [m.path for m in models] == [good.resolve()]
    assert models[0].main_type == "F32"


def test_small_helpers() -> None:
    assert parse_size("4G") == 4 << 30 and parse_size("512MiB") == 512 << 20 and parse_size("1000") == 1000
    assert parse_auth("ann:secret") == ("ann", "secret") and parse_auth(None) is None
    with pytest.raises(ValueError):
        parse_auth("no-password")
    src = Path("/c/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert quantized_copy_path(src, "Q8_0") == Path("/c/SmolLM2-135M-Instruct.Q8_0.gguf")
    assert plain_history([{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                          {"role": "system", "content": "x"}]) == [{"role": "user", "content": "hi"}]
    assert "Traceback" not in friendly_error(RuntimeError("boom"))


def test_a_user_who_leaves_mid_turn_has_their_cache_freed_after_it(tiny_model) -> None:
    path = tiny_model("gqa")
    cache = ModelCache(threads=1, n_ctx=16)
    with cache.session(path, "cpu_f32", "b"):
        pass
    with cache.session(path, "cpu_f32", "a") as (_, s):
        cache.drop_user("a")
        cache.drop_user("b")  # idle: freed at once
        assert cache.loaded()[0][3] == 1
        s.eval([1, 2])  # the running turn goes on
    assert cache.loaded()[0][3] == 0
    cache.close()


def test_a_model_that_fails_to_load_is_a_message(tmp_path: Path, tiny_model) -> None:
    import gradio as gr

    path = tmp_path / "vanishing.gguf"
    path.write_bytes(tiny_model("mha").read_bytes())
    cache = ModelCache(threads=1, n_ctx=64)
    app = ChatApp(find_models([path]), cache, concurrency=1)
    answer = app.chat_api("hello", sampler="greedy", max_new_tokens=3)  # the built-in LLaMA-2 format
    assert isinstance(answer, str)
    cache.close()
    path.unlink()
    with pytest.raises(gr.Error) as err:
        app.chat_api("hello again", sampler="greedy", max_new_tokens=3)
    assert "vanishing.gguf" in str(err.value) and "Traceback" not in str(err.value)
    chat, stats, box = list(app.respond("hello", [], sampler="greedy", max_new_tokens=3))[-1]
    assert stats.startswith("**Error:**") and chat == [] and box == "hello"


def test_auth_is_required_when_given(smollm2_path: Path) -> None:
    app = ChatApp(find_models([smollm2_path]), ModelCache(threads=1), concurrency=1)
    demo, url = launch(app, port=free_port(), auth=("ann", "secret"), prevent_thread_lock=True, quiet=True)
    try:
        with pytest.raises(Exception):  # noqa: B017 - gradio_client raises different types across versions
            gradio_client.Client(url, verbose=False)
        c = gradio_client.Client(url, auth=("ann", "secret"), verbose=False)
        assert c.predict(api_name="/clear") is not None
    finally:
        demo.close()
