"""Max-pooling: the maximum over window x window patches, `stride` apart, `pad` rows and
columns of padding that never win (-inf) around the input.

    forward   y[n,c,p,q] = max_{i,j in [0,window)} x[n,c, p*stride - pad + i, q*stride - pad + j]
              (over the pixels inside x)
    backward  dx[n,c,h,w] = sum over the windows (p,q) whose FIRST maximum (row-major order
                            within the window) is at (h,w) of dy[n,c,p,q]

Shapes: x, dx (N, C, H, W); y, dy (N, C, P, Q). VGG pools 2x2 with stride 2 (sect. 2.1);
AlexNet pools 3x3 with stride 2, windows that overlap (its sect. 3.4); GoogLeNet's Inception
modules pool 3x3 with stride 1 and padding 1, which keeps the map's size (Szegedy et al.
2014, Fig. 2: the pooling branch beside the convolutions).

Output size. Floor mode (PyTorch's default): P = (H + 2 pad - window) // stride + 1, so a
last partial window is dropped. Ceil mode (Caffe's, and PyTorch's ceil_mode=True):
P = ceil((H + 2 pad - window) / stride) + 1, so a last partial window is kept, clipped at
the border; like PyTorch, a window that would start in the right padding or past it is
then dropped. Same for Q. pad < window, so every window holds at least one input pixel.
The launchers need no mode argument: y's shape says which one it is.

At a tie the gradient goes to the first maximum only (as PyTorch and Caffe do), so the
gradient sums to dy however many maxima a window has. The max is not differentiable there;
this is one valid subgradient.
"""
import functools

import numpy as np
from numba import cuda, float32, int32, njit

from kernels.common import F4, blocks_1d, ceil_div, check, check_size, launch


def output_size(H, W, window, stride, ceil_mode=False, pad=0):
    """(P, Q) for an H x W input; see the module docstring for the two modes."""
    if not 0 <= pad < window:
        raise ValueError(f"max-pool padding {pad} must be in [0, {window}) for a "
                         f"{window}x{window} window")
    if H + 2 * pad < window or W + 2 * pad < window:
        padded = f" padded by {pad}" if pad else ""
        raise ValueError(f"max-pool input {H}x{W}{padded} is smaller than the "
                         f"{window}x{window} window")
    return side(H, window, stride, ceil_mode, pad), side(W, window, stride, ceil_mode, pad)


def side(H, window, stride, ceil_mode=False, pad=0):
    """One output side (output_size without the checks; windowed average pooling's too)."""
    if not ceil_mode:
        return (H + 2 * pad - window) // stride + 1
    P = ceil_div(H + 2 * pad - window, stride) + 1
    if (P - 1) * stride >= H + pad:  # the last window would start in the padding: no pixel
        P -= 1
    return P


# ----------------------------------------------------------------------------------------
# NumPy reference. Pad x with -inf: `pad` rows and columns before it, and after it up to
# the last window's end, so padded and clipped windows are whole windows whose padding
# never wins; then loop over the window offsets (i, j), each a strided view holding that
# offset of every window.

def _padded(x, window, stride, ceil_mode, pad=0):
    N, C, H, W = x.shape
    P, Q = output_size(H, W, window, stride, ceil_mode, pad)
    Hp, Wp = (P - 1) * stride + window, (Q - 1) * stride + window
    xp = np.full((N, C, max(H + pad, Hp), max(W + pad, Wp)), -np.inf, dtype=x.dtype)
    xp[:, :, pad:pad + H, pad:pad + W] = x
    return xp, P, Q


def _offset(a, i, j, P, Q, stride):
    """The (N, C, P, Q) view of a holding offset (i, j) of every window."""
    return a[:, :, i:i + (P - 1) * stride + 1:stride, j:j + (Q - 1) * stride + 1:stride]


def _argmax(x, window, stride, ceil_mode, pad=0):
    """Max and first argmax (offset i*window + j) of every window, (N, C, P, Q) each."""
    xp, P, Q = _padded(x, window, stride, ceil_mode, pad)
    # Which padded positions hold a pixel of x: a window's first pixel INSIDE x starts its
    # maximum (as the kernel does), so a window of -inf pixels still routes its gradient
    # to one of them, never to the padding.
    inside = np.zeros(xp.shape[2:], dtype=bool)
    inside[pad:pad + x.shape[2], pad:pad + x.shape[3]] = True
    best = _offset(xp, 0, 0, P, Q, stride).copy()
    arg = np.zeros(best.shape, dtype=np.int32)
    taken = np.zeros(best.shape, dtype=bool)  # the window has met a pixel of x
    for i in range(window):
        for j in range(window):
            v = _offset(xp, i, j, P, Q, stride)
            here = _offset(inside[None, None], i, j, P, Q, stride)
            later = here & (~taken | (v > best))  # strict: a tie keeps the earlier offset
            best = np.where(later, v, best)
            arg = np.where(later, i * window + j, arg)
            taken |= here
    return best, arg


def forward_ref(x, window, stride, ceil_mode=False, pad=0):
    return _argmax(x, window, stride, ceil_mode, pad)[0]


def forward_ref_arg(x, window, stride, ceil_mode=False, pad=0):
    """(y, arg): forward_ref's output and each window's first argmax, for backward_ref."""
    return _argmax(x, window, stride, ceil_mode, pad)


def backward_ref(x, dy, window, stride, ceil_mode=False, arg=None, pad=0):
    """dx: dy routed to each window's first maximum. arg: forward_ref_arg's, if at hand."""
    N, C, H, W = x.shape
    if arg is None:
        arg = _argmax(x, window, stride, ceil_mode, pad)[1]
    xp, P, Q = _padded(x, window, stride, ceil_mode, pad)
    dxp = np.zeros(xp.shape, dtype=dy.dtype)
    for i in range(window):
        for j in range(window):
            # for one offset, distinct windows hit distinct pixels: += does not collide
            _offset(dxp, i, j, P, Q, stride)[...] += np.where(arg == i * window + j, dy, 0)
    return dxp[:, :, pad:pad + H, pad:pad + W]


# ----------------------------------------------------------------------------------------
# Fast CPU path (what the cpu device trains with; tests/test_cpu_fast.py checks it against
# the reference): the loops of the CUDA kernels, compiled for the CPU by Numba (@njit), one
# window after another. Forward keeps each window's first argmax as PyTorch does, so
# backward is a scatter of dy into zeros. Two forward loops: where every window lies
# inside x (no padding, no clipped last window: VGG's 2x2/2, AlexNet's 3x3/2) window and
# stride are constants to the compiler, which unrolls the window (with them as arguments
# the 2x2 forward took 30x as long); padded or clipped windows (GoogLeNet's) take a loop
# that clips each window to x, as pool_forward_v1 does. Why not NumPy: its max over
# strided views is window^2 passes, and finding each window's first maximum again in
# backward took 8 more (2.5-3.9x PyTorch's backward; these loops, at VGG's shapes: forward
# 0.04-0.8x PyTorch's, backward 0.4-0.65x; at GoogLeNet's, 4-6x and 20-40x faster than
# the reference). Compiled on first use (about 1 s) and cached beside this file
# (cache=True), once per window shape and dtype.


def windows_inside(x, window, stride, ceil_mode=False, pad=0):
    """Does every window lie inside x (no padding, no clipped last window)?"""
    H, W = x.shape[2:]
    return _inside(H, W, *output_size(H, W, window, stride, ceil_mode, pad), window, stride,
                   pad)


def _inside(H, W, P, Q, window, stride, pad):
    """windows_inside, given the output's size P x Q."""
    return pad == 0 and (P - 1) * stride + window <= H and (Q - 1) * stride + window <= W


@functools.cache
def _forward_inside(window, stride):
    """The forward loop for one window shape, every window inside x, compiled when first
    asked for: window and stride are constants to the compiler."""
    @njit(cache=True)
    def forward(x, y, arg):
        """x (N,C,H,W); y, arg (N,C,P,Q), arg the index h*W + w of each window's first
        maximum."""
        N, C, H, W = x.shape
        P, Q = y.shape[2], y.shape[3]
        for n in range(N):
            for c in range(C):
                for p in range(P):
                    for q in range(Q):
                        top, left = p * stride, q * stride
                        best, at = x[n, c, top, left], top * W + left
                        for i in range(window):
                            for j in range(window):
                                v = x[n, c, top + i, left + j]
                                later = v > best  # strict: a tie keeps the first maximum
                                best = v if later else best  # selects, not branches: a
                                at = (top + i) * W + left + j if later else at  # coin flip
                        y[n, c, p, q] = best
                        arg[n, c, p, q] = at
    return forward


@njit(cache=True)
def _forward_clipped(x, y, arg, window, stride, pad):
    """As _forward_inside, for any window: each one clipped to x (pool_forward_v1's)."""
    N, C, H, W = x.shape
    P, Q = y.shape[2], y.shape[3]
    for n in range(N):
        for c in range(C):
            for p in range(P):
                top = p * stride - pad  # the window's first row; < 0 in the padding
                h0, h1 = max(top, 0), min(top + window, H)  # [h0, h1): its rows in x
                for q in range(Q):
                    left = q * stride - pad
                    w0, w1 = max(left, 0), min(left + window, W)  # [w0, w1): its columns
                    best, at = x[n, c, h0, w0], h0 * W + w0
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            if x[n, c, h, w] > best:  # strict: a tie keeps the first
                                best, at = x[n, c, h, w], h * W + w
                    y[n, c, p, q] = best
                    arg[n, c, p, q] = at


@njit(cache=True)
def _backward_cpu(arg, dy, dx):
    """dx (N,C,H*W) zeroed; arg, dy (N,C,P,Q). Adds dy at each window's argmax (windows
    that overlap can share one: +=, in a fixed order)."""
    N, C, P, Q = dy.shape
    for n in range(N):
        for c in range(C):
            for p in range(P):
                for q in range(Q):
                    dx[n, c, arg[n, c, p, q]] += dy[n, c, p, q]


def forward_fast(x, window, stride, ceil_mode=False, pad=0):
    """(y, arg): forward_ref's y and each window's first argmax (index h*W + w)."""
    N, C, H, W = x.shape
    P, Q = output_size(H, W, window, stride, ceil_mode, pad)
    y, arg = np.empty((N, C, P, Q), x.dtype), np.empty((N, C, P, Q), np.int32)
    x = np.ascontiguousarray(x)
    if _inside(H, W, P, Q, window, stride, pad):
        _forward_inside(window, stride)(x, y, arg)
    else:
        _forward_clipped(x, y, arg, window, stride, pad)
    return y, arg


def backward_fast(arg, dy, x_shape):
    """backward_ref's dx (shape x_shape), from forward_fast's arg."""
    N, C, H, W = x_shape
    dx = np.zeros((N, C, H * W), dy.dtype)
    _backward_cpu(arg, np.ascontiguousarray(dy), dx)
    return dx.reshape(x_shape)


# ----------------------------------------------------------------------------------------
# CUDA kernels

@cuda.jit
def pool_forward_v1(x, y, window, stride, pad):
    """x (N,C,H,W), y (N,C,P,Q). One thread per output element y[n,c,p,q], a 1-D grid of
    1-D blocks over the N*C*P*Q outputs, q fastest (adjacent threads read nearby x).
    No shared memory. Overwrites y.

    The window starts `pad` rows and columns before p*stride, q*stride and is clipped to x
    (padding and ceil mode); it always holds at least one pixel of x (pad < window).
    """
    N, C, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    P, Q = int32(y.shape[2]), int32(y.shape[3])
    i = int32(cuda.grid(1))  # [0, blocks*threads)
    if i >= N * C * P * Q:
        return
    n = i // (C * P * Q)  # [0, N)
    c = (i // (P * Q)) % C  # [0, C)
    p = (i // Q) % P  # [0, P)
    q = i % Q  # [0, Q)
    h0 = max(p * stride - pad, int32(0))  # [0, H): the window's first row inside x
    w0 = max(q * stride - pad, int32(0))  # [0, W): its first column inside x
    h1 = min(p * stride - pad + window, H)  # (h0, H]: one past its last row, clipped
    w1 = min(q * stride - pad + window, W)  # (w0, W]
    best = x[n, c, h0, w0]
    for h in range(h0, h1):  # [h0, h1)
        for w in range(w0, w1):  # [w0, w1)
            v = x[n, c, h, w]
            if v > best:  # strict, as in the reference
                best = v
    y[n, c, p, q] = best


@cuda.jit
def pool_backward_v1(x, dy, dx, window, stride, pad):
    """x, dx (N,C,H,W), dy (N,C,P,Q). One thread per INPUT element dx[n,c,h,w], a 1-D grid
    of 1-D blocks over the N*C*H*W inputs, w fastest. No shared memory. Overwrites dx.

    The thread visits every window that contains (h, w), recomputes that window's first
    argmax, and adds dy[n,c,p,q] if it is (h, w). Why a gather and not a scatter (one
    thread per output adding dy into dx at its argmax): overlapping windows (3x3/2) can
    share an argmax, so a scatter needs float atomics, whose order - and so whose rounded
    sum - changes from run to run, and dx must be zeroed first. The gather gives each dx
    element one writer, a fixed summation order, bit-identical results, and no memset, at
    the price of recomputing each argmax ceil(window/stride)^2 times.
    """
    N, C, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    i = int32(cuda.grid(1))  # [0, blocks*threads)
    if i >= N * C * H * W:
        return
    n = i // (C * H * W)  # [0, N)
    c = (i // (H * W)) % C  # [0, C)
    h = (i // W) % H  # [0, H)
    w = i % W  # [0, W)
    # Windows p with p*stride - pad <= h < p*stride - pad + window, and p < P:
    p0 = max(int32(0), (h + pad - window + stride) // stride)  # [0, P]: ceil((h+pad-w+1)/s)
    p1 = min(P, (h + pad) // stride + int32(1))  # [0, P]: one past the last such p
    q0 = max(int32(0), (w + pad - window + stride) // stride)  # [0, Q]
    q1 = min(Q, (w + pad) // stride + int32(1))  # [0, Q]
    acc = float32(0.0)
    for p in range(p0, p1):  # [p0, p1)
        for q in range(q0, q1):  # [q0, q1)
            h0 = max(p * stride - pad, int32(0))  # [0, h]: the window's first row inside x
            w0 = max(q * stride - pad, int32(0))  # [0, w]
            bh, bw = h0, w0  # the argmax so far, row-major scan as in the forward
            best = x[n, c, h0, w0]
            for hh in range(h0, min(p * stride - pad + window, H)):  # [h0, H)
                for ww in range(w0, min(q * stride - pad + window, W)):  # [w0, W)
                    v = x[n, c, hh, ww]
                    if v > best:
                        best, bh, bw = v, hh, ww
            if bh == h and bw == w:
                acc += dy[n, c, p, q]
    dx[n, c, h, w] = acc


PTX_SIGNATURES = [
    (pool_forward_v1, (F4, F4, int32, int32, int32)),
    (pool_backward_v1, (F4, F4, F4, int32, int32, int32)),
]


# ----------------------------------------------------------------------------------------
# Launchers: 1-D grids of `threads`-thread blocks sized from the element count (int32
# indices: blocks_1d checks they cannot wrap; a 224x224x64 VGG layer allows a batch of 650).

THREADS = 256


def _check(x, out, window, stride, pad, out_name):
    """Validate x and the pooled array `out` (y or dy): (P, Q) must be a mode's size."""
    check("max-pool x", x, ndim=4)
    check(f"max-pool {out_name}", out, ndim=4)
    if window < 1 or stride < 1:
        raise ValueError(f"max-pool window {window} and stride {stride} must be >= 1")
    N, C, H, W = x.shape
    sizes = {output_size(H, W, window, stride, ceil, pad) for ceil in (False, True)}
    if tuple(out.shape[:2]) != (N, C) or tuple(out.shape[2:]) not in sizes:
        want = " or ".join(str((N, C) + s) for s in sorted(sizes))
        raise ValueError(f"max-pool {out_name} has shape {tuple(out.shape)} for x "
                         f"{tuple(x.shape)}, window {window}, stride {stride}, pad {pad}: "
                         f"expected {want}")
    check_size("max-pool x", x)


def forward(x, y, window, stride, pad=0, threads=THREADS):
    _check(x, y, window, stride, pad, "y")
    if y.size:
        blocks = blocks_1d("max-pool forward", y.size, threads)
        launch(pool_forward_v1, blocks, threads, x, y, np.int32(window), np.int32(stride),
               np.int32(pad))


def backward(x, dy, dx, window, stride, pad=0, threads=THREADS):
    _check(x, dy, window, stride, pad, "dy")
    check("max-pool dx", dx, shape=x.shape)
    if dx.size:
        blocks = blocks_1d("max-pool backward", dx.size, threads)
        launch(pool_backward_v1, blocks, threads, x, dy, dx, np.int32(window),
               np.int32(stride), np.int32(pad))
