"""ReLU: y = max(x, 0), the non-linearity after every conv and hidden FC layer (sect. 2.1).

    forward   y[i]  = max(x[i], 0)
    backward  dx[i] = dy[i] if y[i] > 0 else 0

Any shape; the kernels see the arrays flattened to (T,) with T = x.size. At x = 0 the
derivative is taken as 0 (as PyTorch does), so backward needs only y.
"""
import numpy as np
from numba import cuda, float32, int32

from kernels.common import F1, blocks_1d, check, check_size, launch


# ----------------------------------------------------------------------------------------
# NumPy reference

def forward_ref(x):
    return np.maximum(x, 0).astype(x.dtype, copy=False)


def backward_ref(y, dy):
    return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)


# Fast CPU path (the cpu device's; tests/test_cpu_fast.py checks it against the above).
# forward: NumPy's maximum against a broadcast scalar 0 takes a plain loop, against a
# contiguous array of zeros its SIMD loop, about 3x faster; so keep one read-only array
# of zeros per dtype, grown to the largest size asked for.
# backward: a multiply by the mask runs 10-20x faster than np.where on real activations,
# where y > 0 is a coin flip that np.where's branch mispredicts. Equal to backward_ref
# for finite dy (a NaN or inf in dy where y <= 0 gives NaN here, 0 there).

_zeros = {}


def forward_fast(x):
    zeros = _zeros.get(x.dtype)
    if zeros is None or zeros.size < x.size:
        zeros = np.zeros(x.size, x.dtype)
        zeros.flags.writeable = False
        _zeros[x.dtype] = zeros
    return np.maximum(x, zeros[:x.size].reshape(x.shape))


def backward_fast(y, dy):
    return np.multiply(dy, y > 0, dtype=dy.dtype)


# ----------------------------------------------------------------------------------------
# CUDA kernels

@cuda.jit
def relu_forward_v1(x, y):
    """x, y (T,). Grid-stride loop, one element per thread per pass. Overwrites y."""
    T = int32(x.shape[0])
    i = int32(cuda.grid(1))  # [0, gridsize)
    stride = int32(cuda.gridsize(1))
    while i < T:
        v = x[i]
        y[i] = v if v > float32(0.0) else float32(0.0)
        i += stride


@cuda.jit
def relu_backward_v1(y, dy, dx):
    """y, dy, dx (T,). Grid-stride loop, one element per thread per pass. Overwrites dx."""
    T = int32(y.shape[0])
    i = int32(cuda.grid(1))  # [0, gridsize)
    stride = int32(cuda.gridsize(1))
    while i < T:
        dx[i] = dy[i] if y[i] > float32(0.0) else float32(0.0)
        i += stride


PTX_SIGNATURES = [
    (relu_forward_v1, (F1, F1)),
    (relu_backward_v1, (F1, F1, F1)),
]


# ----------------------------------------------------------------------------------------
# Launchers: flat views of C-contiguous arrays, a grid sized from T and capped at
# max_blocks (the loop strides over the rest). `threads` and `max_blocks` are arguments so
# that a test can launch a few small blocks and several passes over a small array.

THREADS = 256
MAX_BLOCKS = 65536


def forward(x, y, threads=THREADS, max_blocks=MAX_BLOCKS):
    check("relu x", x)
    check("relu y", y, shape=x.shape)
    check_size("relu x", x)
    T = x.size
    if T:
        blocks = blocks_1d("relu", T, threads, max_blocks)
        launch(relu_forward_v1, blocks, threads, x.reshape(T), y.reshape(T))


def backward(y, dy, dx, threads=THREADS, max_blocks=MAX_BLOCKS):
    check("relu y", y)
    check("relu dy", dy, shape=y.shape)
    check("relu dx", dx, shape=y.shape)
    check_size("relu y", y)
    T = y.size
    if T:
        blocks = blocks_1d("relu", T, threads, max_blocks)
        launch(relu_backward_v1, blocks, threads, y.reshape(T), dy.reshape(T), dx.reshape(T))
