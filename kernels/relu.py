"""ReLU: y = max(x, 0), the non-linearity after every conv and hidden FC layer (sect. 2.1).

    forward   y[i]  = max(x[i], 0)
    backward  dx[i] = dy[i] if y[i] > 0 else 0

Any shape; the kernels see the arrays flattened to (T,) with T = x.size. At x = 0 the
derivative is taken as 0 (as PyTorch does), so backward needs only y.
"""
import numpy as np
from numba import cuda, float32, int32, prange

from kernels.common import F1, blocks_1d, check, check_size, launch
from kernels.threads import loops


# ----------------------------------------------------------------------------------------
# NumPy reference

def forward_ref(x):
    return np.maximum(x, 0).astype(x.dtype, copy=False)


def backward_ref(y, dy):
    return np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)


# Fast CPU path (the cpu device's; tests/test_cpu_fast.py checks it against the above):
# the CUDA kernels' loops compiled for the CPU by Numba (kernels/threads.py's @loops: for
# one thread and for several), one pass each. NumPy takes a plain loop for np.maximum
# against a broadcast 0 and mispredicts np.where's branch (y > 0 is a coin flip on real
# activations); a mask multiply needs two passes.
# These compile to SIMD selects: 1.3-3x faster than those, and 0.2-0.9x PyTorch's time.

# On more threads (kernels/threads.py), an array of GRAIN elements or more is shared
# among them; a smaller one is not worth waking them for (PyTorch's grain is the same).
GRAIN = 32768


@loops(cache=True)
def _forward_cpu(x, y):
    """x, y C-contiguous, of one shape (T elements), seen flat. As max(x, 0), a NaN stays
    NaN. (Flattened here, not by the caller: its two reshapes, and typing two more
    arrays for the call, took about 1 us: forward_fast at 32 x 128 3.1-3.6 -> 2.2 us.)"""
    xs, ys = x.reshape(x.size), y.reshape(y.size)
    for i in prange(xs.size):  # [0, T)
        ys[i] = 0 if xs[i] < 0 else xs[i]


@loops(cache=True)
def _backward_cpu(y, dy, dx):
    """y, dy, dx C-contiguous, of one shape (T elements), seen flat."""
    ys, dys, dxs = y.reshape(y.size), dy.reshape(dy.size), dx.reshape(dx.size)
    for i in prange(ys.size):  # [0, T)
        dxs[i] = dys[i] if ys[i] > 0 else 0


def forward_fast(x):
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    loop = _forward_cpu if x.size >= GRAIN else _forward_cpu.one
    loop(x, y)
    return y


def backward_fast(y, dy):
    dy = np.ascontiguousarray(dy)
    dx = np.empty_like(dy)
    loop = _backward_cpu if dy.size >= GRAIN else _backward_cpu.one
    loop(np.ascontiguousarray(y), dy, dx)
    return dx


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
