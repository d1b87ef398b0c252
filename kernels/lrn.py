"""Local response normalisation across channels (AlexNet sect. 3.3; VGG's config A-LRN).

    s[n,c,h,w] = k + alpha * sum_{c' in window(c)} x[n,c',h,w]^2
    forward    y[n,c,h,w] = x[n,c,h,w] * s[n,c,h,w]^(-beta)
    backward   dx_c = dy_c * s_c^(-beta)
                      - 2 alpha beta x_c * sum_{j : c in window(j)} dy_j x_j s_j^(-beta-1)

(the backward at one (n, h, w), from d y_j / d x_c = [j = c] s_j^-beta
 - beta x_j s_j^(-beta-1) * 2 alpha x_c [c in window(j)]).

window(c) = [c - size//2, c + (size-1)//2] clipped to [0, C): `size` channels centred on c
(for even sizes one more before c than after, as PyTorch does), fewer at the ends.
Shapes: x, y, dx, dy (N, C, H, W). AlexNet's constants: size n = 5, k = 2, alpha = 1e-4,
beta = 0.75 (the paper's text prints alpha as "104": it is 10^-4).

Alpha convention: we follow the AlexNet formula, alpha multiplies the plain SUM of squares.
Caffe and PyTorch (nn.LocalResponseNorm, F.local_response_norm) multiply the MEAN over the
window (alpha / size times the sum), so their alpha = our alpha * size: torch alpha = 5e-4
gives AlexNet's layer. PyTorch also divides by `size` at the clipped ends (zero padding),
exactly like our sum does.
"""
import math

import numpy as np
from numba import cuda, float32, int32

from kernels.common import F4, blocks_1d, check, check_size, launch


# ----------------------------------------------------------------------------------------
# NumPy reference

def _window_sum(v, lo, hi):
    """out[:, c] = sum_{d in [lo, hi]} v[:, c + d], terms outside [0, C) being zero."""
    C = v.shape[1]
    out = np.zeros_like(v)
    for d in range(max(lo, 1 - C), min(hi, C - 1) + 1):  # offsets that reach a channel
        if d >= 0:  # (the loop over offsets is vectorised over everything else)
            out[:, :C - d] += v[:, d:]
        else:
            out[:, -d:] += v[:, :C + d]
    return out


def _scale(x, size, k, alpha):
    """s = k + alpha * (sum of x^2 over window(c)), same shape as x."""
    return k + alpha * _window_sum(x * x, -(size // 2), (size - 1) // 2)


def forward_ref(x, size=5, k=2.0, alpha=1e-4, beta=0.75):
    return (x * _scale(x, size, k, alpha) ** -beta).astype(x.dtype, copy=False)


def backward_ref(x, dy, size=5, k=2.0, alpha=1e-4, beta=0.75):
    s = _scale(x, size, k, alpha)
    t = dy * x * s ** (-beta - 1)
    # j with c in window(j) <=> j in [c - (size-1)//2, c + size//2]: the mirrored window
    back = _window_sum(t, -((size - 1) // 2), size // 2)
    return (dy * s ** -beta - 2 * alpha * beta * x * back).astype(dy.dtype, copy=False)


# ----------------------------------------------------------------------------------------
# CUDA kernels. Both map one thread to one element (n, c, h, w) over a 1-D grid of 1-D
# blocks, w fastest: neighbouring threads read neighbouring pixels of the same channels,
# so every read of the channel loops is coalesced. The window sum is written out in each
# kernel rather than shared as a device function: compiling a kernel that calls a
# @cuda.jit(device=True) function asks the driver for the current GPU, so rung 3
# (compile_ptx on a machine without a GPU) could not check it.

@cuda.jit
def lrn_forward_v1(x, y, size, k, alpha, beta):
    """x, y (N,C,H,W). One thread per output element y[n,c,h,w] (grid mapping above).
    No shared memory. Overwrites y."""
    N, C, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    i = int32(cuda.grid(1))  # [0, blocks*threads)
    if i >= N * C * H * W:
        return
    n = i // (C * H * W)  # [0, N)
    c = (i // (H * W)) % C  # [0, C)
    h = (i // W) % H  # [0, H)
    w = i % W  # [0, W)
    c0 = max(int32(0), c - size // int32(2))  # [0, c]: window(c)'s first channel
    c1 = min(C, c + (size - int32(1)) // int32(2) + int32(1))  # (c, C]: one past its last
    acc = float32(0.0)
    for cc in range(c0, c1):  # [c0, c1)
        v = x[n, cc, h, w]
        acc += v * v
    s = k + alpha * acc
    y[n, c, h, w] = x[n, c, h, w] * math.pow(s, -beta)


@cuda.jit
def lrn_backward_v1(x, dy, dx, size, k, alpha, beta):
    """x, dy, dx (N,C,H,W). One thread per dx element dx[n,c,h,w] (grid mapping above).
    It recomputes s_j for every channel j whose window holds c - size sums of size
    squares, cheaper than storing s in the forward for size 5. No shared memory.
    Overwrites dx."""
    N, C, H, W = int32(x.shape[0]), int32(x.shape[1]), int32(x.shape[2]), int32(x.shape[3])
    i = int32(cuda.grid(1))  # [0, blocks*threads)
    if i >= N * C * H * W:
        return
    n = i // (C * H * W)  # [0, N)
    c = (i // (H * W)) % C  # [0, C)
    h = (i // W) % H  # [0, H)
    w = i % W  # [0, W)
    # c in window(j) <=> j in [c - (size-1)//2, c + size//2], clipped to [0, C)
    j0 = max(int32(0), c - (size - int32(1)) // int32(2))  # [0, c]
    j1 = min(C, c + size // int32(2) + int32(1))  # (c, C]: one past the last j
    back = float32(0.0)  # sum_j dy_j x_j s_j^(-beta-1)
    s_c = float32(1.0)  # s at channel c; c is one of the j (window(c) holds c)
    for j in range(j0, j1):  # [j0, j1)
        c0 = max(int32(0), j - size // int32(2))  # [0, j]: window(j)'s first channel
        c1 = min(C, j + (size - int32(1)) // int32(2) + int32(1))  # (j, C]
        acc = float32(0.0)
        for cc in range(c0, c1):  # [c0, c1)
            v = x[n, cc, h, w]
            acc += v * v
        s = k + alpha * acc
        back += dy[n, j, h, w] * x[n, j, h, w] * math.pow(s, -beta) / s
        if j == c:
            s_c = s
    dx[n, c, h, w] = (dy[n, c, h, w] * math.pow(s_c, -beta)
                      - float32(2.0) * alpha * beta * x[n, c, h, w] * back)


PTX_SIGNATURES = [
    (lrn_forward_v1, (F4, F4, int32, float32, float32, float32)),
    (lrn_backward_v1, (F4, F4, F4, int32, float32, float32, float32)),
]


# ----------------------------------------------------------------------------------------
# Launchers: 1-D grids of `threads`-thread blocks over the N*C*H*W elements (int32
# indices: blocks_1d checks they cannot wrap).

THREADS = 256


def _check(x, others, size, k, alpha, beta):
    """x (N,C,H,W) and the arrays `others` {name: array} of x's shape; s must stay > 0."""
    check("lrn x", x, ndim=4)
    for name, a in others.items():
        check(f"lrn {name}", a, shape=x.shape)
    if size < 1 or k <= 0 or alpha < 0 or beta < 0:
        raise ValueError(f"lrn needs size >= 1, k > 0, alpha >= 0, beta >= 0; got size "
                         f"{size}, k {k}, alpha {alpha}, beta {beta}")
    check_size("lrn x", x)


def _scalars(size, k, alpha, beta):
    return np.int32(size), np.float32(k), np.float32(alpha), np.float32(beta)


def forward(x, y, size, k, alpha, beta, threads=THREADS):
    _check(x, {"y": y}, size, k, alpha, beta)
    if x.size:
        blocks = blocks_1d("lrn forward", x.size, threads)
        launch(lrn_forward_v1, blocks, threads, x, y, *_scalars(size, k, alpha, beta))


def backward(x, dy, dx, size, k, alpha, beta, threads=THREADS):
    _check(x, {"dy": dy, "dx": dx}, size, k, alpha, beta)
    if x.size:
        blocks = blocks_1d("lrn backward", x.size, threads)
        launch(lrn_backward_v1, blocks, threads, x, dy, dx, *_scalars(size, k, alpha, beta))
