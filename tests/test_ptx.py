"""Rung 3 of the verification ladder: every kernel compiles to PTX for cc 8.0 and 9.0 with
the argument types its launchers pass. The simulator runs code that NVVM rejects (Python
objects, int64 vs float mixes, unsupported calls); this is where that shows.

The register-tiled kernels (conv v3) also must not touch local memory: no ld.local /
st.local in their PTX (a cuda.local.array that did not become registers) and no stack or
spills when ptxas assembles it for sm_90; canaries show those checks can fail.

The compiler (minivgg/bench/ptx.py, shared with `python -m minivgg.bench static`) runs in a
child process because this one has the simulator switched on; its ptxas reports of every
kernel also feed the static tables here, once.
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


# Kernels that keep a per-thread tile in cuda.local.array and rely on the compiler to put it
# in registers (constant indices after unrolling). Their PTX must have no local memory, and
# ptxas (sm_90) must neither give them a stack frame nor spill.
REGISTER_TILED = ["conv.conv_forward_v3", "conv.conv_backward_data_v3",
                  "conv.conv_backward_weight_v3"]

# ld.local / st.local (any type or vector width) and the local frame they address. Local
# memory is DRAM behind L1: a "register" tile there turns every multiply-add into traffic.
LOCAL_MEMORY = re.compile(r"\b(?:ld|st)\.local\b|__local_depot")


@pytest.fixture(scope="session")
def ptx():
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_ENABLE_CUDASIM", "MINIVGG_DEVICE")}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_ptx_worker.py"),
                           "--ptxas-all", "--ptxas", *REGISTER_TILED],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"PTX worker failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def _nvvm_missing(error):
    return bool(re.search(r"NVVM|libnvvm|nvvm", error)) and "not found" in error.lower()


def _compiled(ptx, name, cc):
    """The worker's result for (name, cc); skip if NVVM is missing (fail if it is required)."""
    result = ptx[name][cc]
    if not result["ok"]:
        if _nvvm_missing(result["error"]) and os.environ.get("MINIVGG_REQUIRE_PTX") != "1":
            pytest.skip(f"NVVM not available: {result['error']}")
        pytest.fail(f"{name} does not compile for cc {cc}: {result['error']}")
    return result


def _assembled(report, name):
    """A ptxas report; skip if ptxas is missing (fail if MINIVGG_REQUIRE_PTX=1: it comes
    with numba-cuda[cu12], like NVVM)."""
    if not report["ok"]:
        if report["error"] == "ptxas not found" and os.environ.get("MINIVGG_REQUIRE_PTX") != "1":
            pytest.skip("ptxas not available")
        pytest.fail(f"{name}: {report['error']}")
    return report


def _local_memory(ptx_text):
    return [line.strip() for line in ptx_text.splitlines() if LOCAL_MEMORY.search(line)]


@pytest.mark.parametrize("name", _kernel_names())
@pytest.mark.parametrize("cc", ["8.0", "9.0"])
def test_kernel_compiles_to_ptx(ptx, name, cc):
    result = _compiled(ptx, name, cc)
    assert f".target sm_{cc.replace('.', '')}" in result["ptx"]
    assert ".entry" in result["ptx"] or ".visible .entry" in result["ptx"]


@pytest.mark.parametrize("name", REGISTER_TILED)
def test_register_tiles_use_no_local_memory(ptx, name):
    found = _local_memory(_compiled(ptx, name, "9.0")["ptx"])
    assert not found, f"{name}'s sm_90 PTX uses local memory: {found[:6]}"


@pytest.mark.parametrize("name", REGISTER_TILED)
def test_register_tiles_do_not_spill(ptx, name):
    """NVVM's PTX has unlimited virtual registers; spills appear only when ptxas maps them
    to the 255 (or fewer, for occupancy) real ones."""
    report = _assembled(_compiled(ptx, name, "9.0")["ptxas"], name)
    assert (report["stack"], report["spill_stores"], report["spill_loads"]) == (0, 0, 0), \
        f"{name} on sm_90: {report['report']}"


def test_local_memory_checks_can_fail(ptx):
    """The two checks above see local memory where there is some: a local array indexed
    by a run-time value, and a register tile squeezed into 32 registers."""
    canary = _compiled(ptx, "canary.dynamic_local_array", "9.0")
    assert any(re.search(r"\bld\.local", line) for line in _local_memory(canary["ptx"]))
    squeezed = _compiled(ptx, REGISTER_TILED[0], "9.0")["ptxas_maxrreg32"]
    squeezed = _assembled(squeezed, REGISTER_TILED[0])
    assert squeezed["stack"] > 0 and squeezed["spill_stores"] > 0, squeezed["report"]


def test_static_tables_from_the_compiled_kernels(ptx, tmp_path, capsys):
    """`python -m minivgg.bench static` on this compilation: every kernel has registers,
    a block size from the launch geometry (so the geometry launches every kernel), blocks
    per SM and waves."""
    from minivgg.bench import static
    for name in _kernel_names():  # skips without NVVM or ptxas (fails if they are required)
        _assembled(_compiled(ptx, name, "9.0")["ptxas"], name)
    path = tmp_path / "ptx.json"
    path.write_text(json.dumps(ptx))
    assert static.main(["--ptx-json", str(path), "--batch", "32"]) == 0
    text = capsys.readouterr().out
    table = text.split("## Kernel resources")[1].split("\n## ")[0]
    rows = {r[0]: r for r in ([c.strip() for c in line.split("|")[1:-1]]
                              for line in table.splitlines() if line.startswith("| "))}
    for name in _kernel_names():
        kernel = name.split(".", 1)[1]
        threads, regs, _, _, blocks = rows[kernel][1:6]
        assert threads != "-" and int(regs) > 0 and int(blocks) > 0, rows[kernel]
    assert "(0." in text  # some launch under one wave, e.g. the loss's
    assert "Launches of the training step under one wave at batch 32, by kernel:" in text
