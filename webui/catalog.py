"""The models a user can pick, and the backends each can run on.

A file is read once, the first time it is listed, to learn what it is (its
main weight type decides which backend runs it natively); the weights are
loaded only when someone chats with it (see model_cache.py).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import gguf

from llama2.default_model import cache_dir
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


class _WeightTypes:
    """What choose_backend reads of a ModelFile, from the descriptions cache."""

    def __init__(self, totals: dict[str, int]) -> None:
        self._totals = totals

    def weight_bytes_by_type(self) -> dict[str, int]:
        return self._totals


def _descriptions_path() -> Path:
    return cache_dir() / "webui-models.json"


def weight_bytes_by_type(path: Path) -> dict[str, int]:
    """The file's weight bytes per type, remembered across runs.

    Reading a GGUF header means parsing its whole vocabulary (seconds for a
    49k-token one), so what a file holds is kept by path, size and mtime and
    a restart lists the models at once.
    """
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    store = _descriptions_path()
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), dict):
        return {str(k): int(v) for k, v in known[key].items()}
    mf = ModelFile(path)  # validates the file: a broken one raises here
    try:
        totals = mf.weight_bytes_by_type()
    finally:
        mf.close()
    # entries of files that changed or went away are dropped
    known = {k: v for k, v in known.items() if not k.startswith(f"{path}|") and Path(k.split("|")[0]).exists()}
    known[key] = totals
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f".{store.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, store)
    except OSError as exc:  # a read-only cache only costs time
        log.warning("cannot remember model descriptions in %s: %s", store, exc)
    return totals


def describe(path: str | Path) -> ModelEntry:
    """Say what a GGUF file is; raises Llama2Error/OSError for a bad file."""
    path = Path(path).resolve()
    totals = weight_bytes_by_type(path)
    main_type = max(totals, key=lambda k: totals[k]) if totals else "F32"
    try:
        default = choose_backend(_WeightTypes(totals)).name  # type: ignore[arg-type]
    except Llama2Error:
        default = ""
    return ModelEntry(path, path.stem, main_type, default, path.stat().st_size)


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
