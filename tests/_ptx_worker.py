"""Compile every kernel in kernels/ to PTX for real GPUs (run in a process without the
simulator; tests/test_ptx.py starts it). Prints JSON: {"module.kernel": {"8.0": ptx|error}}.

`--ptxas NAME...` also assembles those kernels' cc 9.0 PTX with ptxas (sm_90) and records
its resource report under "ptxas" (registers, stack frame, spill bytes). Two canaries show
that the local-memory checks can fail: "canary.dynamic_local_array", a kernel whose local
array is indexed by a run-time value (so NVVM cannot make it registers: ld.local/st.local
in its PTX), and, under "ptxas_maxrreg32", the first NAME assembled with 32 registers at
most (so ptxas must spill: stack and spill bytes in its report).
"""
import argparse
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"

from types import SimpleNamespace  # noqa: E402

from numba import cuda, float32  # noqa: E402
from numba.cuda import dispatcher  # noqa: E402

import kernels  # noqa: E402
from kernels.common import F1, int32  # noqa: E402

# numba-cuda compiles a kernel's @cuda.jit(device=True) helpers for "the current device",
# asking the driver for its compute capability, which fails on a machine without a GPU.
# The helpers are linked into the kernel and compiled again for the cc we ask for, so any
# capability will do here.
dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(8, 0))

CCS = [(8, 0), (9, 0)]


@cuda.jit
def dynamic_local_array(a, k):
    """The canary: t[k % 16] with k known only at run time needs an addressable array."""
    t = cuda.local.array(16, float32)
    for i in range(16):
        t[i] = a[i]
    a[0] = t[k % 16]


def _ptxas():
    """ptxas from numba-cuda[cu12]'s nvidia-cuda-nvcc-cu12 wheel, else from PATH, else None."""
    try:
        import nvidia.cuda_nvcc
        for root in nvidia.cuda_nvcc.__path__:
            exe = Path(root) / "bin" / "ptxas"
            if exe.is_file():
                return str(exe)
    except ImportError:
        pass
    return shutil.which("ptxas")


def assemble(ptx, *options):
    """ptxas's resource report for sm_90: {"ok", "registers", "stack", "spill_stores",
    "spill_loads", "report"}, or {"ok": False, "error"}."""
    exe = _ptxas()
    if exe is None:
        return {"ok": False, "error": "ptxas not found"}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([exe, "-arch=sm_90", "-v", *options, str(src),
                               "-o", str(Path(tmp) / "k.cubin")], capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return {"ok": False, "error": f"ptxas failed: {report[-1000:]}"}

    def number(pattern):
        found = re.search(pattern, report)
        return int(found.group(1)) if found else None

    return {"ok": True, "report": report,
            "registers": number(r"Used (\d+) registers"),
            "stack": number(r"(\d+) bytes stack frame"),
            "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads")}


def compile_all(name, pyfunc, sig, results):
    for cc in CCS:
        key = f"{cc[0]}.{cc[1]}"
        try:
            ptx, _ = cuda.compile_ptx(pyfunc, sig, cc=cc)
            results.setdefault(name, {})[key] = {"ok": True, "ptx": ptx}
        except Exception as e:  # report, the test decides
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            results.setdefault(name, {})[key] = {"ok": False, "error": msg}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ptxas", nargs="*", default=[], metavar="NAME")
    args = parser.parse_args()
    results = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        for kernel, sig in getattr(module, "PTX_SIGNATURES", []):
            compile_all(f"{info.name}.{kernel.py_func.__name__}", kernel.py_func, sig, results)
    if args.ptxas:
        compile_all("canary.dynamic_local_array", dynamic_local_array.py_func, (F1, int32),
                    results)
        for name in args.ptxas:
            entry = results.get(name, {}).get("9.0", {})
            if entry.get("ok"):
                entry["ptxas"] = assemble(entry["ptx"])
        entry = results.get(args.ptxas[0], {}).get("9.0", {})
        if entry.get("ok"):
            entry["ptxas_maxrreg32"] = assemble(entry["ptx"], "-maxrregcount=32")
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
