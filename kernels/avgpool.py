"""Average pooling: over the whole map (global), and over windows.

Global:
    forward   y[n,c]       = (1 / (H*W)) * sum_{h,w} x[n,c,h,w]
    backward  dx[n,c,h,w]  = dy[n,c] / (H*W)

Shapes: x, dx (N, C, H, W); y, dy (N, C). VGG sect. 3.2, dense evaluation: the fully-
convolutional net turns a whole test image into a class score map (C = classes, H x W
depending on the image size), which is "spatially averaged (sum-pooled)" into one score
vector per image. NiN's global average pooling (Lin et al. 2014) is the same operation:
its last mlpconv layer gives one map per class, and their means are the class scores.

Windowed, window x window patches `stride` apart, no padding:
    forward   y[n,c,p,q]   = (1 / |B_pq|) * sum_{(h,w) in B_pq} x[n,c,h,w]
    backward  dx[n,c,h,w]  = sum over the windows B_pq that hold (h,w) of dy[n,c,p,q] / |B_pq|

where B_pq is the window rows [p*stride, p*stride + window) and columns [q*stride,
q*stride + window), clipped to the H x W map. Shapes: x, dx (N, C, H, W); y, dy (N, C, P,
Q), P and Q rounded down or (Caffe's ceil mode) up as for max-pooling (kernels/pool.py):
a last window that sticks out of the map is kept, and averaged over the pixels it holds,
which is Caffe's rule (and PyTorch's, without padding). GoogLeNet (Szegedy et al. 2014)
pools 5x5 with stride 3 in its auxiliary classifiers (14x14 -> 4x4 at 224) and 7x7 with
stride 1 before its last layer (7x7 -> 1x1).
"""
import numpy as np
from numba import cuda, float32, int32

from kernels.common import F1, F2, F4, blocks_1d, check, check_size, launch
from kernels.pool import side


# ----------------------------------------------------------------------------------------
# NumPy reference

def forward_ref(x):
    return x.mean(axis=(2, 3), dtype=x.dtype)


def backward_ref(dy, H, W):
    N, C = dy.shape
    return np.broadcast_to((dy / (H * W))[:, :, None, None], (N, C, H, W)).copy()


def window_output_size(H, W, window, stride, ceil_mode=False):
    """(P, Q) of windowed average pooling: max-pooling's sizes, no padding."""
    if window < 1 or stride < 1:
        raise ValueError(f"average-pool window {window} and stride {stride} must be >= 1")
    if H < window or W < window:
        raise ValueError(f"average-pool input {H}x{W} is smaller than the {window}x{window} "
                         "window")
    return side(H, window, stride, ceil_mode), side(W, window, stride, ceil_mode)


def _window_counts(H, P, window, stride):
    """(P,): how many of the H rows each window p holds (window, or fewer when clipped)."""
    start = np.arange(P) * stride
    return np.minimum(start + window, H) - start


def _zero_padded(a, P, Q, window, stride):
    """a (N, C, H, W) with zero rows and columns after it up to the last window's end."""
    N, C, H, W = a.shape
    out = np.zeros((N, C, max(H, (P - 1) * stride + window), max(W, (Q - 1) * stride + window)),
                   dtype=a.dtype)
    out[:, :, :H, :W] = a
    return out


def _offset(a, i, j, P, Q, stride):
    """The (N, C, P, Q) view of a holding offset (i, j) of every window."""
    return a[:, :, i:i + (P - 1) * stride + 1:stride, j:j + (Q - 1) * stride + 1:stride]


def window_forward_ref(x, window, stride, ceil_mode=False):
    """Window sums over the zero-padded map (the padding adds nothing), divided by the
    number of pixels each window holds."""
    H, W = x.shape[2:]
    P, Q = window_output_size(H, W, window, stride, ceil_mode)
    xp = _zero_padded(x, P, Q, window, stride)
    total = sum(_offset(xp, i, j, P, Q, stride) for i in range(window) for j in range(window))
    counts = np.outer(_window_counts(H, P, window, stride), _window_counts(W, Q, window, stride))
    return (total / counts).astype(x.dtype, copy=False)


def window_backward_ref(dy, H, W, window, stride):
    """dx (N, C, H, W): each window's dy / |B_pq| added to every pixel it holds."""
    N, C, P, Q = dy.shape
    counts = np.outer(_window_counts(H, P, window, stride), _window_counts(W, Q, window, stride))
    share = dy / counts
    dxp = _zero_padded(np.zeros((N, C, H, W), dtype=dy.dtype), P, Q, window, stride)
    for i in range(window):
        for j in range(window):
            # for one offset, distinct windows hit distinct pixels: += does not collide
            _offset(dxp, i, j, P, Q, stride)[...] += share
    return dxp[:, :, :H, :W].astype(dy.dtype, copy=False)


# ----------------------------------------------------------------------------------------
# CUDA kernels

# Threads per block of the forward: a power of two, which the tree reduction halves down
# to one. Score maps are small (a 10x10 map at test scale 512), so 64 threads, each
# summing a couple of elements, keep the block busy without idling most of it.
BLOCK = 64


@cuda.jit
def avgpool_forward_v1(x, y):
    """x (R, L) = the (N*C, H*W) rows of the score map, y (R,) = the flat (N, C) means.
    One block of BLOCK threads per row r = blockIdx.x; the grid is R blocks. Shared memory:
    BLOCK float32 partial sums. Overwrites y.

    Each thread sums the row's elements t, t + BLOCK, t + 2*BLOCK, ... (coalesced: adjacent
    threads read adjacent elements), then the block adds its BLOCK partial sums in a tree,
    halving the number of active threads each step.
    """
    partial = cuda.shared.array(BLOCK, dtype=float32)
    L = int32(x.shape[1])
    r = int32(cuda.blockIdx.x)  # [0, R)
    t = int32(cuda.threadIdx.x)  # [0, BLOCK)
    acc = float32(0.0)
    for j in range(t, L, BLOCK):  # [t, L) in steps of BLOCK: loop count from L
        acc += x[r, j]
    partial[t] = acc
    cuda.syncthreads()  # every partial sum is written before anyone reads a neighbour's
    half = int32(BLOCK // 2)
    while half > 0:
        if t < half:
            partial[t] += partial[t + half]  # t + half in [half, 2*half)
        cuda.syncthreads()  # this level is complete before the next level reads it
        half //= int32(2)
    if t == 0:
        y[r] = partial[0] / float32(L)


@cuda.jit
def avgpool_backward_v1(dy, dx):
    """dy (N,C), dx (N,C,H,W). One thread per dx element, a 1-D grid of 1-D blocks over
    the N*C*H*W elements, w fastest. No shared memory. Overwrites dx.
    """
    N, C, H, W = int32(dx.shape[0]), int32(dx.shape[1]), int32(dx.shape[2]), int32(dx.shape[3])
    i = int32(cuda.grid(1))  # [0, blocks*threads)
    if i >= N * C * H * W:
        return
    n = i // (C * H * W)  # [0, N)
    c = (i // (H * W)) % C  # [0, C)
    h = (i // W) % H  # [0, H)
    w = i % W  # [0, W)
    dx[n, c, h, w] = dy[n, c] / float32(H * W)


@cuda.jit
def avgpool_window_forward_v1(x, y, window, stride):
    """x (N,C,H,W), y (N,C,P,Q). One thread per output y[n,c,p,q], a 1-D grid of 1-D
    blocks over the N*C*P*Q outputs, q fastest. No shared memory. Overwrites y.

    The window is clipped to the map (ceil mode) and averaged over the pixels it holds.
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
    h0 = p * stride  # [0, H): the window's first row
    w0 = q * stride  # [0, W): its first column
    h1 = min(h0 + window, H)  # (h0, H]: one past its last row, clipped
    w1 = min(w0 + window, W)  # (w0, W]
    acc = float32(0.0)
    for h in range(h0, h1):  # [h0, h1)
        for w in range(w0, w1):  # [w0, w1)
            acc += x[n, c, h, w]
    y[n, c, p, q] = acc / float32((h1 - h0) * (w1 - w0))


@cuda.jit
def avgpool_window_backward_v1(dy, dx, window, stride):
    """dy (N,C,P,Q), dx (N,C,H,W). One thread per INPUT element dx[n,c,h,w], a 1-D grid of
    1-D blocks over the N*C*H*W inputs, w fastest. No shared memory. Overwrites dx.

    A gather over the windows that hold (h, w), each adding its dy divided by the pixels
    it holds: every dx element has one writer (no atomics, a fixed order of the sum), and
    pixels no window reaches (floor mode's last rows) get 0.
    """
    N, C, H, W = int32(dx.shape[0]), int32(dx.shape[1]), int32(dx.shape[2]), int32(dx.shape[3])
    P, Q = int32(dy.shape[2]), int32(dy.shape[3])
    i = int32(cuda.grid(1))  # [0, blocks*threads)
    if i >= N * C * H * W:
        return
    n = i // (C * H * W)  # [0, N)
    c = (i // (H * W)) % C  # [0, C)
    h = (i // W) % H  # [0, H)
    w = i % W  # [0, W)
    # Windows p with p*stride <= h < p*stride + window, and p < P:
    p0 = max(int32(0), (h - window + stride) // stride)  # [0, P]: ceil((h-window+1)/stride)
    p1 = min(P, h // stride + int32(1))  # [0, P]: one past the last such p
    q0 = max(int32(0), (w - window + stride) // stride)  # [0, Q]
    q1 = min(Q, w // stride + int32(1))  # [0, Q]
    acc = float32(0.0)
    for p in range(p0, p1):  # [p0, p1)
        rows = min(p * stride + window, H) - p * stride  # [1, window]: the rows it holds
        for q in range(q0, q1):  # [q0, q1)
            cols = min(q * stride + window, W) - q * stride  # [1, window]
            acc += dy[n, c, p, q] / float32(rows * cols)
    dx[n, c, h, w] = acc


PTX_SIGNATURES = [
    (avgpool_forward_v1, (F2, F1)),
    (avgpool_backward_v1, (F2, F4)),
    (avgpool_window_forward_v1, (F4, F4, int32, int32)),
    (avgpool_window_backward_v1, (F4, F4, int32, int32)),
]


# ----------------------------------------------------------------------------------------
# Launchers

THREADS = 256  # the backward's block size


def _check(x4, y2, x_name, y_name):
    check(f"avgpool {x_name}", x4, ndim=4)
    check(f"avgpool {y_name}", y2, shape=x4.shape[:2])
    if x4.shape[2] * x4.shape[3] == 0:
        raise ValueError(f"avgpool {x_name} {tuple(x4.shape)} has no pixels to average")
    check_size(f"avgpool {x_name}", x4)


def forward(x, y):
    """One block per (n, c) row: the grid is N*C blocks (at most 2^31 - 1 along x)."""
    _check(x, y, "x", "y")
    N, C, H, W = x.shape
    if y.size:
        launch(avgpool_forward_v1, N * C, BLOCK, x.reshape(N * C, H * W), y.reshape(N * C))


def backward(dy, dx, threads=THREADS):
    _check(dx, dy, "dx", "dy")
    if dx.size:
        blocks = blocks_1d("avgpool backward", dx.size, threads)
        launch(avgpool_backward_v1, blocks, threads, dy, dx)


def _check_window(x4, pooled, window, stride, x_name, pooled_name):
    """Validate x (or dx) and the pooled array (y or dy): (P, Q) must be a mode's size."""
    check(f"average-pool {x_name}", x4, ndim=4)
    check(f"average-pool {pooled_name}", pooled, ndim=4)
    N, C, H, W = x4.shape
    sizes = {window_output_size(H, W, window, stride, ceil) for ceil in (False, True)}
    if tuple(pooled.shape[:2]) != (N, C) or tuple(pooled.shape[2:]) not in sizes:
        want = " or ".join(str((N, C) + s) for s in sorted(sizes))
        raise ValueError(f"average-pool {pooled_name} has shape {tuple(pooled.shape)} for "
                         f"{x_name} {tuple(x4.shape)}, window {window}, stride {stride}: "
                         f"expected {want}")
    check_size(f"average-pool {x_name}", x4)


def window_forward(x, y, window, stride, threads=THREADS):
    """y (N,C,P,Q) = the window means of x (N,C,H,W); y's shape says floor or ceil mode."""
    _check_window(x, y, window, stride, "x", "y")
    if y.size:
        blocks = blocks_1d("average-pool window forward", y.size, threads)
        launch(avgpool_window_forward_v1, blocks, threads, x, y, np.int32(window),
               np.int32(stride))


def window_backward(dy, dx, window, stride, threads=THREADS):
    """dx (N,C,H,W) = dL/dx from dy (N,C,P,Q)."""
    _check_window(dx, dy, window, stride, "dx", "dy")
    if dx.size:
        blocks = blocks_1d("average-pool window backward", dx.size, threads)
        launch(avgpool_window_backward_v1, blocks, threads, dy, dx, np.int32(window),
               np.int32(stride))
