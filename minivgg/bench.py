"""`python -m minivgg.bench`: how fast the conv kernels and the whole training step run.

What it measures (device cuda):

1. Every distinct conv layer shape of VGG-16 (config D) at 224: conv1_1 ... conv5_3, a shape
   that repeats (conv3_3 is conv3_2's) timed once, at batch 64 and 32. For each pass,
   forward (y = conv(x, w) + b), backward-data (dx) and backward-weight (dw), and each
   version of kernels/conv.py's launchers (`version=`): milliseconds, the median of --steps
   launches after --warmup, timed with CUDA events on CuPy's current stream, and TFLOP/s,
   FLOPs = 2*N*K*P*Q*C*R*S for every pass. Beside them
     (a) what a user would otherwise write with CuPy: im2col (a strided window view of x,
         copied into a (C*R*S, N*P*Q) matrix) and one cuBLAS matmul (col2im for dx);
     (b) PyTorch's cuDNN (F.conv2d, aten.convolution_backward via torch.nn.grad) with TF32
         off, the same float32 arithmetic as ours, and with TF32 on in its own column;
         cudnn.benchmark is on, so cuDNN picks its fastest algorithm per shape.
2. The whole training step (forward, soft-max loss, backward, SGD with momentum) of configs
   A-E at 224, with the kernels minivgg.ops launches: images/s, and peak GPU memory (bytes
   in use from CuPy's pool during a step, tracked with a memory hook), next to the same net
   in PyTorch (torchvision's layout, TF32 off; torch.cuda.max_memory_allocated).

Prints markdown tables (--out FILE writes them to a file too). Without a usable GPU it
says so in one line and exits 0. --device cpu times the NumPy references (what the cpu
device trains with; version "ref") and PyTorch on the CPU instead, at a small default size
(32 pixels, width 1/8), so the command does something useful anywhere.
"""
import argparse
import contextlib
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from minivgg import backend
from minivgg.errors import UserError, run_cli

PASSES = ("fwd", "bwd-data", "bwd-weight")
CONV_HEADER = ("layer", "shape", "pass", "version", "ms", "TFLOP/s", "cupy ms",
               "torch ms (TF32 off)", "torch ms (TF32 on)")
STEP_HEADER = ("config", "batch", "images/s", "peak memory", "torch images/s", "torch peak")
DEFAULTS = {"cuda": dict(size=224, width=1.0), "cpu": dict(size=32, width=0.125)}
NUM_CLASSES = 1000


# -- what is timed: shapes, FLOPs ------------------------------------------------------------
@dataclass(frozen=True)
class ConvShape:
    """A conv layer: x (N, C, H, W), w (K, C, R, S). `same`: later layers of that shape."""
    name: str
    C: int
    K: int
    H: int
    W: int
    R: int = 3
    S: int = 3
    stride: int = 1
    pad: int = 1
    same: tuple = ()

    @property
    def PQ(self):
        return ((self.H + 2 * self.pad - self.R) // self.stride + 1,
                (self.W + 2 * self.pad - self.S) // self.stride + 1)

    def label(self):
        return self.name + (f" (+{', '.join(self.same)})" if self.same else "")

    def describe(self, N):
        return f"{N}x{self.C}x{self.H}x{self.W} -> {self.K} ({self.R}x{self.S})"


def conv_flops(N, C, K, P, Q, R, S):
    """Floating-point operations of one conv pass: N*K*P*Q outputs x C*R*S multiply-adds x 2."""
    return 2 * N * K * P * Q * C * R * S


def tflops(flops, ms):
    return flops / (ms * 1e-3) / 1e12 if ms else None


def vgg16_layers(size=224, width=1.0):
    """The conv layers of VGG-16 (config D) at `size`, identical shapes merged into the first."""
    from minivgg.model import plan  # after the device is set: it imports the kernels
    shapes, C, H = {}, 3, size
    for row in plan("D", width=width, input_size=size):
        if row.kind == "conv":
            spec = row.spec
            key = (C, row.out_shape[0], H, spec.kernel, spec.stride, spec.pad)
            if key in shapes:
                first = shapes[key]
                shapes[key] = ConvShape(**{**first.__dict__, "same": first.same + (row.name,)})
            else:
                shapes[key] = ConvShape(row.name, C, row.out_shape[0], H, H, spec.kernel,
                                        spec.kernel, spec.stride, spec.pad)
        C, H = row.out_shape[0], row.out_shape[1]
    return list(shapes.values())


def select_layers(layers, names):
    """The shapes `names` ask for (any VGG-16 conv name; a repeat names its shape); UserError."""
    by_name = {n: s for s in layers for n in (s.name, *s.same)}
    chosen = []
    for n in names:
        if n not in by_name:
            raise UserError(f"unknown layer {n!r}: choose among {', '.join(by_name)}")
        if by_name[n] not in chosen:
            chosen.append(by_name[n])
    return chosen


# -- the CuPy baseline: im2col + one matmul, for any array module (numpy too) ----------------
def im2col(xp, x, R, S, stride, pad):
    """cols (C*R*S, N*P*Q), cols[(c,r,s), (n,p,q)] = x_padded[n, c, p*stride+r, q*stride+s]."""
    N, C, H, W = x.shape
    P, Q = (H + 2 * pad - R) // stride + 1, (W + 2 * pad - S) // stride + 1
    xpad = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    sn, sc, sh, sw = xpad.strides
    view = xp.lib.stride_tricks.as_strided(
        xpad, (C, R, S, N, P, Q), (sc, sh, sw, sn, sh * stride, sw * stride))
    return xp.ascontiguousarray(view).reshape(C * R * S, N * P * Q)


def _rows_of(xp, dy):
    """dy (N, K, P, Q) as the (K, N*P*Q) matrix the GEMMs take."""
    return xp.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(dy.shape[1], -1)


def im2col_forward(xp, x, w, b, stride=1, pad=0):
    """y = w (K, CRS) @ cols (CRS, NPQ) + b, back to (N, K, P, Q)."""
    N, K, (_, _, R, S) = x.shape[0], w.shape[0], w.shape
    cols = im2col(xp, x, R, S, stride, pad)
    y = xp.matmul(w.reshape(K, -1), cols) + b.reshape(K, 1)
    P, Q = (x.shape[2] + 2 * pad - R) // stride + 1, (x.shape[3] + 2 * pad - S) // stride + 1
    return xp.ascontiguousarray(y.reshape(K, N, P, Q).transpose(1, 0, 2, 3))


def im2col_backward_weight(xp, x, dy, R, S, stride=1, pad=0):
    """dw = dy (K, NPQ) @ cols^T (NPQ, CRS), as (K, C, R, S)."""
    K, C = dy.shape[1], x.shape[1]
    return xp.matmul(_rows_of(xp, dy), im2col(xp, x, R, S, stride, pad).T).reshape(K, C, R, S)


def im2col_backward_data(xp, dy, w, H, W, stride=1, pad=0):
    """dcols = w^T (CRS, K) @ dy (K, NPQ), then col2im: each tap's slice added back into dx."""
    N, K, P, Q = dy.shape
    _, C, R, S = w.shape
    dcols = xp.matmul(w.reshape(K, -1).T, _rows_of(xp, dy)).reshape(C, R, S, N, P, Q)
    dxp = xp.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=dy.dtype)
    for r in range(R):
        for s in range(S):
            dxp[:, :, r:r + stride * (P - 1) + 1:stride, s:s + stride * (Q - 1) + 1:stride] \
                += dcols[:, r, s].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(dxp[:, :, pad:pad + H, pad:pad + W])


# -- timing -----------------------------------------------------------------------------------
def _host_once(fn):
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def _cupy_once(fn):
    """Milliseconds between CUDA events recorded around fn() on CuPy's current stream."""
    import cupy
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end)


def _torch_once(fn):
    import torch
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def median_ms(fn, once, steps, warmup, budget_s=None):
    """Median of up to `steps` timed calls after `warmup` untimed ones; stops early (after at
    least one) once the timed calls add up to `budget_s` seconds."""
    times = []
    for i in range(warmup + max(1, steps)):
        ms = once(fn)
        if i >= warmup:
            times.append(ms)
            if budget_s and sum(times) > 1e3 * budget_s:
                break
    return statistics.median(times)


# -- the conv passes: ours, the im2col baseline, torch ---------------------------------------
def _randn(xp, shape, seed, scale=1.0):
    return xp.random.default_rng(seed).standard_normal(shape, dtype=xp.float32) * scale


def conv_arrays(xp, shape, N, seed=0):
    """Inputs (x, w, b, dy) and outputs (y, dx, dw) of one layer's three passes."""
    s, (P, Q) = shape, shape.PQ
    fan_in = s.C * s.R * s.S
    a = dict(x=_randn(xp, (N, s.C, s.H, s.W), seed),
             w=_randn(xp, (s.K, s.C, s.R, s.S), seed + 1, math.sqrt(2 / fan_in)),
             b=_randn(xp, (s.K,), seed + 2), dy=_randn(xp, (N, s.K, P, Q), seed + 3))
    a.update(y=xp.empty_like(a["dy"]), dx=xp.empty_like(a["x"]), dw=xp.empty_like(a["w"]))
    return a


def kernel_call(pass_, version, a, shape):
    """A no-argument call of kernels/conv.py's launcher for `pass_`, `version`, on arrays a."""
    from kernels import conv
    st, pad = shape.stride, shape.pad
    if pass_ == "fwd":
        return lambda: conv.forward(a["x"], a["w"], a["b"], a["y"], st, pad, version=version)
    if pass_ == "bwd-data":
        return lambda: conv.backward_data(a["dy"], a["w"], a["dx"], st, pad, version=version)
    return lambda: conv.backward_weight(a["x"], a["dy"], a["dw"], st, pad, version=version)


def reference_call(pass_, a, shape):
    """The cpu device's NumPy work for `pass_` (kernels/conv.py's references; bwd-data is
    backward_ref's dx half, GEMM + col2im, which im2col_backward_data is with xp=numpy)."""
    from kernels import conv
    st, pad = shape.stride, shape.pad
    if pass_ == "fwd":
        return lambda: conv.forward_ref(a["x"], a["w"], a["b"], st, pad)
    if pass_ == "bwd-data":
        return lambda: im2col_backward_data(np, a["dy"], a["w"], shape.H, shape.W, st, pad)
    return lambda: conv.backward_ref(a["x"], a["w"], a["dy"], st, pad, need_dx=False)


def im2col_call(pass_, xp, a, shape):
    st, pad = shape.stride, shape.pad
    if pass_ == "fwd":
        return lambda: im2col_forward(xp, a["x"], a["w"], a["b"], st, pad)
    if pass_ == "bwd-data":
        return lambda: im2col_backward_data(xp, a["dy"], a["w"], shape.H, shape.W, st, pad)
    return lambda: im2col_backward_weight(xp, a["x"], a["dy"], shape.R, shape.S, st, pad)


def torch_tensors(torch, shape, N, device):
    """x, w, b, dy of one layer as torch tensors on `device`."""
    s, (P, Q) = shape, shape.PQ
    g = torch.Generator(device=device).manual_seed(0)
    scale = math.sqrt(2 / (s.C * s.R * s.S))
    return dict(x=torch.randn(N, s.C, s.H, s.W, device=device, generator=g),
                w=torch.randn(s.K, s.C, s.R, s.S, device=device, generator=g) * scale,
                b=torch.randn(s.K, device=device, generator=g),
                dy=torch.randn(N, s.K, P, Q, device=device, generator=g))


def torch_calls(torch, shape, t):
    """{pass: no-argument call} of PyTorch's conv on the tensors t (on cuda: cuDNN)."""
    F, grad, st, pad = torch.nn.functional, torch.nn.grad, shape.stride, shape.pad
    return {"fwd": lambda: F.conv2d(t["x"], t["w"], t["b"], st, pad),
            "bwd-data": lambda: grad.conv2d_input(t["x"].shape, t["w"], t["dy"], st, pad),
            "bwd-weight": lambda: grad.conv2d_weight(t["x"], t["w"].shape, t["dy"], st, pad)}


@contextlib.contextmanager
def tf32(torch, on):
    """TF32 for cuDNN convs and cuBLAS matmuls on or off (the legacy flags), then restored."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# -- the conv section -------------------------------------------------------------------------
class Bench:
    """The run's settings and the device-specific pieces: array module, timers, torch."""

    def __init__(self, args, device, torch):
        self.args, self.device, self.torch = args, device, torch
        gpu = device == "cuda"
        self.xp = backend.xp()
        self.once, self.torch_once = (_cupy_once, _torch_once) if gpu else (_host_once,) * 2
        self.warmup = max(1, args.warmup) if gpu else args.warmup  # compile, cuDNN autotune
        self.notes = []

    def time(self, fn, once=None):
        return median_ms(fn, once or self.once, self.args.steps, self.warmup,
                         self.args.max_seconds)

    def free(self):
        if self.device == "cuda":
            self.xp.get_default_memory_pool().free_all_blocks()
            if self.torch is not None:
                self.torch.cuda.empty_cache()

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)


def ours_ms(bench, pass_, a, shape):
    """{version label: ms} of our implementation of `pass_`; versions missing are noted."""
    if bench.device == "cpu":
        return {"ref": bench.time(reference_call(pass_, a, shape))}
    out = {}
    for v in bench.args.versions:
        call = kernel_call(pass_, v, a, shape)
        try:
            call()  # a version the launcher lacks raises here, before any launch
        except ValueError as e:
            if "has versions" not in str(e):
                raise
            bench.note(f"version {v} skipped for {pass_}: {e}")
            continue
        out[f"v{v}"] = bench.time(call)
    return out


def torch_ms(bench, shape, N, passes):
    """{pass: (ms TF32 off, ms TF32 on)}; TF32 on is None on the cpu (no TF32 there)."""
    torch = bench.torch
    if torch is None:
        return {p: (None, None) for p in passes}
    calls = torch_calls(torch, shape, torch_tensors(torch, shape, N, bench.device))
    out = {}
    for p in passes:
        if bench.device == "cpu":
            out[p] = (bench.time(calls[p], bench.torch_once), None)
            continue
        with tf32(torch, False):
            off = bench.time(calls[p], bench.torch_once)
        with tf32(torch, True):
            on = bench.time(calls[p], bench.torch_once)
        out[p] = (off, on)
    return out


def conv_rows(bench, shape, N):
    """Table rows of one layer shape at batch N: every pass, every version."""
    a = conv_arrays(bench.xp, shape, N)
    flops = conv_flops(N, shape.C, shape.K, *shape.PQ, shape.R, shape.S)
    rows, passes = [], bench.args.passes
    for p in passes:
        ours = ours_ms(bench, p, a, shape)
        base = bench.time(im2col_call(p, bench.xp, a, shape)) if bench.device == "cuda" else None
        for label, ms in ours.items():
            rows.append([shape.label(), shape.describe(N), p, label, ms, tflops(flops, ms),
                         base])
    del a
    bench.free()
    theirs = torch_ms(bench, shape, N, passes)
    bench.free()
    for row in rows:
        row += theirs[row[2]]
    return rows


# -- the whole training step ------------------------------------------------------------------
def fc_width(width):
    """FC1/FC2 channels: the paper's 4096, scaled with the convs' width (at least 16)."""
    return max(16, int(round(4096 * width)))


def our_step(cfg, N, size, width, seed=0):
    """One SGD step of VGG `cfg` through minivgg.ops (ops' default kernel versions).
    backward() frees each step's graph, so activations do not pile up across steps."""
    from minivgg import ops
    from minivgg.model import VGG
    from minivgg.optim import SGD
    from minivgg.tape import Tensor
    xp = backend.xp()
    model = VGG(cfg, NUM_CLASSES, width, fc_width(width), size, init="kaiming", seed=seed)
    opt = SGD(model.named_parameters(), lr=1e-4)
    x = _randn(xp, (N, 3, size, size), seed)
    labels = xp.asarray(np.arange(N) % NUM_CLASSES, dtype=np.int32)

    def step():
        opt.zero_grad()
        loss = ops.softmax_cross_entropy(model(Tensor(x)), labels)
        loss.backward()
        opt.step()
    return step


def torch_vgg(torch, cfg, size, width):
    """The same net in PyTorch, laid out as torchvision's VGG (in-place ReLUs)."""
    from minivgg.model import plan
    nn, layers, C = torch.nn, [], 3
    for r in plan(cfg, NUM_CLASSES, width, fc_width(width), size):
        if r.index.startswith("classifier."):
            break
        if r.kind == "conv":
            layers.append(nn.Conv2d(C, r.out_shape[0], r.kernel, r.stride, r.padding))
        elif r.kind == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif r.kind == "lrn":
            layers.append(nn.LocalResponseNorm(r.spec.size, r.spec.alpha, r.spec.beta, r.spec.k))
        else:
            layers.append(nn.MaxPool2d(r.kernel, r.stride))
        C, side = r.out_shape[0], r.out_shape[1]
    f = fc_width(width)
    return nn.Sequential(*layers, nn.Flatten(),
                         nn.Linear(C * side * side, f), nn.ReLU(True), nn.Dropout(0.5),
                         nn.Linear(f, f), nn.ReLU(True), nn.Dropout(0.5),
                         nn.Linear(f, NUM_CLASSES))


def torch_step(torch, cfg, N, size, width, device):
    model = torch_vgg(torch, cfg, size, width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(N, 3, size, size, device=device)
    labels = torch.arange(N, device=device) % NUM_CLASSES

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    return step


def cupy_peak_bytes(step):
    """Peak bytes in use from CuPy's pool during one step (a memory hook counts them)."""
    import cupy
    pool = cupy.get_default_memory_pool()

    class Peak(cupy.cuda.MemoryHook):
        name = "minivgg.bench.peak"

        def __init__(self):
            self.used = self.peak = pool.used_bytes()

        def malloc_postprocess(self, **kw):
            self.used += kw["mem_size"]
            self.peak = max(self.peak, self.used)

        def free_postprocess(self, **kw):
            self.used -= kw["mem_size"]

    gc.collect()
    hook = Peak()
    with hook:
        step()
        cupy.cuda.get_current_stream().synchronize()
    return hook.peak


def our_step_row(bench, cfg, N):
    """(images/s, peak bytes) of our step: on cpu NumPy's peak (tracemalloc), one step."""
    a = bench.args
    if bench.device == "cpu":
        import tracemalloc
        gc.collect()
        tracemalloc.start()
        try:
            our_step(cfg, N, a.size, a.width)()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    step = our_step(cfg, N, a.size, a.width)
    ms = bench.time(step)
    if bench.device == "cuda":
        peak = cupy_peak_bytes(step)
    del step
    gc.collect()
    bench.free()
    return N * 1e3 / ms, peak


def torch_step_row(bench, cfg, N):
    """(images/s, peak bytes or None) of the PyTorch step, TF32 off."""
    torch, a = bench.torch, bench.args
    if torch is None:
        return None, None
    with tf32(torch, False):
        step = torch_step(torch, cfg, N, a.size, a.width, bench.device)
        ms = bench.time(step, bench.torch_once)
        peak = None
        if bench.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
    del step
    bench.free()
    return N * 1e3 / ms, peak


# -- output -----------------------------------------------------------------------------------
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


def _nvidia_driver():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.split()
        return out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


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
        drv = _nvidia_driver() or f"CUDA driver API {rt.driverGetVersion()}"
        lines.insert(0, f"- GPU: {name}, driver {drv}, CUDA runtime {v // 1000}.{v % 1000 // 10}, "
                        f"CuPy {cupy.__version__}")
    else:
        env = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                           "MKL_NUM_THREADS") if k in os.environ)
        lines.insert(0, f"- CPU: {_cpu_name()}, {os.cpu_count()} logical cores"
                        f"{', ' + env if env else ''} (device cpu: the NumPy references)")
    if torch is None:
        lines.append("- PyTorch: not used (not installed, or --no-torch)")
    elif device == "cuda":
        lines.append(f"- PyTorch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
                     f"{torch.backends.cudnn.version()}), cudnn.benchmark on")
    else:
        lines.append(f"- PyTorch {torch.__version__} on the CPU, {torch.get_num_threads()} "
                     "threads (TF32 does not apply)")
    return lines


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- the command line -------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minivgg.bench",
        description="Time the conv kernels (every version) on VGG-16's layers against CuPy "
                    "im2col + cuBLAS and PyTorch cuDNN, and the whole training step of "
                    "configs A-E against PyTorch; print markdown tables.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"],
                   default="cpu" if os.environ.get("MINIVGG_DEVICE") == "cpu" else "cuda",
                   help="cuda: the kernels on the GPU; cpu: the NumPy references and PyTorch "
                        "on the CPU, at a small size")
    p.add_argument("--batch", type=int, nargs="+", default=[64, 32], help="batch sizes N")
    p.add_argument("--size", type=int, help="input side (default 224 on cuda, 32 on cpu)")
    p.add_argument("--width", type=float,
                   help="multiplier of the conv channels and the FC width "
                        "(default 1 on cuda, 0.125 on cpu)")
    p.add_argument("--layers", nargs="*", metavar="NAME",
                   help="VGG-16 conv layers to time (default: every distinct shape, "
                        "conv1_1 ... conv5_1; a repeated shape such as conv3_3 is conv3_2's)")
    p.add_argument("--passes", nargs="*", choices=PASSES, default=list(PASSES))
    p.add_argument("--versions", type=int, nargs="+", default=[1, 2, 3],
                   help="kernel versions to time; those kernels/conv.py lacks are skipped")
    p.add_argument("--configs", nargs="*", default=list("ABCDE"),
                   help="configurations for the whole training step (none: skip it)")
    p.add_argument("--steps", type=int, default=10, help="timed runs; the median is reported")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed runs first (at least 1 on cuda: compilation, cuDNN autotuning)")
    p.add_argument("--max-seconds", type=float, default=5.0,
                   help="stop timing one measurement once its timed runs add up to this")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.add_argument("--out", metavar="FILE", help="also write the markdown to FILE")
    return p


def check_args(args):
    d = DEFAULTS[args.device]
    args.size = d["size"] if args.size is None else args.size
    args.width = d["width"] if args.width is None else args.width
    for name in ("size", "steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or any(n < 1 for n in args.batch):
        raise UserError("--warmup must be >= 0 and every --batch >= 1")
    from minivgg import configs
    for c in args.configs:
        configs.get(c)  # an unknown config: one line, before any work
    layers = vgg16_layers(args.size, args.width)  # a size too small for VGG: one line
    args.shapes = layers if args.layers is None else select_layers(layers, args.layers)


def load_torch(args):
    """torch, or None (not installed, --no-torch, or no CUDA in it for device cuda)."""
    if args.no_torch:
        return None
    try:
        import torch
    except ImportError:
        return None
    if args.device == "cuda" and not torch.cuda.is_available():
        print("note: this PyTorch has no CUDA; its columns stay empty", file=sys.stderr)
        return None
    torch.backends.cudnn.benchmark = True
    return torch


def no_gpu_message():
    """None if CuPy has a usable GPU, else the one line to print instead of benchmarking."""
    usable, why = backend._gpu_status()
    if usable:
        return None
    return (f"minivgg.bench: no CUDA GPU available ({why}); run on a machine with an NVIDIA "
            "GPU, or pass --device cpu to time the NumPy references")


def conv_section(bench, out):
    a = bench.args
    rows = []
    for N in a.batch:
        for shape in a.shapes:
            _progress(f"conv {shape.name} N={N}")
            rows += conv_rows(bench, shape, N)
    if rows:
        out(f"\n## Conv layers of VGG-16 at {a.size} (width {a.width:g}), median of "
            f"{a.steps} after {bench.warmup} warm-up\n")
        out(markdown_table(CONV_HEADER, rows))
        out("\nFLOPs per pass = 2*N*K*P*Q*C*R*S; ms and TFLOP/s: ours. " + (
            "cupy: im2col + cupy.matmul (cuBLAS); torch: cuDNN, TF32 off = float32 "
            "arithmetic as ours." if bench.device == "cuda" else
            "version ref: the NumPy references (bwd-data: backward_ref's GEMM + col2im); "
            "cupy: not on cpu; torch: PyTorch's CPU conv."))


def step_section(bench, out):
    a = bench.args
    rows = []
    for N in a.batch:
        for cfg in a.configs:
            _progress(f"step {cfg} N={N}")
            ips, peak = our_step_row(bench, cfg, N)
            t_ips, t_peak = torch_step_row(bench, cfg, N)
            rows.append([cfg, str(N), ips, fmt_bytes(peak), t_ips, fmt_bytes(t_peak)])
    if rows:
        out(f"\n## Whole training step at {a.size} (width {a.width:g}): forward, loss, "
            f"backward, SGD\n")
        out(markdown_table(STEP_HEADER, rows))
        out("\npeak memory: bytes in use from CuPy's pool; torch: max_memory_allocated; "
            "torch with TF32 off." if bench.device == "cuda" else
            "\npeak memory: NumPy's allocations (tracemalloc), model and step; torch on "
            "the CPU (its peak is not measured).")


def _progress(text):
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.device == "cuda":
        msg = no_gpu_message()
        if msg:
            print(msg)
            return 0
    backend.set_device(args.device)
    check_args(args)
    torch = load_torch(args)
    bench, lines = Bench(args, args.device, torch), []

    def out(text):
        print(text, flush=True)
        lines.append(text)
    out(f"# minivgg.bench ({args.device})\n")
    out("\n".join(header_lines(args.device, torch)))
    out(f"- command: python -m minivgg.bench {' '.join(argv if argv is not None else sys.argv[1:])}")
    conv_section(bench, out)
    step_section(bench, out)
    if bench.notes:
        out("\n" + "\n".join(f"- {n}" for n in bench.notes))
    if args.out:
        _write(args.out, "\n".join(lines) + "\n")
    return 0


def _write(path, text):
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise UserError(f"--out {path}: cannot write ({e.strerror})") from None


if __name__ == "__main__":
    sys.exit(run_cli(main))
