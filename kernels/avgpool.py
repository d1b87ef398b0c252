"""Global average pooling: the spatial mean of each channel of a class score map.

    forward   y[n,c]       = (1 / (H*W)) * sum_{h,w} x[n,c,h,w]
    backward  dx[n,c,h,w]  = dy[n,c] / (H*W)

Shapes: x, dx (N, C, H, W); y, dy (N, C). VGG sect. 3.2, dense evaluation: the fully-
convolutional net turns a whole test image into a class score map (C = classes, H x W
depending on the image size), which is "spatially averaged (sum-pooled)" into one score
vector per image.
"""
import numpy as np
from numba import cuda, float32, int32

from kernels.common import F1, F2, F4, blocks_1d, check, check_size, launch


# ----------------------------------------------------------------------------------------
# NumPy reference

def forward_ref(x):
    return x.mean(axis=(2, 3), dtype=x.dtype)


def backward_ref(dy, H, W):
    N, C = dy.shape
    return np.broadcast_to((dy / (H * W))[:, :, None, None], (N, C, H, W)).copy()


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


PTX_SIGNATURES = [
    (avgpool_forward_v1, (F2, F1)),
    (avgpool_backward_v1, (F2, F4)),
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
