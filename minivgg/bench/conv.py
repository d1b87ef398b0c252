"""The conv section (device cuda): every pass and kernel version of kernels/conv.py on
VGG-16's layer shapes, beside CuPy im2col + cuBLAS and PyTorch's cuDNN (TF32 off and on)."""
import math

from minivgg.bench.im2col import im2col_backward_data, im2col_backward_weight, im2col_forward
from minivgg.bench.report import markdown_table
from minivgg.bench.shapes import conv_flops, tflops
from minivgg.bench.timing import tf32

CONV_HEADER = ("layer", "shape", "pass", "version", "ms", "TFLOP/s", "cupy ms",
               "torch ms (TF32 off)", "torch ms (TF32 on)")


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


def kernel_call(pass_, version, a, shape, xp=None):
    """A no-argument call of kernels/conv.py's launcher for `pass_`, `version`, on arrays a.
    bwd-weight gets the split-K workspace the launcher asks for (allocated here, once)."""
    from kernels import conv
    st, pad = shape.stride, shape.pad
    if pass_ == "fwd":
        return lambda: conv.forward(a["x"], a["w"], a["b"], a["y"], st, pad, version=version)
    if pass_ == "bwd-data":
        return lambda: conv.backward_data(a["dy"], a["w"], a["dx"], st, pad, version=version)
    ws = None
    if version in (2, 3):  # a version the launcher lacks is reported by the launch itself
        ws_shape = conv.backward_weight_workspace(a["x"].shape, a["w"].shape, st, pad, version)
        ws = None if ws_shape is None else (xp or _module_of(a["x"])).empty(ws_shape, "float32")
    return lambda: conv.backward_weight(a["x"], a["dy"], a["dw"], st, pad, version=version,
                                        workspace=ws)


def _module_of(a):
    import numpy as np
    return np if isinstance(a, np.ndarray) else __import__("cupy")


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


def ours_ms(bench, pass_, a, shape):
    """{version label: ms} of every kernel version of `pass_`; versions missing are noted."""
    out = {}
    for v in bench.args.versions:
        try:
            call = kernel_call(pass_, v, a, shape, bench.xp)
            call()  # a version the launcher lacks raises here, before any launch
        except ValueError as e:
            if "has versions" not in str(e):
                raise
            bench.note(f"version {v} skipped for {pass_}: {e}")
            continue
        out[f"v{v}"] = bench.time(call)
    return out


def torch_ms(bench, shape, N, passes):
    """{pass: (ms TF32 off, ms TF32 on)} of cuDNN, or Nones without torch."""
    torch = bench.torch
    if torch is None:
        return {p: (None, None) for p in passes}
    calls = torch_calls(torch, shape, torch_tensors(torch, shape, N, "cuda"))
    out = {}
    for p in passes:
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
        base = bench.time(im2col_call(p, bench.xp, a, shape))
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


def conv_section(bench, out):
    a = bench.args
    rows = []
    for N in a.batch:
        for shape in a.shapes:
            if bench.out_of_time(f"conv {shape.name} N={N}"):
                continue
            bench.progress(f"conv {shape.name} N={N}")
            rows += conv_rows(bench, shape, N)
    if rows:
        out(f"\n## Conv layers of VGG-16 at {a.size} (width {a.width:g}), median of "
            f"{a.steps} after {bench.warmup} warm-up\n")
        out(markdown_table(CONV_HEADER, rows))
        out("\nFLOPs per pass = 2*N*K*P*Q*C*R*S; ms and TFLOP/s: ours. cupy: im2col + "
            "cupy.matmul (cuBLAS); torch: cuDNN, TF32 off = float32 arithmetic as ours.")
