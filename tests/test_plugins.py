"""The backend registry: built-ins are plugins, third-party packages are discovered by entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import llama2
from llama2.native import find_library, header_text

# A third-party backend in C: it wraps cpu_f32's table under its own name, which
# is enough to show discovery, loading through the ABI and running.
WRAPPER_C = r"""
#include <dlfcn.h>
#include <string.h>
#include "llama2_backend.h"

static llama2_backend_api table;

__attribute__((visibility("default"))) const llama2_backend_api *llama2_backend_get(void) {
    void *lib = dlopen(INNER_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (!lib) return NULL;
    const llama2_backend_api *(*inner)(void) =
        (const llama2_backend_api *(*)(void))dlsym(lib, "llama2_backend_get");
    if (!inner) return NULL;
    memcpy(&table, inner(), sizeof table);
    table.name = "ext_f32";
    table.description = "cpu_f32 re-registered by a third-party package (test)";
    return &table;
}
"""

PLUGIN_PY = """
from llama2.native import NativeBackend
from llama2.plugins import hookimpl
from pathlib import Path

@hookimpl
def register_backends(register):
    register(NativeBackend(Path(__file__).with_name("libext_f32.so"), expected_name="ext_f32"))
"""


@pytest.fixture(scope="module")
def external_package(tmp_path_factory) -> Path:
    """An installed distribution (dist-info with an entry point) holding a C backend built here."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    inner = find_library("llama2.backends.cpu_f32", "llama2_cpu_f32")
    assert inner is not None, "cpu_f32 is not built"
    site = tmp_path_factory.mktemp("site")
    pkg = site / "l2_ext_backend"
    pkg.mkdir()
    (site / "llama2_backend.h").write_text(header_text())
    (site / "wrapper.c").write_text(WRAPPER_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", f'-DINNER_LIBRARY="{inner}"', f"-I{site}",
                    str(site / "wrapper.c"), "-o", str(pkg / "libext_f32.so"), "-ldl"], check=True)
    (pkg / "__init__.py").write_text(PLUGIN_PY)
    dist = site / "llama2_ext_backend-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llama2-ext-backend\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text("[llama2.backends]\next_f32 = l2_ext_backend\n")
    return site


def _run(code: str, site: Path, allow: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("LLAMA2_LOAD_PLUGINS", None)
    if allow is not None:
        env["LLAMA2_LOAD_PLUGINS"] = allow
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=300)


def test_builtin_backend_is_registered_with_origin():
    b = llama2.list_backends()["cpu_f32"]
    assert b.origin == f"llama2 {llama2.__version__}"
    assert b.probe() == (True, "")
    assert 0 in b.native_types  # F32


def test_external_backend_is_discovered_and_runs(external_package, tiny_model):
    path = tiny_model("gqa")
    result = _run(f"""
        import numpy as np, llama2
        b = llama2.list_backends()
        print("ORIGIN", b["ext_f32"].origin)
        ext = llama2.load({str(path)!r}, backend="ext_f32").session().eval([1, 5, 9])
        ref = llama2.load({str(path)!r}, backend="cpu_f32").session().eval([1, 5, 9])
        print("SAME", bool(np.array_equal(ext, ref)))
    """, external_package, allow=None)
    assert result.returncode == 0, result.stderr
    assert "ORIGIN llama2-ext-backend 0.0.1" in result.stdout
    assert "SAME True" in result.stdout


def test_third_party_plugins_can_be_switched_off(external_package):
    result = _run("import llama2; print(sorted(llama2.list_backends()))", external_package, allow="")
    assert result.returncode == 0, result.stderr
    assert "ext_f32" not in result.stdout and "cpu_f32" in result.stdout


def test_cli_lists_backends(external_package):
    env = dict(os.environ, PYTHONPATH=str(external_package))
    env.pop("LLAMA2_LOAD_PLUGINS", None)
    out = subprocess.run([sys.executable, "-m", "llama2", "backends"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert "usable" in lines["cpu_f32"] and f"llama2 {llama2.__version__}" in lines["cpu_f32"]
    assert "llama2-ext-backend 0.0.1" in lines["ext_f32"]


def test_a_misspelt_hook_fails_loudly():
    import pluggy

    from llama2.plugins import hookimpl, pm

    class Misspelt:
        @hookimpl
        def register_backend(self, register):  # missing the "s"
            pass

    plugin = Misspelt()
    pm.register(plugin, name="misspelt-test")
    try:
        with pytest.raises(pluggy.PluginValidationError):
            pm.check_pending()
    finally:
        pm.unregister(plugin)


def test_unknown_backend_name_is_a_clear_error(tiny_model):
    with pytest.raises(llama2.BackendUnavailableError, match="no backend named 'nope'"):
        llama2.load(tiny_model("mha"), backend="nope")
