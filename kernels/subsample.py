"""LeNet-5's trainable sub-sampling (layers S2 and S4; LeCun et al. 1998 sect. II.B, and the
compendium's LeNet-5 table): each map is averaged over window x window patches, `stride`
apart, then multiplied by a learned coefficient and shifted by a learned bias, one of each
per map -- (1 + 1) x C parameters. The squashing function comes after, as its own layer.

Shapes: x, dx (N, C, H, W); coef, bias, dcoef, dbias (C,); y, dy (N, C, P, Q) with
P = (H - window) // stride + 1, Q likewise (no padding; LeNet: window 2, stride 2).

    a[n,c,p,q]   = (1 / window^2) * sum_{i,j < window} x[n, c, p*stride + i, q*stride + j]
    y[n,c,p,q]   = coef[c] * a[n,c,p,q] + bias[c]

    dx[n,c,h,w]  = coef[c] / window^2 * sum over the (p, q) whose window holds (h, w) of
                   dy[n,c,p,q]                       (0 for pixels no window holds)
    dcoef[c]     = sum_{n,p,q} dy[n,c,p,q] * a[n,c,p,q]
    dbias[c]     = sum_{n,p,q} dy[n,c,p,q]

(LeCun adds the four inputs where we average them: the coefficient absorbs the factor 4.)
With coef 1 and bias 0 this is plain average pooling.
"""
import numpy as np
from numba import cuda, float32, int32
from numpy.lib.stride_tricks import sliding_window_view

from kernels.common import F1, F4, blocks_1d, check, check_size, launch


def output_size(H, W, window, stride):
    """(P, Q) of a window x window sub-sampling `stride` apart; ValueError if empty."""
    if window < 1 or stride < 1:
        raise ValueError(f"subsample needs window and stride >= 1, got {window}, {stride}")
    if H < window or W < window:
        raise ValueError(f"subsample window {window} does not fit the {H}x{W} input")
    return (H - window) // stride + 1, (W - window) // stride + 1


# ----------------------------------------------------------------------------------------
# NumPy reference

def _averages(x, window, stride):
    """a (N, C, P, Q): the mean of each window."""
    output_size(x.shape[2], x.shape[3], window, stride)
    windows = sliding_window_view(x, (window, window), axis=(2, 3))[:, :, ::stride, ::stride]
    return windows.mean(axis=(4, 5))


def forward_ref(x, coef, bias, window=2, stride=2):
    """y = coef * (window average of x) + bias, per channel, in x's dtype."""
    a = _averages(x, window, stride)
    return (a * coef[:, None, None] + bias[:, None, None]).astype(x.dtype, copy=False)


def backward_ref(x, coef, dy, window=2, stride=2):
    """(dx, dcoef, dbias) of forward_ref, in x's dtype."""
    a = _averages(x, window, stride)
    N, C, P, Q = dy.shape
    dx = np.zeros_like(x)
    share = dy * (coef / window**2)[:, None, None]  # what each pixel of a window receives
    for i in range(window):
        for j in range(window):
            dx[:, :, i:i + stride * (P - 1) + 1:stride, j:j + stride * (Q - 1) + 1:stride] \
                += share
    dcoef = (dy * a).sum(axis=(0, 2, 3)).astype(x.dtype, copy=False)
    dbias = dy.sum(axis=(0, 2, 3)).astype(x.dtype, copy=False)
    return dx, dcoef, dbias


# ----------------------------------------------------------------------------------------
# CUDA kernels

@cuda.jit
def subsample_forward_v1(x, coef, bias, y, window, stride):
    """One thread per y[n,c,p,q], a 1-D grid of 1-D blocks over N*C*P*Q. No shared memory.
    Overwrites y."""
    N, C = int32(x.shape[0]), int32(x.shape[1])
    P, Q = int32(y.shape[2]), int32(y.shape[3])
    i = int32(cuda.grid(1))  # [0, N*C*P*Q) plus the last block's tail
    if i >= N * C * P * Q:
        return
    q = int32(i % Q)                # [0, Q)
    p = int32((i // Q) % P)         # [0, P)
    c = int32((i // (P * Q)) % C)   # [0, C)
    n = int32(i // (C * P * Q))     # [0, N)
    acc = float32(0.0)
    for r in range(window):
        for s in range(window):
            acc += x[n, c, p * stride + r, q * stride + s]  # rows [0, H), columns [0, W)
    y[n, c, p, q] = coef[c] * (acc / float32(window * window)) + bias[c]


@cuda.jit
def subsample_backward_data_v1(dy, coef, dx, window, stride):
    """One thread per dx[n,c,h,w], a 1-D grid of 1-D blocks over N*C*H*W. No shared memory.
    A gather over the outputs whose window holds (h, w): p in [ceil((h-window+1)/stride),
    h // stride] within [0, P), q likewise. Overwrites dx (0 where no window reaches)."""
    N, C, H, W = int32(dx.shape[0]), int32(dx.shape[1]), int32(dx.shape[2]), int32(dx.shape[3])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    i = int32(cuda.grid(1))  # [0, N*C*H*W) plus the last block's tail
    if i >= N * C * H * W:
        return
    w = int32(i % W)                # [0, W)
    h = int32((i // W) % H)         # [0, H)
    c = int32((i // (H * W)) % C)   # [0, C)
    n = int32(i // (C * H * W))     # [0, N)
    p_lo = int32(max(0, (h - window + stride) // stride))   # first p whose window holds h
    p_hi = int32(min(P - 1, h // stride))                   # last one, [-1, P)
    q_lo = int32(max(0, (w - window + stride) // stride))   # likewise for columns
    q_hi = int32(min(Q - 1, w // stride))
    acc = float32(0.0)
    for p in range(p_lo, p_hi + 1):      # [0, P): empty when no window holds row h
        for q in range(q_lo, q_hi + 1):  # [0, Q)
            acc += dy[n, c, p, q]
    dx[n, c, h, w] = acc * coef[c] / float32(window * window)


BLOCK = 128  # threads of the parameter gradient's blocks: a power of two for the tree


@cuda.jit
def subsample_backward_params_v1(x, dy, dcoef, dbias, window, stride):
    """dcoef[c] and dbias[c]: block c of a 1-D grid of C blocks, BLOCK threads. Each thread
    sums a strided share of channel c's N*P*Q outputs (dy * window average, and dy), then
    two shared-memory trees of BLOCK floats add the shares. Overwrites dcoef and dbias."""
    N, P, Q = int32(dy.shape[0]), int32(dy.shape[2]), int32(dy.shape[3])
    c = int32(cuda.blockIdx.x)    # [0, C)
    t = int32(cuda.threadIdx.x)   # [0, BLOCK)
    PQ = int32(P * Q)
    scale = float32(1.0) / float32(window * window)
    acc_c, acc_b = float32(0.0), float32(0.0)
    for j in range(t, N * PQ, BLOCK):  # [0, N*P*Q): outputs (n, p, q) of channel c
        n = int32(j // PQ)                 # [0, N)
        p = int32((j - n * PQ) // Q)       # [0, P)
        q = int32(j - n * PQ - p * Q)      # [0, Q)
        a = float32(0.0)
        for r in range(window):
            for s in range(window):
                a += x[n, c, p * stride + r, q * stride + s]  # rows [0, H), columns [0, W)
        g = dy[n, c, p, q]
        acc_c += g * a * scale
        acc_b += g
    part_c = cuda.shared.array(BLOCK, float32)
    part_b = cuda.shared.array(BLOCK, float32)
    part_c[t] = acc_c
    part_b[t] = acc_b
    cuda.syncthreads()  # every share is in the arrays before anyone adds
    half = int32(BLOCK // 2)
    while half > 0:
        if t < half:
            part_c[t] += part_c[t + half]
            part_b[t] += part_b[t + half]
        cuda.syncthreads()  # this level's sums are written before the next level reads them
        half = int32(half // 2)
    if t == 0:
        dcoef[c] = part_c[0]
        dbias[c] = part_b[0]


PTX_SIGNATURES = [
    (subsample_forward_v1, (F4, F1, F1, F4, int32, int32)),
    (subsample_backward_data_v1, (F4, F1, F4, int32, int32)),
    (subsample_backward_params_v1, (F4, F4, F1, F1, int32, int32)),
]


# ----------------------------------------------------------------------------------------
# Launchers

THREADS = 128  # block size of the one-thread-per-element kernels


def _check(x_name, x, dy_name, dy, coef_name, coef, window, stride):
    """Raise ValueError unless x (N,C,H,W), dy (N,C,P,Q) and coef (C,) fit together."""
    check(x_name, x, ndim=4)
    N, C, H, W = x.shape
    P, Q = output_size(H, W, window, stride)
    check(dy_name, dy, shape=(N, C, P, Q))
    check(coef_name, coef, shape=(C,))
    check_size(x_name, x)


def forward(x, coef, bias, y, window=2, stride=2, threads=THREADS):
    """y = coef * (window average of x) + bias: x (N,C,H,W), coef and bias (C,), y (N,C,P,Q)."""
    _check("subsample x", x, "subsample y", y, "subsample coef", coef, window, stride)
    check("subsample bias", bias, shape=coef.shape)
    if y.size:
        launch(subsample_forward_v1, blocks_1d("subsample forward", y.size, threads), threads,
               x, coef, bias, y, np.int32(window), np.int32(stride))


def backward_data(dy, coef, dx, window=2, stride=2, threads=THREADS):
    """dx = dL/dx from dy (N,C,P,Q) and coef (C,) into dx (N,C,H,W)."""
    _check("subsample dx", dx, "subsample dy", dy, "subsample coef", coef, window, stride)
    if dx.size:
        launch(subsample_backward_data_v1, blocks_1d("subsample backward_data", dx.size,
                                                     threads), threads,
               dy, coef, dx, np.int32(window), np.int32(stride))


def backward_params(x, dy, dcoef, dbias, window=2, stride=2):
    """dcoef, dbias (C,) = dL/dcoef, dL/dbias from x (N,C,H,W) and dy (N,C,P,Q)."""
    _check("subsample x", x, "subsample dy", dy, "subsample dcoef", dcoef, window, stride)
    check("subsample dbias", dbias, shape=dcoef.shape)
    if dcoef.size:
        launch(subsample_backward_params_v1, dcoef.size, BLOCK, x, dy, dcoef, dbias,
               np.int32(window), np.int32(stride))
