"""ReLU: y = max(x, 0), the non-linearity after every conv and hidden FC layer (sect. 2.1).

    forward   y[i]  = max(x[i], 0)
    backward  dx[i] = dy[i] if y[i] > 0 else 0

Any shape; the kernels see the arrays flattened to (T,) with T = x.size. At x = 0 the
derivative is taken as 0 (as PyTorch does), so backward needs only y.
"""
import numpy as np
from numba import cuda, float32, int32

from kernels.common import F1, ceil_div, check, stream_of


# ----------------------------------------------------------------------------------------
# NumPy reference

def forward_ref(x):
    return np.maximum(x, 0).astype(x.dtype, copy=False)


def backward_ref(y, dy):
    return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)


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
# Launchers: flat views of C-contiguous arrays, a grid sized from T (capped: the loop
# strides over the rest).

THREADS = 256
MAX_BLOCKS = 65536


def _grid(T):
    return min(ceil_div(T, THREADS), MAX_BLOCKS)


def forward(x, y):
    check("relu x", x)
    check("relu y", y, shape=x.shape)
    T = x.size
    if T:
        relu_forward_v1[_grid(T), THREADS, stream_of(x)](x.reshape(T), y.reshape(T))


def backward(y, dy, dx):
    check("relu y", y)
    check("relu dy", dy, shape=y.shape)
    check("relu dx", dx, shape=y.shape)
    T = y.size
    if T:
        relu_backward_v1[_grid(T), THREADS, stream_of(y)](y.reshape(T), dy.reshape(T),
                                                          dx.reshape(T))
