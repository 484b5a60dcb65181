"""The web UI in a real browser: Playwright driving Debian's chromium (headless)."""

from __future__ import annotations

import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from llama2.webui.app import ChatApp, launch
from llama2.webui.catalog import backend_choices, find_models
from llama2.webui.model_cache import ModelCache

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")

ENDED = ("end of answer", "max new tokens", "stopped", "context full")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smollm2_path: Path):
    cache = ModelCache(threads=1, n_ctx=1024)
    app = ChatApp(find_models([smollm2_path]), cache, concurrency=2)
    demo, url = launch(app, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield app, url
    demo.close()
    cache.close()


@pytest.fixture()
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(120_000)
            yield page
        finally:
            browser.close()


def stats_text(page) -> str:
    return page.inner_text("#stats")


def prompt_tokens(stats: str) -> int:
    m = re.search(r"prompt (\d+) tokens", stats)
    return int(m.group(1)) if m else -1


def bot_text(page) -> str:
    bots = page.query_selector_all("#chatbot [data-testid=bot]")
    return bots[-1].inner_text() if bots else ""


def wait_until(page, condition, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; status {page.inner_text('#status')!r}, "
                        f"stats {stats_text(page)!r}, answer {bot_text(page)[:200]!r}")
        time.sleep(0.1)


def test_chat_stream_stop_and_switch_backend_in_a_browser(server, page, tmp_path: Path) -> None:
    app, url = server
    page.goto(url)
    page.wait_for_selector("#message textarea")
    wait_until(page, lambda: page.inner_text("#status").startswith("Ready:"), what="the model to be ready")

    # greedy hides the controls it does not use
    page.click("#sampler [data-testid=greedy-radio-label]")
    wait_until(page, lambda: not page.is_visible("#temperature") and not page.is_visible("#top_p"),
               what="greedy to hide temperature and top-p")
    page.fill("#max_new_tokens input[data-testid=number-input]", "300")
    page.press("#max_new_tokens input[data-testid=number-input]", "Enter")

    # the answer streams: text is on the page while the generation is still running
    page.fill("#message textarea", "Write a long story about a dragon and a knight.")
    page.press("#message textarea", "Enter")
    wait_until(page, lambda: len(bot_text(page)) > 0, what="the first words of the answer")
    first = bot_text(page)
    assert not stats_text(page).endswith(ENDED), stats_text(page)
    wait_until(page, lambda: len(bot_text(page)) > len(first), what="the answer to grow")

    page.click("#stop")
    wait_until(page, lambda: stats_text(page).endswith("stopped"), timeout=30, what="the stop to take effect")
    n_tokens = int(stats_text(page).split(" tokens", 1)[0])
    assert 0 < n_tokens < 300

    # switch backend: to another usable one when there is one, else re-select the only one
    usable = [c for c in backend_choices(app.models[0]) if c.usable]
    current = page.input_value("#backend input")
    target = next((c for c in usable if c.label != current), usable[0])
    page.click("#backend input")
    page.click(f"#backend [data-testid=dropdown-option][aria-label='{target.label}']")
    wait_until(page, lambda: page.inner_text("#status").startswith("Ready:") and f"on {target.name}" in
               page.inner_text("#status"), what=f"{target.name} to be loaded")
    # this turn's stats line is the one with a longer prompt (it holds the first exchange)
    before = prompt_tokens(stats_text(page))
    page.fill("#message textarea", "What is the capital of France?")
    page.press("#message textarea", "Enter")
    wait_until(page, lambda: prompt_tokens(stats_text(page)) > before and stats_text(page).endswith(ENDED),
               what="the answer on the new backend")
    assert f"on {target.name}" in stats_text(page)
    assert "Paris" in bot_text(page)

    shot = tmp_path / "webui.png"
    page.screenshot(path=str(shot), full_page=True)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 1000
    assert pixels.std() > 10, "the screenshot is blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "the screenshot has almost no detail"

    # the settings come back on the next visit (kept in the browser)
    page.reload()
    page.wait_for_selector("#message textarea")
    wait_until(page, lambda: page.inner_text("#status").startswith("Ready:"), what="the model after a reload")
    wait_until(page, lambda: page.is_checked("#sampler input[value=greedy]")
               and page.input_value("#max_new_tokens input[data-testid=number-input]") == "300"
               and page.input_value("#backend input").startswith(target.name)
               and not page.is_visible("#temperature"), timeout=30, what="the stored settings")
