"""Rung 3 of the verification ladder: every kernel compiles to PTX for cc 8.0 and 9.0 with
the argument types its launchers pass. The simulator runs code that NVVM rejects (Python
objects, int64 vs float mixes, unsupported calls); this is where that shows.

The compiler runs in a child process because this one has the simulator switched on.
Without NVVM (numba-cuda[cu12] not installed) the tests skip, unless MINIVGG_REQUIRE_PTX=1
(set by .ci/run), when they fail.
"""
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kernels

ROOT = Path(__file__).resolve().parents[1]


def _kernel_names():
    names = []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        for kernel, _ in getattr(module, "PTX_SIGNATURES", []):
            fn = getattr(kernel, "py_func", None) or getattr(kernel, "fn", None)
            names.append(f"{info.name}.{fn.__name__}")
    return names


@pytest.fixture(scope="session")
def ptx():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_ptx_worker.py")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"PTX worker failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def _nvvm_missing(error):
    return bool(re.search(r"NVVM|libnvvm|nvvm", error)) and "not found" in error.lower()


@pytest.mark.parametrize("name", _kernel_names())
@pytest.mark.parametrize("cc", ["8.0", "9.0"])
def test_kernel_compiles_to_ptx(ptx, name, cc):
    result = ptx[name][cc]
    if not result["ok"]:
        if _nvvm_missing(result["error"]) and os.environ.get("MINIVGG_REQUIRE_PTX") != "1":
            pytest.skip(f"NVVM not available: {result['error']}")
        pytest.fail(f"{name} does not compile for cc {cc}: {result['error']}")
    assert f".target sm_{cc.replace('.', '')}" in result["ptx"]
    assert ".entry" in result["ptx"] or ".visible .entry" in result["ptx"]
