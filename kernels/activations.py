"""The squashing functions of LeNet-5 (LeCun et al. 1998; the compendium's LeNet-5 section:
"tanh or sigmoid"): every unit up to F6 passes its weighted sum through one of them.

    tanh      y = tanh(x)                          dx = dy * (1 - y^2)
    sigmoid   y = 1 / (1 + exp(-x))                dx = dy * y * (1 - y)
              = (1 + tanh(x / 2)) / 2

Any shape; the kernels see the arrays flattened to (T,) with T = x.size. Both derivatives
are functions of the output y, so backward needs only y (as ReLU's does). The sigmoid is
computed through tanh: no exp(-x) to overflow for large negative x (on the GPU that would
be an inf, harmless; in the simulator, which runs the kernel as Python, an OverflowError),
and one transcendental per element either way.

LeNet-5 itself squashes with A tanh(S a), A = 1.7159, S = 2/3 (LeCun et al. 1998, appendix
A), so that targets of +-1 sit where the curve bends most; with a soft-max output, plain
tanh serves as well, and that is what the compendium names.
"""
import math

import numpy as np
from numba import cuda, float32, int32

from kernels.common import F1, blocks_1d, check, check_size, launch

KINDS = ("tanh", "sigmoid")


# ----------------------------------------------------------------------------------------
# NumPy reference

def forward_ref(kind, x):
    """y = tanh(x) or sigmoid(x), in x's dtype."""
    _kind(kind)
    if kind == "tanh":
        return np.tanh(x)
    return (0.5 + 0.5 * np.tanh(0.5 * x)).astype(x.dtype, copy=False)


def backward_ref(kind, y, dy):
    """dL/dx from the forward's output y and dL/dy, in dy's dtype."""
    _kind(kind)
    slope = 1 - y * y if kind == "tanh" else y * (1 - y)
    return (dy * slope).astype(dy.dtype, copy=False)


def _kind(kind):
    if kind not in KINDS:
        raise ValueError(f"activation must be one of {', '.join(KINDS)}, not {kind!r}")


# ----------------------------------------------------------------------------------------
# CUDA kernels: grid-stride loops, as relu.py's

@cuda.jit
def tanh_forward_v1(x, y):
    """x, y (T,). Grid-stride loop, one element per thread per pass. Overwrites y."""
    T = int32(x.shape[0])
    i = int32(cuda.grid(1))  # [0, gridsize)
    stride = int32(cuda.gridsize(1))
    while i < T:
        y[i] = math.tanh(x[i])
        i += stride


@cuda.jit
def tanh_backward_v1(y, dy, dx):
    """y, dy, dx (T,). Grid-stride loop, one element per thread per pass. Overwrites dx."""
    T = int32(y.shape[0])
    i = int32(cuda.grid(1))  # [0, gridsize)
    stride = int32(cuda.gridsize(1))
    while i < T:
        v = y[i]
        dx[i] = dy[i] * (float32(1.0) - v * v)
        i += stride


@cuda.jit
def sigmoid_forward_v1(x, y):
    """x, y (T,). Grid-stride loop, one element per thread per pass. Overwrites y."""
    T = int32(x.shape[0])
    i = int32(cuda.grid(1))  # [0, gridsize)
    stride = int32(cuda.gridsize(1))
    while i < T:
        y[i] = float32(0.5) + float32(0.5) * math.tanh(float32(0.5) * x[i])
        i += stride


@cuda.jit
def sigmoid_backward_v1(y, dy, dx):
    """y, dy, dx (T,). Grid-stride loop, one element per thread per pass. Overwrites dx."""
    T = int32(y.shape[0])
    i = int32(cuda.grid(1))  # [0, gridsize)
    stride = int32(cuda.gridsize(1))
    while i < T:
        v = y[i]
        dx[i] = dy[i] * v * (float32(1.0) - v)
        i += stride


PTX_SIGNATURES = [
    (tanh_forward_v1, (F1, F1)),
    (tanh_backward_v1, (F1, F1, F1)),
    (sigmoid_forward_v1, (F1, F1)),
    (sigmoid_backward_v1, (F1, F1, F1)),
]


# ----------------------------------------------------------------------------------------
# Launchers: flat views of C-contiguous arrays, a grid sized from T and capped at
# max_blocks (the loop strides over the rest), as relu.py's.

THREADS = 256
MAX_BLOCKS = 65536
_FORWARD = {"tanh": tanh_forward_v1, "sigmoid": sigmoid_forward_v1}
_BACKWARD = {"tanh": tanh_backward_v1, "sigmoid": sigmoid_backward_v1}


def forward(kind, x, y, threads=THREADS, max_blocks=MAX_BLOCKS):
    """y = kind(x), kind "tanh" or "sigmoid"; x, y float32 of one shape."""
    _kind(kind)
    check(f"{kind} x", x)
    check(f"{kind} y", y, shape=x.shape)
    check_size(f"{kind} x", x)
    T = x.size
    if T:
        blocks = blocks_1d(kind, T, threads, max_blocks)
        launch(_FORWARD[kind], blocks, threads, x.reshape(T), y.reshape(T))


def backward(kind, y, dy, dx, threads=THREADS, max_blocks=MAX_BLOCKS):
    """dx = dL/dx from the forward's output y and dy."""
    _kind(kind)
    check(f"{kind} y", y)
    check(f"{kind} dy", dy, shape=y.shape)
    check(f"{kind} dx", dx, shape=y.shape)
    check_size(f"{kind} y", y)
    T = y.size
    if T:
        blocks = blocks_1d(kind, T, threads, max_blocks)
        launch(_BACKWARD[kind], blocks, threads, y.reshape(T), dy.reshape(T), dx.reshape(T))
