"""Compile kernels/ for real GPUs without one: numba.cuda.compile_ptx with the argument
types each module lists in PTX_SIGNATURES, then ptxas for the resources a launch needs
(registers per thread, static shared memory, stack and spills).

Run as its own process (`python -m minivgg.bench.ptx`), since a process that switched on
Numba's CUDA simulator cannot compile; prints JSON {"module.kernel": {"9.0": {"ok", "ptx"
or "error", "ptxas": {...}}}}. tests/test_ptx.py (rung 3 of the ladder) and the static
tables (`python -m minivgg.bench static`) read it.
"""
import os

if __name__ == "__main__":  # before anything imports numba.cuda. Only then: a process that
    # imports this module for ptxas_path keeps its setting, which Numba reads again at
    # every @njit compile (a test process would lose its simulator).
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0"

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import pkgutil  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

CCS = [(8, 0), (9, 0)]


def _allow_compiling_without_a_gpu():
    """numba-cuda compiles a kernel's @cuda.jit(device=True) helpers for "the current
    device", asking the driver for its compute capability, which fails on a machine
    without a GPU. The helpers are linked into the kernel and compiled again for the cc we
    ask for, so any capability will do here."""
    from numba.cuda import dispatcher
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(8, 0))


def ptxas_path():
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


def parse_ptxas(report):
    """The numbers in ptxas -v's report (None where a line is missing)."""
    def number(pattern):
        found = re.search(pattern, report)
        return int(found.group(1)) if found else None

    return {"registers": number(r"Used (\d+) registers"),
            "smem": number(r"(\d+) bytes smem") or 0,
            "stack": number(r"(\d+) bytes stack frame"),
            "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads")}


def assemble(ptx, *options, arch="sm_90"):
    """ptxas's resource report: {"ok", "registers", "smem", "stack", "spill_stores",
    "spill_loads", "report"}, or {"ok": False, "error"}."""
    exe = ptxas_path()
    if exe is None:
        return {"ok": False, "error": "ptxas not found"}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        proc = subprocess.run([exe, f"-arch={arch}", "-v", *options, str(src),
                               "-o", str(Path(tmp) / "k.cubin")], capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return {"ok": False, "error": f"ptxas failed: {report[-1000:]}"}
    return {"ok": True, "report": report, **parse_ptxas(report)}


def kernel_signatures():
    """[(name "module.kernel", python function, signature)] of every kernel in kernels/."""
    import kernels
    out = []
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        for kernel, sig in getattr(module, "PTX_SIGNATURES", []):
            out.append((f"{info.name}.{kernel.py_func.__name__}", kernel.py_func, sig))
    return out


def compile_all(name, pyfunc, sig, results, ccs=CCS):
    """results[name][cc] = {"ok": True, "ptx"} or {"ok": False, "error"}, for every cc."""
    from numba import cuda
    for cc in ccs:
        key = f"{cc[0]}.{cc[1]}"
        try:
            ptx, _ = cuda.compile_ptx(pyfunc, sig, cc=cc)
            results.setdefault(name, {})[key] = {"ok": True, "ptx": ptx}
        except Exception as e:  # report, the caller decides
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            results.setdefault(name, {})[key] = {"ok": False, "error": msg}


def compile_kernels(ccs=CCS, assemble_names=(), keep_ptx=True):
    """Every kernel compiled for `ccs`; those in assemble_names ("all": every one) also
    assembled for sm_90 (their "9.0" entry gets "ptxas")."""
    _allow_compiling_without_a_gpu()
    results = {}
    for name, pyfunc, sig in kernel_signatures():
        compile_all(name, pyfunc, sig, results, ccs)
        entry = results[name].get("9.0", {})
        if entry.get("ok") and (assemble_names == "all" or name in assemble_names):
            entry["ptxas"] = assemble(entry["ptx"])
    if not keep_ptx:
        for entry in (e for per_cc in results.values() for e in per_cc.values()):
            entry.pop("ptx", None)
            entry.get("ptxas", {}).pop("report", None)
    return results


def _cc(text):
    major, minor = text.split(".")
    return int(major), int(minor)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivgg.bench.ptx",
                                description="Compile every kernel to PTX (and assemble it "
                                            "with ptxas for sm_90); print JSON.")
    p.add_argument("--cc", type=_cc, nargs="+", default=CCS, help="compute capabilities")
    p.add_argument("--ptxas", nargs="*", default=[], metavar="NAME",
                   help="kernels to assemble for sm_90 (module.kernel)")
    p.add_argument("--ptxas-all", action="store_true", help="assemble every kernel")
    p.add_argument("--no-ptx-text", action="store_true", help="leave the PTX out of the JSON")
    args = p.parse_args(argv)
    names = "all" if args.ptxas_all else set(args.ptxas)
    json.dump(compile_kernels(args.cc, names, not args.no_ptx_text), sys.stdout)


if __name__ == "__main__":
    main()
