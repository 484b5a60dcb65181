"""The models a user can pick, and the backends each can run on.

A file is opened once, when it is listed, to learn what it is (its main weight
type decides which backend runs it natively); the weights are loaded only when
someone chats with it (see model_cache.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import gguf

from llama2.errors import Llama2Error
from llama2.model import choose_backend
from llama2.model_file import ModelFile
from llama2.plugins import backends

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ModelEntry:
    path: Path
    label: str
    main_type: str  # the weight type holding most bytes, e.g. "Q4_1"
    default_backend: str  # the best usable backend for it ("" when none is usable)
    size_bytes: int


@dataclass(frozen=True)
class BackendChoice:
    name: str
    usable: bool
    note: str  # "runs Q4_1 natively", "converts Q4_1 at load", or why it is unusable

    @property
    def label(self) -> str:
        return f"{self.name} ({self.note})"


def describe(path: str | Path) -> ModelEntry:
    """Open a GGUF file's header and say what it is; raises Llama2Error/OSError for a bad file."""
    path = Path(path).resolve()
    mf = ModelFile(path)
    try:
        totals = mf.weight_bytes_by_type()
        main_type = max(totals, key=lambda k: totals[k]) if totals else "F32"
        try:
            default = choose_backend(mf).name
        except Llama2Error:
            default = ""
        return ModelEntry(path, path.stem, main_type, default, mf.file_size)
    finally:
        mf.close()


def find_models(paths: Iterable[str | Path], models_dir: str | Path | None = None) -> list[ModelEntry]:
    """The given files, then every *.gguf under models_dir; unreadable files are logged and skipped."""
    candidates = [Path(p) for p in paths]
    if models_dir is not None:
        folder = Path(models_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"--models-dir {folder} is not a folder")
        candidates += sorted(folder.rglob("*.gguf"))
    entries: list[ModelEntry] = []
    seen: set[Path] = set()
    for p in candidates:
        if p.resolve() in seen:
            continue
        try:
            entry = describe(p)
        except (Llama2Error, OSError) as exc:
            log.warning("skipping %s: %s", p, exc)
            continue
        seen.add(entry.path)
        entries.append(entry)
    # Two files of one name in different folders stay distinguishable.
    labels = [e.label for e in entries]
    return [
        e if labels.count(e.label) == 1 else ModelEntry(e.path, f"{e.label} ({e.path.parent.name})", e.main_type,
                                                        e.default_backend, e.size_bytes)
        for e in entries
    ]


def backend_choices(entry: ModelEntry) -> list[BackendChoice]:
    """Every registered backend, usable ones first, each with a note on how it runs this model."""
    choices = []
    try:
        type_id = gguf.GGMLQuantizationType[entry.main_type].value
    except KeyError:
        type_id = -1
    for name, b in sorted(backends().items()):
        ok, why = b.probe()
        if not ok:
            choices.append(BackendChoice(name, False, why or "unusable here"))
        elif type_id in b.native_types:
            choices.append(BackendChoice(name, True, f"runs {entry.main_type} natively"))
        else:
            choices.append(BackendChoice(name, True, f"converts {entry.main_type} at load"))
    return sorted(choices, key=lambda c: not c.usable)
