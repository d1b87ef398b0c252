"""Markdown output: numbers to 3 significant digits, tables, the machine and versions."""
import math
import os
import platform
import subprocess

import numpy as np

from minivgg.errors import UserError


def fmt(v):
    """A number to 3 significant digits without exponent; None -> '-'."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    digits = max(0, 2 - int(math.floor(math.log10(abs(v))))) if v else 0
    return f"{v:.{digits}f}"


def fmt_bytes(n):
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{fmt(n / size)} {unit}"
    return f"{n} B"


def markdown_table(header, rows):
    """A GitHub markdown table; cells padded to their column's width, numbers right-aligned."""
    cells = [[fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(header))]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]

    def line(items):
        return "| " + " | ".join(s.rjust(w) if num else s.ljust(w)
                                 for s, w, num in zip(items, widths, numeric)) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                          for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in cells])


def _is_number(s):
    try:
        float(s.split()[0])
        return True
    except (ValueError, IndexError):
        return s == "-"


def nvidia_driver():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.split()
        return out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_vectors():
    """'znver3, AVX2': the CPU as LLVM (Numba's compiler) names it, and its widest vectors,
    which the cpu device's compiled loops are built for (kernels/conv/outer3x3.py's block
    differs between AVX2 and AVX-512, and so do the figures)."""
    import llvmlite.binding as llvm
    features = llvm.get_host_cpu_features()
    widest = ("AVX-512" if features.get("avx512f") else
              "AVX2" if features.get("avx2") else "no AVX2")
    return f"{llvm.get_host_cpu_name()}, {widest}"


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def header_lines(device, torch):
    """The machine and the versions the figures were measured with."""
    import numba
    lines = [f"- Python {platform.python_version()}, NumPy {np.__version__}, "
             f"Numba {numba.__version__}"]
    if device == "cuda":
        import cupy
        rt = cupy.cuda.runtime
        name = rt.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else name
        v = rt.runtimeGetVersion()
        drv = nvidia_driver() or f"CUDA driver API {rt.driverGetVersion()}"
        lines.insert(0, f"- GPU: {name}, driver {drv}, CUDA runtime {v // 1000}.{v % 1000 // 10}, "
                        f"CuPy {cupy.__version__}")
    else:
        env = ", ".join(f"{k}={os.environ[k]}" for k in THREAD_VARS if k in os.environ)
        lines.insert(0, f"- CPU: {cpu_name()} ({cpu_vectors()}), {os.cpu_count()} logical cores"
                        f"{', ' + env if env else ''} (device {device})")
    if torch is None:
        lines.append("- PyTorch: not used (not installed, or --no-torch)")
    elif device == "cuda":
        lines.append(f"- PyTorch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
                     f"{torch.backends.cudnn.version()}), cudnn.benchmark on")
    else:
        lines.append(f"- PyTorch {torch.__version__} on the CPU (TF32 does not apply)")
    return lines


def write_text(path, text, flag="--out"):
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({e.strerror})") from None
