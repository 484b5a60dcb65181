"""Coverage-guided fuzzing of the model loader (atheris).

The target opens the input with llama2.ModelFile, builds its tokenizer and
runs it over a probe text, as llama2.load does before any backend sees the
file, and renders its chat template. The documented failures are
ModelFormatError, UnsupportedModelError, FileNotFoundError and
ChatTemplateError; any other exception, a hang (-timeout) or a memory
blow-up (-rss_limit_mb) is a finding.

    python tests/fuzz/fuzz_model_file.py CORPUS_DIR [libFuzzer flags]  # e.g. -max_total_time=120
    python tests/fuzz/fuzz_model_file.py --collect FINDINGS_DIR CORPUS_DIR ...  # keep going, one file per bug
    python tests/fuzz/fuzz_model_file.py --replay FILE_OR_DIR ...  # run inputs once, report line coverage

Seeds come from tests/fuzz/seeds.py (written into CORPUS_DIR when it is empty).
Mutation is half libFuzzer's byte-level mutators, half the structure-aware
GGUF mutator of gguf_codec.py.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import sys
import tempfile
import traceback
import types
from pathlib import Path

import atheris

# replay measures line coverage: start before llama2 is imported, so its module level counts too
_COVERAGE = None
if "--replay" in sys.argv:
    import coverage

    _COVERAGE = coverage.Coverage(data_file=None, include=["*/llama2/model_file.py", "*/llama2/tokenizer.py"])
    _COVERAGE.start()

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gguf_codec  # noqa: E402 - the mutator: not under test, not instrumented

from llama2.chat_template import render_jinja  # noqa: E402
from llama2.errors import ChatTemplateError, ModelFormatError, UnsupportedModelError  # noqa: E402
from llama2.model_file import ModelFile  # noqa: E402
from llama2.tokenizer import tokenizer_from_metadata  # noqa: E402


def instrument(prefixes: tuple[str, ...]) -> int:
    """Instrument the already imported functions of these packages.

    atheris.instrument_imports skips modules imported through a custom loader,
    which is how an editable install serves llama2.
    """
    funcs = [o for o in gc.get_objects() if callable(o) and isinstance(getattr(o, "__code__", None), types.CodeType)
             and str(getattr(o, "__module__", "")).startswith(prefixes)]
    for f in funcs:
        atheris.instrument_func(f)
    return len(funcs)

DOCUMENTED = (ModelFormatError, UnsupportedModelError, FileNotFoundError, ChatTemplateError)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|im_end|>"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "\u00e9\U0001f999"}]
PROBE_TEXT = "Hello world! <s></s><|im_start|>user\n<|user|> caf\u00e9 \u2581x \U0001f999 \u00ff\u0100 123 \n\n  "
_WORK = Path(tempfile.mkdtemp(prefix="llama2-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
_INPUT = _WORK / "input.gguf"


def load_file(path: Path) -> None:
    """Everything llama2.load does with a file before handing it to a backend."""
    mf = ModelFile(path)
    try:
        tok = tokenizer_from_metadata(mf.tokenizer_metadata())
        if tok.n_vocab != mf.hparams.n_vocab:
            return  # llama2.load refuses this with ModelFormatError
        ids = tok.encode(PROBE_TEXT, add_bos=True, parse_special=True)
        ids += tok.encode(PROBE_TEXT, add_bos=False, parse_special=False)
        tok.decode(ids)
        tok.decode(range(tok.n_vocab))
        for i in range(tok.n_vocab):
            tok.is_special(i)
        if mf.chat_template is not None:  # the template is the file's code: it runs in the sandbox
            render_jinja(mf.chat_template, MESSAGES, bos_token="<s>", eos_token="</s>")
    finally:
        mf.close()


def target(data: bytes) -> None:
    _INPUT.write_bytes(data)
    try:
        load_file(_INPUT)
    except DOCUMENTED:
        pass


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.5:
        g = gguf_codec.parse(data)
        if g is not None:
            for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
                gguf_codec.mutate(g, rng)
            out = gguf_codec.serialize(g)
            if len(out) <= max_size:
                return out
    return atheris.Mutate(data, max_size)


def signature(exc: BaseException) -> str:
    """Exception type and the innermost frame inside llama2/gguf: one bug, one signature."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "llama2" in f.filename or "gguf" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__}@{where}"


def collecting_target(findings: Path):
    seen: set[str] = set()

    def run(data: bytes) -> None:
        try:
            target(data)
        except Exception as exc:  # a finding: keep one input per signature and go on
            sig = signature(exc)
            if sig not in seen:
                seen.add(sig)
                name = f"{sig.replace(':', '_').replace('@', '-')}-{hashlib.sha1(data).hexdigest()[:10]}.gguf"
                (findings / name).write_bytes(data)
                print(f"FINDING {sig}: {exc!s:.300}", flush=True)

    return run


def replay(paths: list[str]) -> int:
    """Run each input once under coverage.py; print the unexpected exceptions and the line coverage."""
    files = [p for arg in paths for p in (sorted(Path(arg).iterdir()) if Path(arg).is_dir() else [Path(arg)])]
    failures = 0
    for p in files:
        try:
            target(p.read_bytes())
        except Exception as exc:
            failures += 1
            print(f"{p.name}: {signature(exc)}: {exc!s:.200}")
    assert _COVERAGE is not None
    _COVERAGE.stop()
    print(f"{len(files)} inputs, {failures} unexpected exceptions")
    _COVERAGE.report(show_missing=True)
    return 1 if failures else 0


def main() -> None:
    argv = list(sys.argv)
    if len(argv) > 1 and argv[1] == "--replay":
        sys.exit(replay(argv[2:]))
    run = target
    if len(argv) > 2 and argv[1] == "--collect":
        findings = Path(argv[2])
        findings.mkdir(parents=True, exist_ok=True)
        run = collecting_target(findings)
        del argv[1:3]
    corpus = next((Path(a) for a in argv[1:] if not a.startswith("-")), None)
    if corpus is not None and (not corpus.is_dir() or not any(corpus.iterdir())):
        from seeds import write_seeds

        write_seeds(corpus)
    print(f"INFO: instrumented {instrument(('llama2', 'gguf'))} functions of llama2 and gguf", file=sys.stderr)
    atheris.Setup(argv, run, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
