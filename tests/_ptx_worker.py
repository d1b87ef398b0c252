"""Compile every kernel in kernels/ to PTX for real GPUs (run in a process without the
simulator; tests/test_ptx.py starts it). Prints JSON: {"module.kernel": {"8.0": ptx|error}}.
"""
import importlib
import json
import os
import pkgutil
import sys

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"

from types import SimpleNamespace  # noqa: E402

from numba import cuda  # noqa: E402
from numba.cuda import dispatcher  # noqa: E402

import kernels  # noqa: E402

# numba-cuda compiles a kernel's @cuda.jit(device=True) helpers for "the current device",
# asking the driver for its compute capability, which fails on a machine without a GPU.
# The helpers are linked into the kernel and compiled again for the cc we ask for, so any
# capability will do here.
dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(8, 0))

CCS = [(8, 0), (9, 0)]


def main():
    results = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        for kernel, sig in getattr(module, "PTX_SIGNATURES", []):
            name = f"{info.name}.{kernel.py_func.__name__}"
            for cc in CCS:
                key = f"{cc[0]}.{cc[1]}"
                try:
                    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
                    results.setdefault(name, {})[key] = {"ok": True, "ptx": ptx}
                except Exception as e:  # report, the test decides
                    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    results.setdefault(name, {})[key] = {"ok": False, "error": msg}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
