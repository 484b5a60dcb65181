"""`llama2 chat` driven through a pipe, as a user would: answers, /reset, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llama2.convert.gguf_writer import LlamaHParams
from llama2.convert.synthetic import write_random_llama

import llama2

HP = LlamaHParams(n_vocab=384, n_embd=96, n_layer=3, n_head=6, n_head_kv=2, n_ff=224)
# big enough that thousands of tokens take seconds, so Ctrl-C lands mid-answer
SLOW_HP = LlamaHParams(n_vocab=2000, n_embd=256, n_layer=6, n_head=8, n_head_kv=4, n_ff=768)


def chat_command(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "llama2", "chat", str(path), "--backend", "cpu_f32", "--threads", "1", *extra]


def test_chat_answers_resets_and_keeps_history(tmp_path: Path) -> None:
    path = write_random_llama(tmp_path / "tiny.gguf", HP, seed=5)
    with llama2.load(path, backend="cpu_f32", threads=1) as m:
        sys_msg = {"role": "system", "content": "be brief"}
        hello = [sys_msg, {"role": "user", "content": "hello"}]
        first = m.session().chat(hello, 6, temperature=0)
        a1 = "".join(first)
        follow = [*hello, {"role": "assistant", "content": a1}, {"role": "user", "content": "hello"}]
        a2 = "".join(m.session().chat(follow, 6, temperature=0))
    assert "\n" not in a1 + a2, "pick another seed: the answers must be one line each"
    assert a1 != a2, "pick another seed: the history must change the answer"
    stdin = "hello\nhello\n/reset\nhello\n"
    out = subprocess.run(chat_command(path, "--system", "be brief", "--temperature", "0", "--max-tokens", "6"),
                         input=stdin, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # the second "hello" sees the first exchange; after /reset the first answer comes again
    assert out.stdout == f"{a1}\n{a2}\n{a1}\n"
    assert "[conversation reset]" in out.stderr and "LLaMA-2's chat format" in out.stderr


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_stops_the_answer_not_the_program(tmp_path: Path) -> None:
    path = write_random_llama(tmp_path / "slow.gguf", SLOW_HP, seed=1)
    proc = subprocess.Popen(chat_command(path, "--ctx", "4096", "--max-tokens", "4000", "--temperature", "1"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"tell me a long story\n")
        proc.stdin.flush()
        assert proc.stdout.read(1)  # the answer has started
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.stdin.write(b"/exit\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    assert "[stopped;" in err.decode()
